import assert from "node:assert/strict";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
} from "node:fs";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  BedrockAgentCoreControlClient,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { Hash } from "@smithy/hash-node";
import { HttpRequest, HttpResponse } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { credentialsIn, spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import {
  hostSuite,
  makeDataDir,
  removeDir,
  startTestBerth,
  useTestBerth,
} from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { OciLayout, tarOf, tarOfFolder } from "./support/oci-images.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendAsIs } from "./support/signed-request.ts";

const harness = useTestBerth([], (berth) => {
  installAgent(berth.dataDir, agentSources.probe, "probe");
});

/** Signs a request over the SHA-256 of `body` (a hex x-amz-content-sha256), as the SDK does. */
async function signOverBody(
  url: string,
  credentials: { accessKeyId: string; secretAccessKey: string },
  request: { method: string; path: string; query?: Record<string, string>; body: Buffer },
): Promise<{ method: string; path: string; headers: Record<string, string>; body: Buffer }> {
  const { host, hostname, port } = new URL(url);
  const signer = new SignatureV4({
    credentials,
    region: "us-east-1",
    service: "bedrock-agentcore",
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: true,
    applyChecksum: true,
  });
  const signed = await signer.sign(
    new HttpRequest({
      method: request.method,
      protocol: "http:",
      hostname,
      port: Number(port),
      path: request.path,
      query: request.query ?? {},
      headers: {
        host,
        "content-type": "application/octet-stream",
        "content-length": String(request.body.length),
      },
      body: request.body,
    }),
  );
  const search = new URLSearchParams(request.query ?? {}).toString();
  return {
    method: request.method,
    path: `${request.path}${search === "" ? "" : `?${search}`}`,
    headers: signed.headers,
    body: request.body,
  };
}

describe("an invocation reaches the agent only as it was signed", () => {
  let probeArn = "";
  before(async () => {
    probeArn = (await createRuntime(harness(), "probe")).arn;
  });

  it("refuses a captured invocation replayed with another body, which never reaches the agent", async () => {
    const { berth, settings } = harness();
    const session = newSessionId("replay");
    // The attacker's copy: what the official SDK sent (a hex x-amz-content-sha256), captured on the way.
    let captured: HttpRequest | undefined;
    const capturing = new BedrockAgentCoreClient({
      endpoint: berth.url,
      region: settings.region,
      credentials: berth.credentials,
      maxAttempts: 1,
      requestHandler: {
        handle: (request: HttpRequest) => {
          captured = request;
          return Promise.resolve({
            response: new HttpResponse({ statusCode: 200, headers: {}, body: Readable.from([]) }),
          });
        },
      },
    });
    const original = Buffer.from(JSON.stringify({ action: "remember", value: "original" }));
    await capturing.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: probeArn,
        runtimeSessionId: session,
        payload: original,
      }),
    );
    capturing.destroy();
    assert.ok(captured !== undefined);
    assert.match(captured.headers["x-amz-content-sha256"] ?? "", /^[0-9a-f]{64}$/);
    const replay = (body: Buffer) =>
      sendAsIs(berth.url, {
        method: "POST",
        path: captured?.path ?? "",
        headers: captured?.headers ?? {},
        body,
      });

    assert.equal((await replay(original)).status, 200, "the captured request itself is valid");
    // Same length, so even the signed content-length still matches: only the hash can tell.
    const tampered = Buffer.from(JSON.stringify({ action: "remember", value: "tampered" }));
    assert.equal(tampered.length, original.length);
    const refused = await replay(tampered);
    assert.equal(refused.status, 403);
    assert.equal(refused.headers["x-amzn-errortype"], "InvalidSignatureException");
    assert.match(refused.body, /does not match the SHA-256 of the body/);

    const seen = await invokeProbe(harness().data, probeArn, session, { action: "recall" });
    assert.deepEqual(seen["memory"], ["original"], "the agent never saw the tampered payload");
  });

  it("checks a payload bigger than maxInMemoryBodyBytes from a root-only file, then delivers it whole", async () => {
    const session = newSessionId("large");
    const value = "x".repeat(5 * harness().settings.maxInMemoryBodyBytes);
    const remembered = await invokeProbe(harness().data, probeArn, session, {
      action: "remember",
      value,
    });
    assert.equal(remembered["count"], 1);
    const seen = await invokeProbe(harness().data, probeArn, session, { action: "recall" });
    assert.deepEqual(seen["memory"], [value]);
    const spillDir = join(harness().dataDir, "request-bodies");
    assert.equal(statSync(spillDir).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(spillDir), [], "held bodies leave no file behind");
  });

  it("still streams a payload signed as UNSIGNED-PAYLOAD to the agent", async () => {
    const session = newSessionId("streamed");
    const payload = JSON.stringify({ action: "remember", value: "streamed" });
    const response = await harness().data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: probeArn,
        runtimeSessionId: session,
        payload: Readable.from([Buffer.from(payload)]),
      }),
    );
    assert.deepEqual(JSON.parse((await response.response?.transformToString()) ?? ""), {
      count: 1,
    });
  });
});

