import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from "@aws-sdk/client-s3";
import {
  PreconditionFailedError,
  TooLargeObjectError,
  type ObjectInfo,
  type ObjectStore,
  type StoredObject,
  type WriteCondition,
} from "../../core/object-store.ts";
import { endpointOf, parseObjectStoreUrl, s3Client, type ObjectStoreConnection } from "./client.ts";
import { statusOf, storeError } from "./store-errors.ts";

/** How many deletes run at once (one request each: not every S3 server takes DeleteObjects' checksums). */
const deleteConcurrency = 8;

/** Berth's objects in an S3 bucket, under the URL's prefix. */
export class S3ObjectStore implements ObjectStore {
  readonly location: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly endpoint: string;

  constructor(connection: ObjectStoreConnection, client: S3Client = s3Client(connection)) {
    const { bucket, prefix } = parseObjectStoreUrl(connection.url);
    this.client = client;
    this.bucket = bucket;
    this.prefix = prefix;
    this.location = `s3://${bucket}/${prefix}`;
    this.endpoint = endpointOf(connection);
  }

  async get(key: string, maxBytes: number): Promise<StoredObject | undefined> {
    let answer;
    try {
      answer = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }),
      );
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw this.failure(error, "reading", key);
    }
    const size = answer.ContentLength;
    if (size === undefined || size > maxBytes) {
      // Not read: the body is dropped with its connection.
      (answer.Body as { destroy?: () => void } | undefined)?.destroy?.();
      throw new TooLargeObjectError(
        `${this.location}${key} holds ${String(size ?? "an unknown number of")} bytes, more than the ${maxBytes} expected`,
      );
    }
    try {
      const body = Buffer.from((await answer.Body?.transformToByteArray()) ?? []);
      if (body.byteLength !== size) throw new Error(`got ${body.byteLength} of ${size} bytes`);
      return { body, etag: bareEtag(answer.ETag) };
    } catch (error) {
      throw this.failure(error, "reading", key);
    }
  }

  async put(key: string, body: Uint8Array, condition?: WriteCondition): Promise<{ etag: string }> {
    try {
      const answer = await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.prefix + key,
          Body: body,
          ContentLength: body.byteLength,
          ...(condition === undefined
            ? {}
            : "ifNoneMatch" in condition
              ? { IfNoneMatch: "*" }
              : { IfMatch: condition.ifMatch }),
        }),
      );
      return { etag: bareEtag(answer.ETag) };
    } catch (error) {
      if (isPreconditionFailure(error)) {
        throw new PreconditionFailedError(`${this.location}${key} was written by someone else`, {
          cause: error,
        });
      }
      throw this.failure(error, "writing", key);
    }
  }

  async head(key: string): Promise<ObjectInfo | undefined> {
    try {
      const answer = await this.client.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }),
      );
      return {
        key,
        etag: bareEtag(answer.ETag),
        size: answer.ContentLength ?? 0,
        lastModified: answer.LastModified ?? new Date(0),
      };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw this.failure(error, "looking up", key);
    }
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    let token: string | undefined;
    do {
      const page = await this.client
        .send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            ContinuationToken: token,
          }),
        )
        .catch((error: unknown) => {
          throw this.failure(error, "listing", `${prefix}*`);
        });
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        yield {
          key: object.Key.slice(this.prefix.length),
          etag: bareEtag(object.ETag),
          size: object.Size ?? 0,
          lastModified: object.LastModified ?? new Date(0),
        };
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  async delete(keys: readonly string[]): Promise<void> {
    const queue = [...keys];
    const worker = async (): Promise<void> => {
      for (let key = queue.shift(); key !== undefined; key = queue.shift()) {
        await this.client
          .send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }))
          .catch((error: unknown) => {
            if (!isNotFound(error)) throw this.failure(error, "deleting", key);
          });
      }
    };
    await Promise.all(Array.from({ length: deleteConcurrency }, worker));
  }

  /** What a failed request on `key` throws (see storeError), naming the whole s3:// location. */
  private failure(error: unknown, doing: string, key: string): Error {
    return storeError(error, `${doing} ${this.location}${key}`, this.endpoint);
  }
}

/** ETags as stores compare them in If-Match: without the quotes (Ceph RGW wants them bare). */
function bareEtag(etag: string | undefined): string {
  return (etag ?? "").replace(/^"|"$/g, "");
}

function isNotFound(error: unknown): boolean {
  return statusOf(error) === 404;
}

/** 412, or AWS's 409 for a conditional write that raced another. */
function isPreconditionFailure(error: unknown): boolean {
  const status = statusOf(error);
  return (
    status === 412 || (status === 409 && (error as Error).name === "ConditionalRequestConflict")
  );
}
