import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { S3ServiceException } from "@aws-sdk/client-s3";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  TooLargeObjectError,
} from "../../core/object-store.ts";
import type { ObjectStoreConnection } from "./client.ts";
import { S3ObjectStore } from "./object-store.ts";
import { statusOf, storeError } from "./store-errors.ts";

const endpoint = "http://127.0.0.1:9";

function answered(status: number, name: string, message: string): S3ServiceException {
  return new S3ServiceException({
    name,
    message,
    $fault: status >= 500 ? "server" : "client",
    $metadata: { httpStatusCode: status },
  });
}

describe("storeError", () => {
  it("calls a store failing on its side unavailable, with the status and what it said", () => {
    const error = storeError(answered(503, "SlowDown", "busy"), "reading s3://b/k", endpoint);
    assert.ok(error instanceof ObjectStoreUnavailableError);
    assert.equal(
      error.message,
      `the object store (${endpoint}) could not be reached reading s3://b/k (HTTP 503 SlowDown: busy)`,
    );
  });

  it("calls a request that got no answer unavailable", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9"), {
      code: "ECONNREFUSED",
    });
    const error = storeError(refused, "reading s3://b/k", endpoint);
    assert.ok(error instanceof ObjectStoreUnavailableError);
    assert.equal(statusOf(refused), undefined);
    assert.match(error.message, /could not be reached reading s3:\/\/b\/k \(Error: connect/);
  });

  it("calls what the store refused (4xx) a plain Error with the status and what it said", () => {
    for (const [status, name, message] of [
      [403, "AccessDenied", "Access Denied"],
      [404, "NoSuchBucket", "The specified bucket does not exist"],
    ] as const) {
      const error = storeError(answered(status, name, message), "writing s3://b/k", endpoint);
      assert.equal(error instanceof ObjectStoreUnavailableError, false);
      assert.equal(
        error.message,
        `the object store (${endpoint}) refused writing s3://b/k (HTTP ${status} ${name}: ${message})`,
      );
    }
  });

  it("passes on the errors callers act on as they are", () => {
    for (const error of [
      new TooLargeObjectError("too large"),
      new PreconditionFailedError("taken"),
      new ObjectStoreUnavailableError("down"),
    ])
      assert.equal(storeError(error, "reading s3://b/k", endpoint), error);
  });
});

describe("S3ObjectStore failures", () => {
  /** Answers every request 403 AccessDenied, as a bucket Berth's credentials may not use. */
  let server: Server;
  let connection: ObjectStoreConnection;

  before(async () => {
    server = createServer((request, response) => {
      request.resume();
      response.writeHead(403, { "content-type": "application/xml" });
      response.end("<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>");
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    connection = {
      url: "s3://berth/node",
      endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    };
  });

  after(() => {
    server.close();
  });

  it("says the store refused a write, with its status and the whole location", async () => {
    const store = new S3ObjectStore(connection);
    await assert.rejects(
      store.put("heads/volume", Buffer.from("x")),
      (error: Error) =>
        !(error instanceof ObjectStoreUnavailableError) &&
        error.message ===
          `the object store (${connection.endpoint}) refused writing s3://berth/node/heads/volume (HTTP 403 AccessDenied: Access Denied)`,
    );
  });

  it("calls a store nothing listens at unavailable", async () => {
    const closed = createServer();
    closed.listen(0, "127.0.0.1");
    await once(closed, "listening");
    const port = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, "close");
    const store = new S3ObjectStore({ ...connection, endpoint: `http://127.0.0.1:${port}` });
    await assert.rejects(
      store.get("heads/volume", 1000),
      (error: Error) =>
        error instanceof ObjectStoreUnavailableError &&
        error.message.includes("could not be reached reading s3://berth/node/heads/volume"),
    );
  });
});