describe("an upload signed over its SHA-256 is checked before it is used", () => {
  const work = mkdtempSync(join(tmpdir(), "berth-bodies-"));
  after(() => {
    removeDir(work);
  });

  it("refuses a code archive changed after signing, and unpacks nothing", async () => {
    const { berth, dataDir } = harness();
    const archive = (text: string) =>
      gzipSync(tarOf([{ path: "main.js", content: `console.log(${JSON.stringify(text)})\n` }]));
    const path = "/berth/v1/artifacts/uploads/signed";
    const signed = await signOverBody(berth.url, berth.credentials, {
      method: "PUT",
      path,
      body: archive("signed"),
    });
    const refused = await sendAsIs(berth.url, { ...signed, body: archive("forged") });
    assert.equal(refused.status, 403, refused.body);
    assert.equal(refused.headers["x-amzn-errortype"], "InvalidSignatureException");
    assert.equal(existsSync(join(dataDir, "artifacts", "uploads", "signed")), false);

    const accepted = await sendAsIs(berth.url, signed);
    assert.equal(accepted.status, 200, accepted.body);
    assert.match(
      readFileSync(join(dataDir, "artifacts", "uploads", "signed", "main.js"), "utf8"),
      /"signed"/,
    );
  });

  it("refuses an image archive changed after signing, and loads nothing", hostSuite, async () => {
    const { berth } = harness();
    const archive = (name: string) => {
      const layout = new OciLayout(join(work, name));
      layout.tag(
        layout.image([tarOf([{ path: "marker", content: name }])], { Cmd: ["/marker"] }),
        "latest",
      );
      return tarOfFolder(layout.dir);
    };
    const query = { reference: "berth.local/signed:1" };
    const signed = await signOverBody(berth.url, berth.credentials, {
      method: "PUT",
      path: "/berth/v1/images",
      query,
      body: archive("signed"),
    });
    const loadedNames = async () => {
      const listed = await signOverBody(berth.url, berth.credentials, {
        method: "GET",
        path: "/berth/v1/images",
        body: Buffer.alloc(0),
      });
      const answer = JSON.parse((await sendAsIs(berth.url, listed)).body) as {
        images: { names: string[] }[];
      };
      return answer.images.flatMap((image) => image.names);
    };
    const refused = await sendAsIs(berth.url, { ...signed, body: archive("forged") });
    assert.equal(refused.status, 403, refused.body);
    assert.equal(refused.headers["x-amzn-errortype"], "InvalidSignatureException");
    assert.ok(!(await loadedNames()).includes(query.reference), "nothing was loaded");

    const accepted = await sendAsIs(berth.url, signed);
    assert.equal(accepted.status, 200, accepted.body);
    assert.ok((await loadedNames()).includes(query.reference));
  });
});

/** Resident memory of a process, in bytes. */
function residentBytes(pid: number): number {
  const kilobytes = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kilobytes) * 1024;
}

/** Files a process holds open in `dir`, deleted or not. */
function openFilesIn(pid: number, dir: string): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return ""; // closed meanwhile
      }
    })
    .filter((target) => target.startsWith(`${dir}/`));
}

