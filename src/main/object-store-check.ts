import { randomUUID } from "node:crypto";
import { isNetworkFailureCode } from "../adapters/host/network-errors.ts";
import { S3ObjectStore } from "../adapters/s3/object-store.ts";
import { s3Client, type ObjectStoreConnection } from "../adapters/s3/client.ts";
import { PreconditionFailedError, type ObjectStore } from "../core/object-store.ts";

/** The object store cannot be used as configured: one line saying what to check. */
export class ObjectStoreCheckError extends Error {
  override readonly name = "ObjectStoreCheckError";
}

/** Where the check writes its probe, under Berth's prefix; deleted after. */
const probePrefix = "berth-check/";

/**
 * Run once at start, before anything else touches the object store the settings name: a
 * throwaway object is created, must refuse to be created again (If-None-Match) and to be
 * replaced under a wrong etag (If-Match), and is deleted. A store that takes either write would
 * let two Berths both believe they own a volume; an unreachable store, refused credentials or a
 * missing bucket are better said at start, in one line, than found by the first session.
 */
export async function checkObjectStore(connection: ObjectStoreConnection): Promise<void> {
  const client = s3Client(connection);
  try {
    await checkConditionalWrites(new S3ObjectStore(connection, client), endpointOf(connection));
  } finally {
    client.destroy();
  }
}

/** The check itself, against any store: ObjectStoreCheckError when it fails. */
export async function checkConditionalWrites(store: ObjectStore, endpoint: string): Promise<void> {
  const probe = `${probePrefix}${randomUUID()}`;
  const explain = (error: unknown): ObjectStoreCheckError =>
    error instanceof ObjectStoreCheckError
      ? error
      : new ObjectStoreCheckError(diagnose(error, store.location, endpoint), { cause: error });
  const { etag } = await store
    .put(probe, Buffer.from("1"), { ifNoneMatch: "*" })
    .catch((error: unknown) => {
      throw explain(error);
    });
  let failure: ObjectStoreCheckError | undefined;
  const ignores = (header: string): string =>
    `${store.location} at ${endpoint} does not honour conditional writes (${header}); Berth needs them to keep one writer per volume (Ceph RGW ignores them in versioned buckets): give it a bucket where they hold`;
  try {
    await requireRefused(
      store.put(probe, Buffer.from("2"), { ifNoneMatch: "*" }),
      ignores("If-None-Match"),
    );
    await requireRefused(
      store.put(probe, Buffer.from("3"), { ifMatch: wrongEtag(etag) }),
      ignores("If-Match"),
    );
  } catch (error) {
    failure = explain(error);
  }
  // The probe goes whatever the outcome; a failure of the check says more than one to delete it.
  await store.delete([probe]).catch((error: unknown) => {
    failure ??= explain(error);
  });
  if (failure !== undefined) throw failure;
}

/** Resolves when the write was refused with a 412; throws the message when it was not. */
async function requireRefused(write: Promise<unknown>, message: string): Promise<void> {
  try {
    await write;
  } catch (error) {
    if (error instanceof PreconditionFailedError) return;
    throw error;
  }
  throw new ObjectStoreCheckError(message);
}

/** An etag the probe does not have. */
function wrongEtag(etag: string): string {
  return etag === "0".repeat(32) ? "1".repeat(32) : "0".repeat(32);
}

/** The store's address as messages name it. */
function endpointOf(connection: ObjectStoreConnection): string {
  if (connection.endpoint !== undefined) return connection.endpoint;
  return connection.region === undefined ? "AWS S3" : `AWS S3 (${connection.region})`;
}

/** What a failed request of the check says about the settings, as one line. */
function diagnose(error: unknown, location: string, endpoint: string): string {
  const cause = rootCause(error);
  const name = cause.name ?? "";
  const status = cause.$metadata?.httpStatusCode;
  if (status === undefined && (isNetworkFailureCode(cause.code) || name === "TimeoutError")) {
    const detail = cause.message === undefined || cause.message === "" ? cause.code : cause.message;
    return `cannot reach the object store ${endpoint} for ${location} (${detail ?? name}): check --object-store-endpoint, and that the store runs and this machine reaches it`;
  }
  if (name === "CredentialsProviderError") {
    return `no credentials for the object store ${endpoint} (${location}): set BERTH_OBJECT_STORE_ACCESS_KEY_ID and BERTH_OBJECT_STORE_SECRET_ACCESS_KEY, or give the AWS SDK's default chain some`;
  }
  if (name === "NoSuchBucket") {
    const bucket = /^s3:\/\/([^/]+)/.exec(location)?.[1] ?? "";
    return `the bucket "${bucket}" of ${location} does not exist at ${endpoint}: check the bucket name in --object-store-url and --object-store-endpoint (Berth does not create buckets)`;
  }
  const said = status === undefined ? String(cause.message ?? error) : `HTTP ${status} ${name}`;
  if (status === 403) {
    return `the object store ${endpoint} refused access to ${location} (${said}): check the credentials (BERTH_OBJECT_STORE_ACCESS_KEY_ID / BERTH_OBJECT_STORE_SECRET_ACCESS_KEY, else the AWS SDK's default chain) and that they may read, write and delete there`;
  }
  return `the object store ${endpoint} failed a test write to ${location} (${said}): check --object-store-url, --object-store-endpoint, --object-store-region and --object-store-force-path-style`;
}

interface RequestFailure {
  name?: string;
  message?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number };
}

/** The SDK's or the socket's own error, under the store's wrapping of it. */
function rootCause(error: unknown): RequestFailure {
  let current: unknown = error;
  while (current instanceof Error && current.cause instanceof Error) current = current.cause;
  return typeof current === "object" && current !== null ? current : {};
}
