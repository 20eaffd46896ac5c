import { S3Client } from "@aws-sdk/client-s3";
import { NodeHttpHandler } from "@smithy/node-http-handler";

/** How to reach the object store: settings objectStore* (issue 16). */
export interface ObjectStoreConnection {
  /** s3://bucket/prefix */
  url: string;
  /** Unset: AWS itself. For Ceph RGW, MinIO, R2 and others: their address. */
  endpoint: string | undefined;
  /** Unset: the AWS SDK's own default (AWS_REGION), else us-east-1. */
  region: string | undefined;
  forcePathStyle: boolean;
  /** Unset: the AWS SDK's default credential chain. */
  credentials: { accessKeyId: string; secretAccessKey: string } | undefined;
}

/** How long a request may take to connect, and to finish: an unreachable store fails fast. */
const connectTimeoutMs = 3000;
const requestTimeoutMs = 30_000;

/**
 * An S3 client for the connection. One attempt per request: a conditional write retried by the
 * SDK after a lost answer would come back 412 for its own first attempt, so retries are the
 * callers', who know how to tell that case apart.
 */
export function s3Client(connection: ObjectStoreConnection): S3Client {
  return new S3Client({
    ...(connection.endpoint === undefined ? {} : { endpoint: connection.endpoint }),
    region: connection.region ?? process.env["AWS_REGION"] ?? "us-east-1",
    forcePathStyle: connection.forcePathStyle,
    ...(connection.credentials === undefined ? {} : { credentials: connection.credentials }),
    maxAttempts: 1,
    // S3-compatible stores (Ceph RGW among them) do not all know the newer checksum headers.
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    requestHandler: new NodeHttpHandler({
      connectionTimeout: connectTimeoutMs,
      requestTimeout: requestTimeoutMs,
    }),
  });
}

/** The store's address as messages name it. */
export function endpointOf(connection: ObjectStoreConnection): string {
  return connection.endpoint ?? "AWS S3";
}

/** The bucket and key prefix ("" or ending in "/") of an s3://bucket/prefix URL. */
export function parseObjectStoreUrl(url: string): { bucket: string; prefix: string } {
  const match = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (match === null) throw new Error(`${url} is not an s3://bucket/prefix URL`);
  const prefix = (match[2] ?? "").replace(/\/+$/, "");
  return { bucket: match[1] ?? "", prefix: prefix === "" ? "" : `${prefix}/` };
}