/** One hand-written request whose body stops one byte short, so a server reading it must wait. */
interface HeldBackRequest {
  socket: Socket;
  answer: () => string;
  /** The status and x-amzn-errortype of the answer, once one arrived. */
  outcome: () => string | undefined;
}

function sendAllButLastByte(url: string, head: string[], body: Buffer): HeldBackRequest {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  let answer = "";
  socket.on("data", (chunk: Buffer) => {
    if (answer.length < 4096) answer += chunk.toString("latin1");
  });
  socket.on("error", () => {}); // a refused body may be cut off: the answer is what counts
  socket.write(
    [...head, `host: ${hostname}:${port}`, `content-length: ${body.length}`, "", ""].join("\r\n"),
  );
  socket.write(body.subarray(0, body.length - 1));
  return {
    socket,
    answer: () => answer,
    outcome: () => {
      const status = /^HTTP\/1\.1 (\d{3})/.exec(answer)?.[1];
      if (status === undefined || !answer.includes("\r\n\r\n")) return undefined;
      return `${status} ${/x-amzn-errortype: (\S+)/i.exec(answer)?.[1] ?? ""}`;
    },
  };
}

function tally(requests: HeldBackRequest[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const request of requests) {
    const outcome = request.outcome() ?? "unanswered";
    counts.set(outcome, (counts.get(outcome) ?? 0) + 1);
  }
  return counts;
}

/** Fails at once when the process's memory grew past `boundBytes` over `baseline`. */
function checkMemory(pid: number, baseline: number, boundBytes: number): void {
  const grownBytes = residentBytes(pid) - baseline;
  assert.ok(
    grownBytes < boundBytes,
    `Berth's resident memory grew by ${Math.round(grownBytes / 2 ** 20)} MiB`,
  );
}

describe("request bodies before authentication (a Berth process of its own)", () => {
  let server: BerthProcess | undefined;
  let dataDir = "";
  let credentials = { accessKeyId: "", secretAccessKey: "" };
  const bodyBytes = 1_048_576; // maxRequestBodyBytes: the largest control-plane body allowed
  const memoryBoundBytes = 64 * 2 ** 20;

  before(async () => {
    dataDir = makeDataDir();
    // An environment variable: a Berth without the setting ignores it instead of refusing to start.
    server = await spawnBerth(["--data-dir", dataDir], {
      BERTH_MAX_UNAUTHENTICATED_BUFFER_BYTES: String(8 * bodyBytes),
    });
    credentials = credentialsIn(dataDir);
  });
  after(async () => {
    server?.child.kill("SIGTERM");
    await server?.exit;
    removeDir(dataDir);
  });
  const berthPid = () => server?.child.pid ?? 0;
  const control = () =>
    new BedrockAgentCoreControlClient({
      endpoint: server?.url ?? "",
      region: "us-east-1",
      credentials,
      maxAttempts: 1,
    });

  it("refuses unsigned requests before reading their bodies: a flood holds no memory, and signed requests are still answered", async () => {
    const client = control();
    await client.send(new ListAgentRuntimesCommand({}));
    const baseline = residentBytes(berthPid());
    const body = Buffer.alloc(bodyBytes, "x");
    const flood = Array.from({ length: 300 }, () =>
      sendAllButLastByte(server?.url ?? "", ["POST /runtimes/ HTTP/1.1"], body),
    );
    try {
      await waitFor(
        "every unsigned request to be answered",
        () => {
          checkMemory(berthPid(), baseline, memoryBoundBytes);
          return flood.every((request) => request.outcome() !== undefined);
        },
        60_000,
      );
      assert.deepEqual(
        [...tally(flood)],
        [["403 MissingAuthenticationTokenException", flood.length]],
      );
      const listed = await client.send(new ListAgentRuntimesCommand({}));
      assert.deepEqual(listed.agentRuntimes, [], "a signed request is answered meanwhile");
      checkMemory(berthPid(), baseline, memoryBoundBytes);
    } finally {
      for (const request of flood) request.socket.destroy();
      client.destroy();
    }
  });

  it("holds bodies that a known key id claims within maxUnauthenticatedBufferBytes, in deleted files, and throttles the rest", async () => {
    // A forged signature with the real key id: the key id is no secret, so it must buy nothing.
    const amzDate = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+/, "");
    const forged = [
      "POST /runtimes/ HTTP/1.1",
      `x-amz-date: ${amzDate}`,
      `authorization: AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${amzDate.slice(0, 8)}/us-east-1/bedrock-agentcore/aws4_request, SignedHeaders=host;x-amz-date, Signature=${"0".repeat(64)}`,
    ];
    const baseline = residentBytes(berthPid());
    const body = Buffer.alloc(bodyBytes, "y");
    const spillDir = join(dataDir, "request-bodies");
    const flood = Array.from({ length: 100 }, () =>
      sendAllButLastByte(server?.url ?? "", forged, body),
    );
    try {
      // The budget is 8 bodies: those wait for their last byte, held in files; the rest are refused.
      await waitFor(
        "all but the 8 bodies the budget holds to be refused",
        () => {
          checkMemory(berthPid(), baseline, memoryBoundBytes);
          return tally(flood).get("429 ThrottlingException") === flood.length - 8;
        },
        60_000,
      );
      const held = await waitFor("the held bodies to be in files", () => {
        const files = openFilesIn(berthPid(), spillDir);
        return files.length === 8 ? files : undefined;
      });
      assert.ok(held.every((file) => file.endsWith(" (deleted)")));
      for (const request of flood) if (request.outcome() === undefined) request.socket.write("y");
      await waitFor("every request to be answered", () =>
        flood.every((request) => request.outcome() !== undefined),
      );
      assert.deepEqual(
        new Map([...tally(flood)].sort()),
        new Map([
          ["403 InvalidSignatureException", 8],
          ["429 ThrottlingException", flood.length - 8],
        ]),
      );
      await waitFor("the held files to be closed", () =>
        openFilesIn(berthPid(), spillDir).length === 0 ? true : undefined,
      );
      checkMemory(berthPid(), baseline, memoryBoundBytes);
    } finally {
      for (const request of flood) request.socket.destroy();
    }
  });
});

