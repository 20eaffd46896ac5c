import { BerthError } from "../../core/errors.ts";
import {
  ObjectStoreUnavailableError,
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

/**
 * Code read where AgentCore reads it: codeConfiguration.code.s3 names an object (a .zip, or a
 * .tar.gz as `berth runtimes create --code` uploads) in a bucket of the object store. It is
 * downloaded within maxArtifactBytes and unpacked into the cache by the hash of its bytes, with
 * the same rules and limits as local artifacts. Each object (bucket, key, version) is downloaded
 * once per process; a restarted Berth downloads it again and finds it unpacked.
 */
export class ObjectStoreCode implements CodeSource {
  private readonly objects: ArtifactObjects;
  private readonly archives: UnpackedArchives;
  private readonly maxBytes: number;
  private readonly unpacked = new Map<string, Promise<string | undefined>>();

  constructor(objects: ArtifactObjects, archives: UnpackedArchives, maxBytes: number) {
    this.objects = objects;
    this.archives = archives;
    this.maxBytes = maxBytes;
  }

  location(artifact: CodeLocation): string {
    return shown(objectOf(artifact));
  }

  notFound(artifact: CodeLocation): string {
    return `Code artifact ${this.location(artifact)} not found in the object store: put the code's .zip there (or name the object and version that hold it)`;
  }

  folder(artifact: CodeLocation): Promise<string | undefined> {
    const object = objectOf(artifact);
    const key = JSON.stringify([object.bucket, object.key, object.versionId ?? null]);
    let folder = this.unpacked.get(key);
    if (folder === undefined) {
      folder = this.download(object);
      this.unpacked.set(key, folder);
      // Looked up again next time: the object may be put there, or the store come back.
      void folder.then(
        (found) => found === undefined && this.unpacked.delete(key),
        () => this.unpacked.delete(key),
      );
    }
    return folder;
  }

  private async download(object: BucketObject): Promise<string | undefined> {
    try {
      return await this.archives.unpack(
        (copy) => this.objects.download(object, copy, this.maxBytes),
        (copy) => formatOf(copy, object),
        `The code at ${shown(object)}`,
      );
    } catch (error) {
      throw explained(error, object, this.maxBytes);
    }
  }
}

function objectOf(artifact: CodeLocation): BucketObject {
  return { bucket: artifact.bucket, key: artifact.prefix, versionId: artifact.versionId };
}

/** s3://bucket/key, and ?versionId=... when one is named. */
function shown(object: BucketObject): string {
  const version = object.versionId === undefined ? "" : `?versionId=${object.versionId}`;
  return `s3://${object.bucket}/${object.key}${version}`;
}

/** Reads the first bytes: a .zip or a .tar.gz is unpacked, anything else refused. */
async function formatOf(copy: string, object: BucketObject): Promise<ArchiveFormat> {
  const format = await sniffArchiveFormat(copy);
  if (format !== undefined) return format;
  const why = `${shown(object)} is neither a .zip nor a .tar.gz`;
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
      `${shown(object)} is larger than ${maxBytes} bytes (maxArtifactBytes): ship less code, or raise the setting`,
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
