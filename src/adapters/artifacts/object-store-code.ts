import { BerthError } from "../../core/errors.ts";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  s3Url,
  TooLargeObjectError,
  type ArtifactObjects,
  type BucketObject,
} from "../../core/object-store.ts";
import type { CodeLocation, CodeSource } from "./code-source.ts";
import {
  sniffArchiveFormat,
  type ArchiveFormat,
  type UnpackedArchives,
} from "./unpacked-archives.ts";

const s3Field = "agentRuntimeArtifact.codeConfiguration.code.s3";

/** The object a location names, as the store last showed it, and its tree once unpacked. */
interface Unpacked {
  /** The object's version id (when its bucket keeps versions) and etag. */
  identity: string;
  folder: Promise<string | undefined>;
}

/**
 * Code read where AgentCore reads it: codeConfiguration.code.s3 names an object (a .zip, or a
 * .tar.gz as `berth runtimes create --code` uploads) in a bucket of the object store. It is
 * downloaded within maxArtifactBytes and unpacked into the cache by the hash of its bytes, with
 * the same rules and limits as local artifacts.
 *
 * A key can be overwritten (a user re-uploads agent.zip and updates the runtime), so each lookup
 * asks the store what the object is now (one HeadObject) and downloads it only when this process
 * has not unpacked that etag yet. A named versionId never changes: once unpacked, it is not looked
 * up again. While the store cannot be reached, the tree last unpacked for a location is used, so
 * that sessions of code already seen keep starting.
 */
export class ObjectStoreCode implements CodeSource {
  private readonly objects: ArtifactObjects;
  private readonly archives: UnpackedArchives;
  private readonly maxBytes: number;
  /** By location (bucket, key, versionId asked for): what was last unpacked from there. */
  private readonly unpacked = new Map<string, Unpacked>();

  constructor(objects: ArtifactObjects, archives: UnpackedArchives, maxBytes: number) {
    this.objects = objects;
    this.archives = archives;
    this.maxBytes = maxBytes;
  }

  location(artifact: CodeLocation): string {
    return s3Url(objectOf(artifact));
  }

  notFound(artifact: CodeLocation): string {
    return `Code artifact ${this.location(artifact)} not found in the object store: put the code's .zip there (or name the object and version that hold it)`;
  }

  folder(artifact: CodeLocation): Promise<string | undefined> {
    return this.lookUp(objectOf(artifact), 1);
  }

  /** The object's tree; overwritten while it was read, looked up again (`retries` times). */
  private async lookUp(object: BucketObject, retries: number): Promise<string | undefined> {
    try {
      return await this.unpackedNow(object);
    } catch (error) {
      if (error instanceof PreconditionFailedError && retries > 0)
        return this.lookUp(object, retries - 1);
      throw error;
    }
  }

  /** The tree of what the object holds now, downloaded only if not unpacked yet. */
  private async unpackedNow(object: BucketObject): Promise<string | undefined> {
    const place = JSON.stringify([object.bucket, object.key, object.versionId ?? null]);
    const known = this.unpacked.get(place);
    if (known !== undefined && object.versionId !== undefined) return known.folder;
    let current;
    try {
      current = await this.objects.head(object);
    } catch (error) {
      if (error instanceof ObjectStoreUnavailableError && known !== undefined) return known.folder;
      throw explained(error, object, this.maxBytes);
    }
    if (current === undefined) {
      this.unpacked.delete(place);
      return undefined;
    }
    const identity = JSON.stringify([current.versionId ?? null, current.etag]);
    const latest = this.unpacked.get(place);
    if (latest?.identity === identity) return latest.folder;
    const entry = { identity, folder: this.download(object, current.etag) };
    this.unpacked.set(place, entry);
    // Looked up again next time: the object may be put there, or the store come back.
    const forget = () => this.unpacked.get(place) === entry && this.unpacked.delete(place);
    void entry.folder.then((found) => found === undefined && forget(), forget);
    return entry.folder;
  }

  /** Unpacks the object as it is when its etag is `etag`; PreconditionFailedError once it is not. */
  private async download(object: BucketObject, etag: string): Promise<string | undefined> {
    try {
      return await this.archives.unpack(
        (copy) => this.objects.download(object, copy, this.maxBytes, { ifMatch: etag }),
        (copy) => formatOf(copy, object),
        `The code at ${s3Url(object)}`,
      );
    } catch (error) {
      throw explained(error, object, this.maxBytes);
    }
  }
}

function objectOf(artifact: CodeLocation): BucketObject {
  return { bucket: artifact.bucket, key: artifact.prefix, versionId: artifact.versionId };
}

/** Reads the first bytes: a .zip or a .tar.gz is unpacked, anything else refused. */
async function formatOf(copy: string, object: BucketObject): Promise<ArchiveFormat> {
  const format = await sniffArchiveFormat(copy);
  if (format !== undefined) return format;
  const why = `${s3Url(object)} is neither a .zip nor a .tar.gz`;
  throw new BerthError(
    "ValidationException",
    `${s3Field} ${why}: name an object holding the code's .zip`,
    { reason: "FieldValidationFailed", fieldList: [{ name: s3Field, message: why }] },
  );
}

/**
 * The object store's failures as a caller can pass them on: past the limit, a
 * ValidationException naming it; the store unreachable, a retryable InternalServerException
 * that says the artifact is not at fault.
 */
function explained(error: unknown, object: BucketObject, maxBytes: number): unknown {
  if (error instanceof TooLargeObjectError) {
    return new BerthError(
      "ValidationException",
      `${s3Url(object)} is larger than ${maxBytes} bytes (maxArtifactBytes): ship less code, or raise the setting`,
      { reason: "FieldValidationFailed", cause: error },
    );
  }
  if (error instanceof ObjectStoreUnavailableError) {
    return new BerthError(
      "InternalServerException",
      `${error.message}: nothing is known to be wrong with the artifact; retry once the object store answers`,
      { cause: error },
    );
  }
  return error;
}
