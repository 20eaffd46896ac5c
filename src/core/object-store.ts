/**
 * An S3-compatible object store: where session storage, code and metadata are kept so that they
 * outlive the machine (issue 16). Keys are relative to Berth's own prefix in its bucket.
 *
 * Every write that decides who owns something is conditional (If-None-Match: * to create,
 * If-Match: etag to replace): a store that says 412 throws PreconditionFailedError, the one
 * failure a caller must not retry blindly. The store unreachable or failing on its side (5xx)
 * throws ObjectStoreUnavailableError, worth retrying later; anything it refuses (a 4xx such as
 * 403 AccessDenied) an Error saying the HTTP status and what the store said.
 */
export interface ObjectStore {
  /** s3://bucket/prefix, for messages and logs. */
  readonly location: string;
  /**
   * The object's bytes and etag; undefined when there is none. Throws TooLargeObjectError for an
   * object past maxBytes, before reading it: what the store holds is not trusted to be small.
   */
  get(key: string, maxBytes: number): Promise<StoredObject | undefined>;
  /** Stores `body` at `key`; returns its new etag. */
  put(key: string, body: Uint8Array, condition?: WriteCondition): Promise<{ etag: string }>;
  head(key: string): Promise<ObjectInfo | undefined>;
  /** Every object whose key starts with `prefix`, in key order. */
  list(prefix: string): AsyncIterable<ObjectInfo>;
  /** Deletes the objects (absent ones are no error). */
  delete(keys: readonly string[]): Promise<void>;
}

export interface StoredObject {
  body: Buffer;
  etag: string;
}

export interface ObjectInfo {
  key: string;
  etag: string;
  size: number;
  lastModified: Date;
}

/** Create only if absent, or replace only the version whose etag the caller read. */
export type WriteCondition = { ifNoneMatch: "*" } | { ifMatch: string };

/** The store refused a conditional write: someone else created or replaced the object first. */
export class PreconditionFailedError extends Error {
  override readonly name = "PreconditionFailedError";
}

/** An object in any bucket the store's credentials reach (code artifacts: s3://bucket/key). */
export interface BucketObject {
  bucket: string;
  key: string;
  versionId?: string | undefined;
}

/** s3://bucket/key, and ?versionId=... when one is named: an object as messages show it. */
export function s3Url(object: BucketObject): string {
  const version = object.versionId === undefined ? "" : `?versionId=${object.versionId}`;
  return `s3://${object.bucket}/${object.key}${version}`;
}

/**
 * Code artifacts where AgentCore reads them: codeConfiguration.code.s3 names a bucket, a key and
 * maybe a version, read with the object store's endpoint and credentials.
 *
 * Failures: a store that cannot be reached or answers 5xx throws ObjectStoreUnavailableError (a
 * retry later may succeed); anything else it refuses (access denied, a bad request) is an Error.
 */
export interface ArtifactObjects {
  /**
   * What the object is now: its etag, and its version id when the bucket keeps versions;
   * undefined when it (or its bucket, or its version) does not exist.
   */
  head(object: BucketObject): Promise<{ etag: string; versionId: string | undefined } | undefined>;
  /**
   * Copies the object to `file` (created, 0600); false when it (or its bucket, or its version)
   * does not exist. Throws a TooLargeObjectError past maxBytes, leaving no file; with `ifMatch`,
   * a PreconditionFailedError when the object no longer has that etag.
   */
  download(
    object: BucketObject,
    file: string,
    maxBytes: number,
    options?: { ifMatch?: string },
  ): Promise<boolean>;
  /**
   * Stores `file` at the object; returns the version id when the bucket keeps versions. With
   * `ifAbsent`, throws PreconditionFailedError when the key already holds an object.
   */
  upload(
    object: BucketObject,
    file: string,
    options?: { ifAbsent?: boolean },
  ): Promise<{ versionId: string | undefined }>;
  /** Where uploads of `berth runtimes create --code` go: Berth's bucket and this key prefix. */
  readonly uploadLocation: { bucket: string; keyPrefix: string };
}

export class TooLargeObjectError extends Error {
  override readonly name = "TooLargeObjectError";
}

/** The store could not be reached, or failed on its side (5xx): worth retrying later. */
export class ObjectStoreUnavailableError extends Error {
  override readonly name = "ObjectStoreUnavailableError";
}
