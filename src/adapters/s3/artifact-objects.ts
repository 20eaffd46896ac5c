import { createReadStream } from "node:fs";
import { open, rm, stat } from "node:fs/promises";
import { Readable, Transform, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  GetObjectCommand,
  PutObjectCommand,
  S3ServiceException,
  type S3Client,
} from "@aws-sdk/client-s3";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  TooLargeObjectError,
  type ArtifactObjects,
  type BucketObject,
} from "../../core/object-store.ts";
import { parseObjectStoreUrl, s3Client, type ObjectStoreConnection } from "./client.ts";

/**
 * Code artifacts in any bucket the object store's credentials reach, streamed to and from files
 * so that an artifact of any size never sits in memory.
 */
export class S3ArtifactObjects implements ArtifactObjects {
  readonly uploadLocation: { bucket: string; keyPrefix: string };
  private readonly client: S3Client;
  private readonly endpoint: string;

  constructor(connection: ObjectStoreConnection, client: S3Client = s3Client(connection)) {
    const { bucket, prefix } = parseObjectStoreUrl(connection.url);
    this.uploadLocation = { bucket, keyPrefix: `${prefix}code/` };
    this.client = client;
    this.endpoint = connection.endpoint ?? "AWS S3";
  }

  async download(object: BucketObject, file: string, maxBytes: number): Promise<boolean> {
    let body: Readable;
    try {
      const answer = await this.client.send(
        new GetObjectCommand({
          Bucket: object.bucket,
          Key: object.key,
          VersionId: object.versionId,
        }),
      );
      if (!(answer.Body instanceof Readable)) throw new Error("the answer has no body to read");
      body = answer.Body;
      if ((answer.ContentLength ?? 0) > maxBytes) {
        body.destroy();
        throw tooLarge(object, maxBytes);
      }
    } catch (error) {
      if (isMissing(error, object)) return false;
      throw this.failure(error, `reading ${shown(object)}`);
    }
    // Created here, so that a failure removes only what this download wrote.
    const handle = await open(file, "wx", 0o600).catch((error: unknown) => {
      body.destroy();
      throw error;
    });
    try {
      await pipeline(
        body,
        new ByteCounter(maxBytes, () => tooLarge(object, maxBytes)),
        handle.createWriteStream(),
      );
      return true;
    } catch (error) {
      await rm(file, { force: true });
      throw this.failure(error, `reading ${shown(object)}`);
    } finally {
      await handle.close().catch(() => undefined);
    }
  }

  async upload(
    object: BucketObject,
    file: string,
    options: { ifAbsent?: boolean } = {},
  ): Promise<{ versionId: string | undefined }> {
    const { size } = await stat(file);
    try {
      const answer = await this.client.send(
        new PutObjectCommand({
          Bucket: object.bucket,
          Key: object.key,
          Body: createReadStream(file),
          ContentLength: size,
          ...(options.ifAbsent === true ? { IfNoneMatch: "*" } : {}),
        }),
      );
      return { versionId: answer.VersionId };
    } catch (error) {
      if (statusOf(error) === 412) {
        throw new PreconditionFailedError(`${shown(object)} already exists`, { cause: error });
      }
      throw this.failure(error, `writing ${shown(object)}`);
    }
  }

  /**
   * What a failed request throws: the limit passed as it is; the store unreachable or failing on
   * its side as ObjectStoreUnavailableError; anything it refused as an Error saying what it said.
   */
  private failure(error: unknown, doing: string): Error {
    if (error instanceof TooLargeObjectError) return error;
    const status = statusOf(error);
    const said = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    if (status === undefined || status >= 500) {
      return new ObjectStoreUnavailableError(
        `the object store (${this.endpoint}) could not be reached ${doing} (${status === undefined ? said : `HTTP ${status} ${said}`})`,
        { cause: error },
      );
    }
    return new Error(`the object store refused ${doing} (HTTP ${status} ${said})`, {
      cause: error,
    });
  }
}

/** Passes bytes through, counting them; fails with `tooMany()` once more than `max` came. */
class ByteCounter extends Transform {
  private bytes = 0;
  private readonly max: number;
  private readonly tooMany: () => Error;

  constructor(max: number, tooMany: () => Error) {
    super();
    this.max = max;
    this.tooMany = tooMany;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.max) done(this.tooMany());
    else done(null, chunk);
  }
}

/** s3://bucket/key, and ?versionId=... when one is named. */
function shown(object: BucketObject): string {
  const version = object.versionId === undefined ? "" : `?versionId=${object.versionId}`;
  return `s3://${object.bucket}/${object.key}${version}`;
}

function tooLarge(object: BucketObject, maxBytes: number): TooLargeObjectError {
  return new TooLargeObjectError(`${shown(object)} is larger than ${maxBytes} bytes`);
}

function statusOf(error: unknown): number | undefined {
  return error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined;
}

/**
 * No such bucket, key or version. A version id the store cannot even parse is one it has not
 * got either (S3 answers 400 InvalidArgument for it).
 */
function isMissing(error: unknown, object: BucketObject): boolean {
  const status = statusOf(error);
  if (status === 404) return true;
  return (
    status === 400 && object.versionId !== undefined && (error as Error).name === "InvalidArgument"
  );
}