describe("connections", () => {
  it("closes connections past maxConnections, and serves again once some close", async () => {
    const limited = await startTestBerth(["--max-connections", "4"]);
    const { hostname, port } = new URL(limited.berth.url);
    const sockets = Array.from({ length: 5 }, () => connect(Number(port), hostname));
    try {
      const dropped = await waitFor("one connection to be dropped", () => {
        const closed = sockets.filter((socket) => socket.closed || socket.readableEnded);
        return closed.length > 0 ? closed : undefined;
      });
      assert.equal(dropped.length, 1);
      for (const socket of sockets) socket.destroy();
      // The server counts a connection as gone only once it has seen it close: ask until it has.
      const listed = await waitFor("a signed request to be answered", async () => {
        try {
          return await limited.control.send(new ListAgentRuntimesCommand({}));
        } catch {
          return undefined;
        }
      });
      assert.deepEqual(listed.agentRuntimes, []);
    } finally {
      for (const socket of sockets) socket.destroy();
      await limited.close();
      removeDir(limited.dataDir);
    }
  });

  it("answers 408 and closes a connection whose headers trickle in past requestHeadersTimeoutSeconds", async () => {
    const strict = await startTestBerth(["--request-headers-timeout-seconds", "1"]);
    const { hostname, port } = new URL(strict.berth.url);
    const socket = connect(Number(port), hostname);
    let answer = "";
    socket.on("data", (chunk: Buffer) => (answer += chunk.toString("latin1")));
    try {
      socket.write(`POST /runtimes/ HTTP/1.1\r\nhost: ${hostname}:${port}\r\n`);
      await waitFor("the connection to be closed", () => socket.readableEnded || socket.closed);
      assert.match(answer, /^HTTP\/1\.1 408/);
    } finally {
      socket.destroy();
      await strict.close();
      removeDir(strict.dataDir);
    }
  });
});
