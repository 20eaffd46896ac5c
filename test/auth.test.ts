import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  BedrockAgentCoreControlClient,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { connect } from "node:net";
import { waitFor } from "./support/agents.ts";
import { removeDir, startTestBerth, useTestBerth } from "./support/berth.ts";
import { sendRaw } from "./support/signed-request.ts";

const harness = useTestBerth();

function controlClient(
  overrides: Partial<ConstructorParameters<typeof BedrockAgentCoreControlClient>[0]> = {},
) {
  return new BedrockAgentCoreControlClient({
    endpoint: harness().berth.url,
    region: "us-east-1",
    credentials: harness().berth.credentials,
    maxAttempts: 1,
    ...overrides,
  });
}

describe("SigV4 authentication", () => {
  it("accepts requests the official SDK signs", async () => {
    const listed = await harness().control.send(new ListAgentRuntimesCommand({}));
    assert.deepEqual(listed.agentRuntimes, []);
  });

  it("refuses a wrong secret with InvalidSignatureException", async () => {
    const client = controlClient({
      credentials: {
        accessKeyId: harness().berth.credentials.accessKeyId,
        secretAccessKey: "wrong-secret-0123456789",
      },
    });
    await assert.rejects(
      client.send(new ListAgentRuntimesCommand({})),
      (error: Error & { $metadata?: { httpStatusCode?: number } }) => {
        assert.equal(error.name, "InvalidSignatureException");
        assert.equal(error.$metadata?.httpStatusCode, 403);
        assert.match(error.message, /signature does not match/);
        return true;
      },
    );
    client.destroy();
  });

  it("refuses an unknown access key with UnrecognizedClientException", async () => {
    const client = controlClient({
      credentials: { accessKeyId: "AKIAUNKNOWN0000000", secretAccessKey: "whatever-0123456789" },
    });
    await assert.rejects(client.send(new ListAgentRuntimesCommand({})), {
      name: "UnrecognizedClientException",
      message: /Unknown access key id AKIAUNKNOWN0000000/,
    });
    client.destroy();
  });

  it("refuses a client signing for another region, and says which region to use", async () => {
    const client = controlClient({ region: "eu-west-1" });
    await assert.rejects(client.send(new ListAgentRuntimesCommand({})), {
      name: "InvalidSignatureException",
      message: /region to us-east-1/,
    });
    client.destroy();
  });

  it("refuses an unsigned request with MissingAuthenticationTokenException", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "POST",
      path: "/runtimes/",
      unsigned: true,
    });
    assert.equal(response.status, 403);
    assert.equal(response.headers["x-amzn-errortype"], "MissingAuthenticationTokenException");
    assert.ok(response.headers["x-amzn-requestid"]);
  });

  it("refuses a body changed after signing (the body hash is checked)", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "PUT",
      path: "/runtimes/",
      body: JSON.stringify({ agentRuntimeName: "original" }),
      credentials: harness().berth.credentials,
      afterSigning: (request) => {
        request.body = JSON.stringify({ agentRuntimeName: "tampered" });
        request.headers["content-length"] = String(Buffer.byteLength(request.body as string));
      },
    });
    assert.equal(response.status, 403);
    assert.equal(response.headers["x-amzn-errortype"], "InvalidSignatureException");
    assert.match(response.body, /does not match the SHA-256 of the body/);
  });

  it("refuses a bad Authorization header before reading any of the body", async () => {
    const { hostname, port } = new URL(harness().berth.url);
    const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
    const socket = connect(Number(port), hostname);
    let answer = "";
    socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")));
    try {
      // Headers announcing a body (within maxRequestBodyBytes) and not one byte of it: the
      // answer must not wait for the body.
      socket.write(
        [
          "PUT /runtimes/ HTTP/1.1",
          `host: ${hostname}:${port}`,
          "content-length: 1000000",
          `x-amz-date: ${amzDate}`,
          `authorization: AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN0000000/${amzDate.slice(0, 8)}/us-east-1/bedrock-agentcore/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
          "",
          "",
        ].join("\r\n"),
      );
      await waitFor("the answer", () => answer.includes("\r\n\r\n") || undefined);
      assert.match(answer, /^HTTP\/1\.1 403/);
      assert.match(answer, /x-amzn-errortype: UnrecognizedClientException/i);
    } finally {
      socket.destroy();
    }
  });

  it("refuses a query changed after signing", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "POST",
      path: "/runtimes/?maxResults=5",
      credentials: harness().berth.credentials,
      afterSigning: (request) => {
        request.query = { maxResults: "50" };
      },
    });
    assert.equal(response.status, 403);
    assert.equal(response.headers["x-amzn-errortype"], "InvalidSignatureException");
  });

  it("refuses a request signed too long ago, with the server's Date for clock correction", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "POST",
      path: "/runtimes/",
      credentials: harness().berth.credentials,
      signingDate: new Date(Date.now() - 3600_000),
    });
    assert.equal(response.status, 403);
    assert.equal(response.headers["x-amzn-errortype"], "InvalidSignatureException");
    assert.match(response.body, /Signature expired/);
    assert.ok(response.headers["date"]);
  });

  it("lets the SDK correct a skewed client clock from that answer and retry", async () => {
    const client = controlClient({ maxAttempts: 3, systemClockOffset: -3600_000 });
    const listed = await client.send(new ListAgentRuntimesCommand({}));
    assert.ok(Array.isArray(listed.agentRuntimes));
    assert.ok(
      Math.abs(client.config.systemClockOffset) < 60_000,
      "the SDK corrected its clock offset",
    );
    client.destroy();
  });

  it("authenticates the data plane too", async () => {
    const client = new BedrockAgentCoreClient({
      endpoint: harness().berth.url,
      region: "us-east-1",
      credentials: {
        accessKeyId: harness().berth.credentials.accessKeyId,
        secretAccessKey: "wrong-secret-0123456789",
      },
      maxAttempts: 1,
    });
    await assert.rejects(
      client.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/a-0123456789",
          payload: Buffer.from("{}"),
        }),
      ),
      { name: "InvalidSignatureException" },
    );
    client.destroy();
  });
});

describe("generated credentials", () => {
  it("prints the key pair once, with the lines a user pastes", () => {
    const text = harness().consoleText.join("");
    assert.match(
      text,
      new RegExp(`export AWS_ACCESS_KEY_ID=${harness().berth.credentials.accessKeyId}`),
    );
    assert.match(
      text,
      new RegExp(`export AWS_SECRET_ACCESS_KEY=${harness().berth.credentials.secretAccessKey}`),
    );
    const logged = JSON.stringify(harness().logLines);
    assert.ok(
      !logged.includes(harness().berth.credentials.secretAccessKey),
      "the secret never reaches the log",
    );
  });
});

describe("--insecure-no-auth", () => {
  it("accepts unsigned requests and says so loudly at start", async () => {
    const open = await startTestBerth(["--insecure-no-auth"]);
    try {
      const response = await sendRaw(open.berth.url, {
        method: "POST",
        path: "/runtimes/",
        unsigned: true,
      });
      assert.equal(response.status, 200);
      assert.ok(
        open.logLines.some(
          (line) => line["level"] === "warn" && /AUTHENTICATION IS OFF/.test(String(line["msg"])),
        ),
      );
    } finally {
      await open.close();
      removeDir(open.dataDir);
    }
  });
});
