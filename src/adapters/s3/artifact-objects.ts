import { createReadStream } from "node:fs";
import { open, rm, stat } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import {
  PreconditionFailedError,
  s3Url,
  TooLargeObjectError,
  type ArtifactObjects,
  type BucketObject,
} from "../../core/object-store.ts";
import { endpointOf, parseObjectStoreUrl, s3Client, type ObjectStoreConnection } from "./client.ts";
import { statusOf, storeError } from "./store-errors.ts";
import { ByteLimit } from "../host/byte-limit.ts";

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
    this.endpoint = endpointOf(connection);
  }

  async head(
    object: BucketObject,
  ): Promise<{ etag: string; versionId: string | undefined } | undefined> {
    try {
      const answer = await this.client.send(
        new HeadObjectCommand({
          Bucket: object.bucket,
          Key: object.key,
          VersionId: object.versionId,
        }),
      );
      return { etag: answer.ETag ?? "", versionId: answer.VersionId };
    } catch (error) {
      if (isMissing(error, object)) return undefined;
      throw storeError(error, `looking up ${s3Url(object)}`, this.endpoint);
    }
  }

  async download(
    object: BucketObject,
    file: string,
    maxBytes: number,
    options: { ifMatch?: string } = {},
  ): Promise<boolean> {
    let body: Readable;
    try {
      const answer = await this.client.send(
        new GetObjectCommand({
          Bucket: object.bucket,
          Key: object.key,
          VersionId: object.versionId,
          IfMatch: options.ifMatch,
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
      if (statusOf(error) === 412) {
        throw new PreconditionFailedError(`${s3Url(object)} changed while it was being read`, {
          cause: error,
        });
      }
      throw storeError(error, `reading ${s3Url(object)}`, this.endpoint);
    }
    // Created here, so that a failure removes only what this download wrote.
    const handle = await open(file, "wx", 0o600).catch((error: unknown) => {
      body.destroy();
      throw error;
    });
    try {
      await pipeline(
        body,
        new ByteLimit(maxBytes, () => tooLarge(object, maxBytes)),
        handle.createWriteStream(),
      );
      return true;
    } catch (error) {
      await rm(file, { force: true });
      throw storeError(error, `reading ${s3Url(object)}`, this.endpoint);
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
        throw new PreconditionFailedError(`${s3Url(object)} already exists`, { cause: error });
      }
      throw storeError(error, `writing ${s3Url(object)}`, this.endpoint);
    }
  }
}

function tooLarge(object: BucketObject, maxBytes: number): TooLargeObjectError {
  return new TooLargeObjectError(`${s3Url(object)} is larger than ${maxBytes} bytes`);
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
