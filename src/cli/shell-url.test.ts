import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { presignShellUrl, sessionIdName, signShellRequest, type ShellTarget } from "./shell-url.ts";

const credentials = { accessKeyId: "AKIDSHELLTEST", secretAccessKey: "shell-test-secret" };
const target: ShellTarget = {
  endpoint: "http://127.0.0.1:8787",
  region: "us-east-1",
  credentials,
  runtimeArn: "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/my_agent-a1b2c3d4e5",
  sessionId: "conversation-0001-aaaaaaaaaaaaaaaaaaaa",
  qualifier: "DEFAULT",
  shellId: "shell-1",
};
const signingDate = new Date("2026-12-01T12:00:00Z");

/** The server's side, independently: the SDK's signer over what the URL says. */
function verifier(): SignatureV4 {
  return new SignatureV4({
    credentials,
    region: "us-east-1",
    service: "bedrock-agentcore",
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: true,
  });
}

/** The request a server reads from a presigned URL, less its signature. */
function requestOf(url: URL): HttpRequest {
  const query = Object.fromEntries(url.searchParams);
  delete query["X-Amz-Signature"];
  return new HttpRequest({
    method: "GET",
    protocol: "http:",
    hostname: url.hostname,
    port: Number(url.port),
    path: url.pathname,
    query,
    headers: { host: url.host },
  });
}

async function resignedSignature(url: URL): Promise<unknown> {
  const presigned = await verifier().presign(requestOf(url), {
    signingDate,
    expiresIn: Number(url.searchParams.get("X-Amz-Expires")),
  });
  return presigned.query?.["X-Amz-Signature"];
}

describe("the shell's URL", () => {
  it("presigns a ws:// URL to the runtime's shells with the session, qualifier and shell in its query", async () => {
    const url = new URL(await presignShellUrl({ ...target, expiresInSeconds: 300, signingDate }));
    assert.equal(url.protocol, "ws:");
    assert.equal(url.host, "127.0.0.1:8787");
    assert.equal(
      url.pathname,
      `/runtimes/${encodeURIComponent(target.runtimeArn)}/ws/shells`,
      "the ARN is one path segment",
    );
    assert.equal(url.searchParams.get(sessionIdName), target.sessionId);
    assert.equal(url.searchParams.get("qualifier"), "DEFAULT");
    assert.equal(url.searchParams.get("shellId"), "shell-1");
    assert.equal(url.searchParams.get("X-Amz-Algorithm"), "AWS4-HMAC-SHA256");
    assert.equal(
      url.searchParams.get("X-Amz-Credential"),
      "AKIDSHELLTEST/20261201/us-east-1/bedrock-agentcore/aws4_request",
    );
    assert.equal(url.searchParams.get("X-Amz-Date"), "20261201T120000Z");
    assert.equal(url.searchParams.get("X-Amz-Expires"), "300");
    assert.equal(url.searchParams.get("X-Amz-SignedHeaders"), "host");
  });

  it("carries a signature the SDK's signer computes again from the URL alone, and no other", async () => {
    const url = new URL(await presignShellUrl({ ...target, expiresInSeconds: 60, signingDate }));
    assert.equal(await resignedSignature(url), url.searchParams.get("X-Amz-Signature"));
    const otherSession = new URL(url);
    otherSession.searchParams.set(sessionIdName, "conversation-0002-aaaaaaaaaaaaaaaaaaaa");
    assert.notEqual(
      await resignedSignature(otherSession),
      url.searchParams.get("X-Amz-Signature"),
      "the session id is signed",
    );
  });

  it("uses wss:// for an https:// endpoint and keeps its path prefix", async () => {
    const url = new URL(
      await presignShellUrl({
        ...target,
        endpoint: "https://berth.example.com/agentcore",
        expiresInSeconds: 300,
      }),
    );
    assert.equal(url.protocol, "wss:");
    assert.match(url.pathname, /^\/agentcore\/runtimes\/arn%3Aaws%3A.*\/ws\/shells$/);
  });

  it("signs the upgrade with headers: the session id header and an empty body's hash, signed", async () => {
    const { url, headers } = await signShellRequest(target);
    const parsed = new URL(url);
    assert.equal(parsed.searchParams.get("X-Amz-Signature"), null, "no query authentication");
    assert.equal(headers[sessionIdName], target.sessionId);
    assert.equal(headers["host"], "127.0.0.1:8787");
    const authorization = headers["authorization"] ?? "";
    assert.match(
      authorization,
      /^AWS4-HMAC-SHA256 Credential=AKIDSHELLTEST\/\d{8}\/us-east-1\/bedrock-agentcore\/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amzn-bedrock-agentcore-runtime-session-id, Signature=[0-9a-f]{64}$/,
    );
    const date = headers["x-amz-date"] ?? "";
    const resigned = await verifier().sign(
      new HttpRequest({
        method: "GET",
        protocol: "http:",
        hostname: parsed.hostname,
        port: Number(parsed.port),
        path: parsed.pathname,
        query: Object.fromEntries(parsed.searchParams),
        headers: {
          host: parsed.host,
          [sessionIdName]: headers[sessionIdName] ?? "",
          "x-amz-content-sha256": headers["x-amz-content-sha256"] ?? "",
        },
      }),
      {
        signingDate: new Date(
          date.replace(/^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/, "$1-$2-$3T$4:$5:$6Z"),
        ),
      },
    );
    assert.equal(resigned.headers["authorization"], authorization);
  });
});
