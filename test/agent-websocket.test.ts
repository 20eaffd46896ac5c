import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { connect as connectTcp } from "node:net";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { WebSocket } from "ws";
import { agentSources, installAgent, installWebSocketAgent, waitFor } from "./support/agents.ts";
import { onTestParts, useTestBerth } from "./support/berth.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";
import {
  closeOf,
  keepMessages,
  nextMessage,
  opened,
  openSigned,
  presignUpgrade,
  RefusedUpgrade,
  sessionIdHeader,
  signUpgrade,
  type WebSocketTarget,
} from "./support/websockets.ts";

/** Like the other Python client tests, this one runs under `npm test` as root (botocore is root's). */
const pythonClients = onTestParts
  ? { skip: "the Python clients (botocore) are tested under `npm test`, as root" }
  : {};

describe("WebSocket streaming to the agent (GET /runtimes/{arn}/ws)", () => {
  const harness = useTestBerth([], (berth) => {
    installWebSocketAgent(berth.dataDir, "websocket");
    installAgent(berth.dataDir, agentSources.probe, "probe");
  });
  let runtime: { arn: string } | undefined;

  async function target(query: Record<string, string> = {}): Promise<WebSocketTarget> {
    const berth = harness();
    runtime ??= await createRuntime(berth, "websocket");
    return {
      endpoint: berth.berth.url,
      credentials: berth.berth.credentials,
      region: berth.settings.region,
      path: `/runtimes/${encodeURIComponent(runtime.arn)}/ws`,
      query,
    };
  }

  /** A socket to a new session's agent, past the agent's greeting; with the greeting's headers. */
  async function connect(
    sessionId = newSessionId(),
    protocols: string[] = [],
  ): Promise<{ socket: WebSocket; greeting: { headers: Record<string, string> } }> {
    const socket = await openSigned(await target(), {
      headers: { [sessionIdHeader]: sessionId },
      protocols,
    });
    const greeting = JSON.parse((await nextMessage(socket)).data.toString("utf8")) as {
      headers: Record<string, string>;
    };
    return { socket, greeting };
  }

  it("relays text and binary both ways, and the agent sees its session", async () => {
    const sessionId = newSessionId();
    const { socket, greeting } = await connect(sessionId);
    assert.equal(greeting.headers[sessionIdHeader], sessionId);
    socket.send("hello");
    const text = await nextMessage(socket);
    assert.deepEqual([text.isBinary, text.data.toString("utf8")], [false, "echo:hello"]);
    const bytes = Buffer.from([0, 1, 2, 255, 254]);
    socket.send(bytes);
    const binary = await nextMessage(socket);
    assert.equal(binary.isBinary, true);
    assert.deepEqual(binary.data, bytes);
    socket.close(1000, "done");
    assert.equal((await closeOf(socket)).code, 1000);
  });

  it("passes the subprotocol the agent chose back to the client", async () => {
    const { socket } = await connect(newSessionId(), ["other", "echo.v1"]);
    assert.equal(socket.protocol, "echo.v1");
    socket.close();
  });

  it("carries a large message whole, each way", async () => {
    const { socket } = await connect();
    const large = Buffer.alloc(8 << 20, 9);
    socket.send(large);
    const back = await nextMessage(socket);
    assert.equal(back.data.length, large.length);
    assert.ok(back.data.equals(large));
    socket.send(`big:${16 << 20}`);
    const big = await nextMessage(socket);
    assert.equal(big.data.length, 16 << 20);
    socket.close();
  });

  it("passes the agent's close code and reason to the client", async () => {
    const { socket } = await connect();
    socket.send("close:4001:agent says bye");
    assert.deepEqual(await closeOf(socket), { code: 4001, reason: "agent says bye" });
  });

  it("passes the client's close code to the agent, and a client that goes away as 1001", async () => {
    const sessionId = newSessionId();
    const lastClose = async (): Promise<{ code: number; reason: string } | null> => {
      const answer = await harness().data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: (await target(), runtime?.arn ?? ""),
          runtimeSessionId: sessionId,
          payload: Buffer.from("{}"),
        }),
      );
      const body = JSON.parse((await answer.response?.transformToString()) ?? "{}") as {
        lastClose: { code: number; reason: string } | null;
      };
      return body.lastClose;
    };
    const first = await connect(sessionId);
    first.socket.close(4321, "client closing");
    await waitFor("the agent to see the client's close", async () =>
      (await lastClose())?.code === 4321 ? true : undefined,
    );
    assert.deepEqual(await lastClose(), { code: 4321, reason: "client closing" });
    const second = await connect(sessionId);
    second.socket.terminate(); // the TCP connection drops with no close frame
    await waitFor("the agent to see the client go away", async () =>
      (await lastClose())?.code === 1001 ? true : undefined,
    );
  });

  it("carries a flood to a client that reads late whole and in order: the relay holds the agent back, it drops nothing", async () => {
    const { socket } = await connect();
    socket.pause(); // reads nothing for now
    socket.send("flood:400"); // 25 MiB from the agent
    await new Promise((resolve) => setImmediate(resolve));
    let received = 0;
    let done = "";
    socket.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) received += data.length;
      else done = data.toString("utf8");
    });
    socket.resume();
    await waitFor("the flood to arrive", () => (done !== "" ? true : undefined), 60_000);
    assert.equal(done, "flood-done:400");
    assert.equal(received, 400 * 65536);
    socket.close();
  });

  it("opens with a presigned URL (the session id in the query), as a browser's WebSocket would", async () => {
    const sessionId = newSessionId();
    const url = await presignUpgrade(await target({ [sessionIdHeader]: sessionId }), {
      expiresIn: 60,
    });
    const socket = new globalThis.WebSocket(url);
    const greeting = await new Promise<string>((resolve, reject) => {
      socket.addEventListener(
        "message",
        (event) => {
          resolve(String(event.data));
        },
        { once: true },
      );
      socket.addEventListener(
        "error",
        () => {
          reject(new Error("the socket failed"));
        },
        {
          once: true,
        },
      );
    });
    assert.equal(
      (JSON.parse(greeting) as { headers: Record<string, string> }).headers[sessionIdHeader],
      sessionId,
    );
    socket.close();
  });

  it(
    "opens with a URL botocore presigned (SigV4QueryAuth), as a Python client would",
    pythonClients,
    async () => {
      const sessionId = newSessionId();
      const berth = harness();
      const base = await target();
      const url = `${base.endpoint}${base.path}?qualifier=DEFAULT&${sessionIdHeader}=${sessionId}`;
      const { stdout } = await promisify(execFile)(
        "python3",
        [
          "-c",
          [
            "import sys",
            "from botocore.auth import SigV4QueryAuth",
            "from botocore.awsrequest import AWSRequest",
            "from botocore.credentials import Credentials",
            "request = AWSRequest(method='GET', url=sys.argv[1])",
            "SigV4QueryAuth(Credentials(sys.argv[2], sys.argv[3]), 'bedrock-agentcore', sys.argv[4], expires=60).add_auth(request)",
            "print(request.url)",
          ].join("\n"),
          url,
          berth.berth.credentials.accessKeyId,
          berth.berth.credentials.secretAccessKey,
          berth.settings.region,
        ],
        { env: { PATH: process.env["PATH"], HOME: process.env["HOME"] } },
      );
      const socket = await opened(
        keepMessages(new WebSocket(stdout.trim().replace(/^http/, "ws"))),
      );
      const greeting = JSON.parse((await nextMessage(socket)).data.toString("utf8")) as {
        headers: Record<string, string>;
      };
      assert.equal(greeting.headers[sessionIdHeader], sessionId);
      socket.close();
    },
  );

  it("trusts no header a presigned URL does not sign: an added session header reaches nothing", async () => {
    const signedFor = newSessionId();
    const url = await presignUpgrade(await target({ [sessionIdHeader]: signedFor }), {
      expiresIn: 60,
    });
    // Whoever holds the URL adds a header naming another session: the URL's session it stays.
    const socket = await opened(
      keepMessages(new WebSocket(url, { headers: { [sessionIdHeader]: newSessionId() } })),
    );
    const greeting = JSON.parse((await nextMessage(socket)).data.toString("utf8")) as {
      headers: Record<string, string>;
    };
    assert.equal(greeting.headers[sessionIdHeader], signedFor);
    socket.close();
  });

  it("refuses a handshake the WebSocket server would drop (bad key or version) with a 400, at once", async () => {
    const base = await target();
    const { url, headers } = await signUpgrade(base, { [sessionIdHeader]: newSessionId() });
    const answer = await rawUpgrade(url, {
      ...headers,
      "sec-websocket-key": "not-a-key",
      "sec-websocket-version": "13",
    });
    assert.match(answer, /^HTTP\/1\.1 400 /);
    assert.match(answer, /x-amzn-errortype: ValidationException/);
  });

  it("answers a request with Upgrade: h2c as an ordinary request", async () => {
    const berth = harness();
    const answer = await sendRaw(berth.berth.url, {
      method: "POST",
      path: "/runtimes/",
      credentials: berth.berth.credentials,
      region: berth.settings.region,
      headers: { upgrade: "h2c", connection: "Upgrade" },
      body: "{}",
    });
    assert.equal(answer.status, 200, answer.body);
  });

  it("closes with 1009 a message over maxWebSocketMessageBytes", async () => {
    const { socket } = await connect();
    socket.send(Buffer.alloc((16 << 20) + 1));
    assert.equal((await closeOf(socket)).code, 1009);
  });

  it("refuses unsigned, tampered, expired and foreign-key upgrades with AWS errors", async () => {
    const sessionId = newSessionId();
    const base = await target({ [sessionIdHeader]: sessionId });
    const refusal = async (socket: WebSocket): Promise<RefusedUpgrade> => {
      const error = await opened(socket).then(
        () => assert.fail("the upgrade was accepted"),
        (failure: unknown) => failure,
      );
      assert.ok(error instanceof RefusedUpgrade, String(error));
      return error;
    };
    const unsigned = await refusal(
      new WebSocket(
        `ws://${new URL(base.endpoint).host}${base.path}?${sessionIdHeader}=${sessionId}`,
      ),
    );
    assert.equal(unsigned.errorType, "MissingAuthenticationTokenException");

    const presigned = new URL(await presignUpgrade(base, { expiresIn: 60 }));
    presigned.searchParams.set(sessionIdHeader, newSessionId()); // another session than signed
    assert.equal(
      (await refusal(new WebSocket(presigned.toString()))).errorType,
      "InvalidSignatureException",
    );

    const expired = await presignUpgrade(base, {
      expiresIn: 60,
      signingDate: new Date(Date.now() - 10 * 60_000),
    });
    const late = await refusal(new WebSocket(expired));
    assert.equal(late.errorType, "InvalidSignatureException");
    assert.match(late.body, /expired/);

    const foreign = await signUpgrade({
      ...base,
      credentials: { accessKeyId: "AKIAFOREIGN", secretAccessKey: "x".repeat(40) },
    });
    const stranger = await refusal(new WebSocket(foreign.url, { headers: foreign.headers }));
    assert.equal(stranger.errorType, "UnrecognizedClientException");
  });

  it("refuses /ws of an MCP runtime (AgentCore streams WebSockets to HTTP and AG-UI agents only)", async () => {
    const berth = harness();
    const mcp = await createRuntime(berth, "websocket", {
      protocolConfiguration: { serverProtocol: "MCP" },
    });
    const { url, headers } = await signUpgrade(
      { ...(await target()), path: `/runtimes/${encodeURIComponent(mcp.arn)}/ws` },
      { [sessionIdHeader]: newSessionId() },
    );
    const error = await opened(new WebSocket(url, { headers })).then(
      () => assert.fail("the upgrade was accepted"),
      (failure: unknown) => failure,
    );
    assert.ok(error instanceof RefusedUpgrade, String(error));
    assert.equal(error.errorType, "ValidationException");
    assert.match(error.body, /serves MCP/);
  });

  it("answers an agent without /ws with RuntimeClientError before the handshake", async () => {
    const berth = harness();
    const probe = await createRuntime(berth, "probe");
    const { url, headers } = await signUpgrade(
      {
        ...(await target()),
        path: `/runtimes/${encodeURIComponent(probe.arn)}/ws`,
      },
      { [sessionIdHeader]: newSessionId() },
    );
    const error = await opened(new WebSocket(url, { headers })).then(
      () => assert.fail("the upgrade was accepted"),
      (failure: unknown) => failure,
    );
    assert.ok(error instanceof RefusedUpgrade, String(error));
    assert.equal(error.status, 424);
    assert.equal(error.errorType, "RuntimeClientError");
    assert.match(error.body, /GET \/ws/);
  });
});

/** Sends an upgrade request as given, by hand, and reads what Berth answers (up to a close). */
async function rawUpgrade(url: string, headers: Record<string, string>): Promise<string> {
  const { hostname, port, pathname, search } = new URL(url);
  const socket = connectTcp(Number(port), hostname);
  await once(socket, "connect");
  const lines = [`GET ${pathname}${search} HTTP/1.1`, "Connection: Upgrade", "Upgrade: websocket"];
  for (const [name, value] of Object.entries(headers)) {
    if (!["connection", "upgrade"].includes(name.toLowerCase())) lines.push(`${name}: ${value}`);
  }
  socket.end(`${lines.join("\r\n")}\r\n\r\n`);
  let answer = "";
  for await (const chunk of socket as AsyncIterable<Buffer>) answer += chunk.toString("utf8");
  return answer;
}
