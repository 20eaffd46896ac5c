import assert from "node:assert/strict";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  TooLargeObjectError,
} from "../../core/object-store.ts";
import { S3ArtifactObjects } from "./artifact-objects.ts";

/**
 * An S3 endpoint that answers requests as this test tells it to, for what a real store will not
 * do on demand: a body without Content-Length, a 503, a 403. (test/object-store-code.test.ts runs
 * against a real Ceph RGW.)
 */
const answers = new Map<string, (response: ServerResponse, request: IncomingMessage) => void>();
let server: Server;
let dir: string;
let objects: S3ArtifactObjects;

before(async () => {
  server = createServer((request, response) => {
    const answer = answers.get(request.url?.split("?")[0] ?? "");
    if (answer !== undefined) {
      answer(response, request);
      return;
    }
    response.writeHead(404, { "content-type": "application/xml" });
    response.end("<Error><Code>NoSuchKey</Code><Message>none</Message></Error>");
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  objects = new S3ArtifactObjects({
    url: "s3://berth/node",
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    region: "us-east-1",
    forcePathStyle: true,
    credentials: { accessKeyId: "test", secretAccessKey: "test" },
  });
  dir = mkdtempSync(join(tmpdir(), "berth-artifact-objects-"));
});

after(() => {
  server.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Answers with `bytes` bytes of "x", in chunks and without saying how many. */
function chunked(bytes: number): (response: ServerResponse) => void {
  return (response) => {
    response.writeHead(200, { "content-type": "application/octet-stream" });
    for (let sent = 0; sent < bytes; sent += 1024)
      response.write(Buffer.alloc(Math.min(1024, bytes - sent), "x"));
    response.end();
  };
}

describe("S3ArtifactObjects.download", () => {
  it("copies an object of unknown length within the limit", async () => {
    answers.set("/code/small.zip", chunked(10_000));
    const file = join(dir, "small");
    assert.equal(await objects.download({ bucket: "code", key: "small.zip" }, file, 10_000), true);
    assert.equal(readFileSync(file).length, 10_000);
  });

  it("stops at the limit while streaming when the store does not say the length, leaving no file", async () => {
    answers.set("/code/big.zip", chunked(100_000));
    const file = join(dir, "big");
    await assert.rejects(
      objects.download({ bucket: "code", key: "big.zip" }, file, 50_000),
      (error: Error) =>
        error instanceof TooLargeObjectError && /larger than 50000/.test(error.message),
    );
    assert.equal(existsSync(file), false);
  });

  it("answers false for an object that is not there", async () => {
    const file = join(dir, "missing");
    assert.equal(await objects.download({ bucket: "code", key: "none.zip" }, file, 1000), false);
    assert.equal(existsSync(file), false);
  });

  it("calls a store that fails on its side unavailable, saying where", async () => {
    answers.set("/code/busy.zip", (response) => {
      response.writeHead(503, { "content-type": "application/xml" });
      response.end("<Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>");
    });
    await assert.rejects(
      objects.download({ bucket: "code", key: "busy.zip" }, join(dir, "busy"), 1000),
      (error: Error) =>
        error instanceof ObjectStoreUnavailableError &&
        error.message.includes("reading s3://code/busy.zip") &&
        error.message.includes("HTTP 503"),
    );
  });
});

/** An S3 error answer: `status`, with `code` and `message` in its XML body. */
function failing(
  status: number,
  code: string,
  message: string,
): (response: ServerResponse) => void {
  return (response) => {
    response.writeHead(status, { "content-type": "application/xml" });
    response.end(`<Error><Code>${code}</Code><Message>${message}</Message></Error>`);
  };
}

describe("S3ArtifactObjects, what the store refuses", () => {
  it("calls a 403 AccessDenied an Error that says so, not an unavailable store", async () => {
    answers.set("/private/code.zip", failing(403, "AccessDenied", "Access Denied"));
    await assert.rejects(
      objects.download({ bucket: "private", key: "code.zip" }, join(dir, "private"), 1000),
      (error: Error) =>
        !(error instanceof ObjectStoreUnavailableError) &&
        error.message.includes("refused reading s3://private/code.zip") &&
        error.message.includes("HTTP 403 AccessDenied: Access Denied"),
    );
    assert.equal(existsSync(join(dir, "private")), false);
  });
});

describe("S3ArtifactObjects.head", () => {
  it("says the object's etag and version id", async () => {
    answers.set("/code/head.zip", (response) => {
      response.writeHead(200, {
        etag: '"0123abcd"',
        "x-amz-version-id": "version-2",
        "content-length": "3",
      });
      response.end();
    });
    assert.deepEqual(await objects.head({ bucket: "code", key: "head.zip" }), {
      etag: '"0123abcd"',
      versionId: "version-2",
    });
  });

  it("answers undefined for an object that is not there", async () => {
    assert.equal(await objects.head({ bucket: "code", key: "none.zip" }), undefined);
  });
});

describe("S3ArtifactObjects.download with ifMatch", () => {
  /** Answers "new" with etag "new-etag", and 412 to a request for any other etag. */
  const current = (response: ServerResponse, request: IncomingMessage) => {
    if (request.headers["if-match"] !== '"new-etag"') {
      failing(412, "PreconditionFailed", "At least one of the preconditions failed")(response);
      return;
    }
    response.writeHead(200, { etag: '"new-etag"', "content-length": "3" });
    response.end("new");
  };

  it("reads the object while it still has that etag", async () => {
    answers.set("/code/changing.zip", current);
    const file = join(dir, "current");
    const object = { bucket: "code", key: "changing.zip" };
    assert.equal(await objects.download(object, file, 1000, { ifMatch: '"new-etag"' }), true);
    assert.equal(readFileSync(file, "utf8"), "new");
  });

  it("throws PreconditionFailedError once it changed, leaving no file", async () => {
    answers.set("/code/changing.zip", current);
    const file = join(dir, "stale");
    const object = { bucket: "code", key: "changing.zip" };
    await assert.rejects(
      objects.download(object, file, 1000, { ifMatch: '"old-etag"' }),
      (error: Error) =>
        error instanceof PreconditionFailedError &&
        error.message === "s3://code/changing.zip changed while it was being read",
    );
    assert.equal(existsSync(file), false);
  });
});
