import { S3ServiceException } from "@aws-sdk/client-s3";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  TooLargeObjectError,
} from "../../core/object-store.ts";

/** The HTTP status the store answered a request with; undefined when no answer came. */
export function statusOf(error: unknown): number | undefined {
  return error instanceof S3ServiceException ? error.$metadata.httpStatusCode : undefined;
}

/**
 * What a failed request throws, one convention for every S3 adapter. `doing` says what was
 * asked (e.g. "reading s3://bucket/key"), `endpoint` where. The store unreachable, or failing on
 * its side (5xx): ObjectStoreUnavailableError, worth retrying later. Anything it refused (a 4xx:
 * 403 AccessDenied, NoSuchBucket...): an Error with the HTTP status and what the store said,
 * which a retry will not change. The object-store errors callers act on pass as they are.
 */
export function storeError(error: unknown, doing: string, endpoint: string): Error {
  if (
    error instanceof TooLargeObjectError ||
    error instanceof PreconditionFailedError ||
    error instanceof ObjectStoreUnavailableError
  )
    return error;
  const status = statusOf(error);
  const said = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  if (status === undefined || status >= 500) {
    return new ObjectStoreUnavailableError(
      `the object store (${endpoint}) could not be reached ${doing} (${status === undefined ? said : `HTTP ${status} ${said}`})`,
      { cause: error },
    );
  }
  return new Error(`the object store (${endpoint}) refused ${doing} (HTTP ${status} ${said})`, {
    cause: error,
  });
}
