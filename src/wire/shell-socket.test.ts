import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { after, describe, it } from "node:test";
import { WebSocketServer } from "ws";
import { MemoryMetadataStore } from "../adapters/memory/store.ts";
import { DirectoryVolumes } from "../adapters/volumes/directory-volumes.ts";
import { waitFor } from "../../test/support/agents.ts";
import { FakeTerminal } from "../../test/support/fake-terminal.ts";
import { runtimeRecord, storeRuntime, versionRecord } from "../../test/support/records.ts";
import { ShellTestClient } from "../../test/support/shell-client.ts";
import { RefusedUpgrade } from "../../test/support/websockets.ts";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import type { Sandbox, SandboxDriver, SandboxExit, TerminalOptions } from "../core/sandbox.ts";
import { SessionStorage } from "../core/session-storage.ts";
import { SessionManager } from "../core/sessions.ts";
import {
  encodeFrame,
  maxReceivedFrameBytes,
  maxSentFrameBytes,
  shellChannels,
  shellCloseCodes,
} from "../core/shell-channels.ts";
import type { ShellSettings } from "../core/shells.ts";
import { errorShapes } from "./error-status.ts";
import { parseRequestTarget } from "./http.ts";
import { matchPath } from "./operation.ts";
import { shellOperations } from "./shell-socket.ts";
import type { SocketOperation, SocketOperationInput } from "./socket-operation.ts";

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };
const runtime = runtimeRecord("agent-CCCCCCCCCC");
const version = versionRecord(runtime);
const sessionHeader = "x-amzn-bedrock-agentcore-runtime-session-id";

type TerminalMaker = (argv: string[], options: TerminalOptions) => FakeTerminal;

const echoingTerminal: TerminalMaker = (argv, options) =>
  new FakeTerminal(argv, options, { echo: true });

/** An echoing terminal that takes no typed byte until `typing` resolves (a busy program). */
class SlowTerminal extends FakeTerminal {
  private readonly typing: Promise<void>;

  constructor(argv: string[], options: TerminalOptions, typing: Promise<void>) {
    super(argv, options, { echo: true });
    this.typing = typing;
  }

  override write(bytes: Buffer): Promise<void> {
    return this.typing.then(() => super.write(bytes));
  }
}

/** A session's sandbox whose terminals echo what is typed; killing it ends them. */
function echoingSandbox(terminals: FakeTerminal[], newTerminal: TerminalMaker): Sandbox {
  let settle: (exit: SandboxExit) => void = () => undefined;
  const exited = new Promise<SandboxExit>((resolve) => (settle = resolve));
  return {
    name: "fake",
    agentEndpoint: { host: "127.0.0.1", port: 1 },
    exited,
    kill: () => {
      for (const terminal of terminals) terminal.exit({ code: null, signal: "SIGKILL" });
      settle({ code: null, signal: "SIGKILL" });
      return exited.then(() => undefined);
    },
    usage: () => Promise.resolve({ memoryBytes: undefined, processes: undefined }),
    exec: () => Promise.reject(new Error("no commands in this test")),
    openTerminal: (argv, options) => {
      const terminal = newTerminal(argv, options);
      terminals.push(terminal);
      return Promise.resolve(terminal);
    },
  };
}

/**
 * The shell operation behind a real HTTP server and `ws`, on a real SessionManager whose sandboxes
 * are fakes: the upgrade is routed and accepted as Berth's handler does, without authentication.
 */
async function startShellServer(
  overrides: Partial<ShellSettings> = {},
  heartbeatIntervalMs?: number,
  newTerminal: TerminalMaker = echoingTerminal,
) {
  const folder = mkdtempSync(join(tmpdir(), "berth-shell-socket-"));
  const store = new MemoryMetadataStore();
  await storeRuntime(store, runtime, version);
  const terminals: FakeTerminal[] = [];
  const driver: SandboxDriver = {
    volumeKinds: ["host-directory"],
    imageRootNeeds: { folders: [], files: [] },
    describe: () => "a test driver",
    close: () => Promise.resolve(),
    start: () => Promise.resolve(echoingSandbox(terminals, newTerminal)),
  };
  const sessions = new SessionManager({
    driver,
    storage: new SessionStorage({
      store,
      volumes: new DirectoryVolumes(join(folder, "volumes")),
      kinds: driver.volumeKinds,
      settings: { sizeBytes: 2 ** 20, retentionMs: 60_000 },
      log: quiet,
      now: () => new Date(),
      holder: "node-a",
    }),
    probe: () => Promise.resolve("Healthy"),
    plan: () =>
      Promise.resolve({
        filesystem: { kind: "code", codeDir: folder },
        command: ["agent"],
        environment: {},
        shell: "/bin/bash",
      }),
    log: quiet,
    settings: {
      region: "us-east-1",
      agentStartupTimeoutMs: 5_000,
      sweepIntervalMs: 60_000,
      pingTimeoutMs: 1_000,
      maxSessions: 8,
      agentLog: { bytesPerSecond: 1_000_000, burstBytes: 1_000_000 },
    },
  });
  const context: CoreContext = {
    store,
    region: "us-east-1",
    accountId: "123456789012",
    now: () => new Date(),
    prepareVersion: () => undefined,
    endSessions: () => Promise.resolve(),
    minLifecycleSeconds: 60,
  };
  const [operation] = shellOperations(context, sessions, {
    settings: {
      maxShellsPerRuntime: 10,
      replayBytes: 262_144,
      reconnectMs: 60_000,
      killGraceMs: 100,
      ...overrides,
    },
    log: quiet,
    ...(heartbeatIntervalMs === undefined ? {} : { heartbeatIntervalMs }),
  });
  assert.ok(operation !== undefined);
  const shutdown = new AbortController();
  const server = createServer();
  const failures: unknown[] = [];
  server.on("upgrade", (incoming, socket: Duplex, head: Buffer) => {
    serveUpgrade(operation, { incoming, socket, head }, shutdown.signal, failures);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const path = `/runtimes/${encodeURIComponent(runtime.arn)}/ws/shells`;
  return {
    sessions,
    terminals,
    failures,
    shutdown,
    url: (query: Record<string, string> = {}) =>
      `ws://127.0.0.1:${port}${path}?${new URLSearchParams(query).toString()}`,
    close: async () => {
      await sessions.close();
      await closeServer(server);
      rmSync(folder, { recursive: true, force: true });
    },
  };
}

/** Routes and accepts the upgrade as Berth's handler does; errors before accept() answer in HTTP. */
function serveUpgrade(
  operation: SocketOperation,
  raw: SocketOperationInput["raw"],
  shutdown: AbortSignal,
  failures: unknown[],
): void {
  const { incoming, socket, head } = raw;
  const sockets = new WebSocketServer({
    noServer: true,
    maxPayload: operation.maxMessageBytes,
    handleProtocols: (offered) => operation.protocols?.find((name) => offered.has(name)) ?? false,
  });
  let accepted = false;
  const target = parseRequestTarget(incoming.url ?? "/");
  const input: SocketOperationInput = {
    request: { method: "GET", ...target, headers: incoming.headers, requestId: randomUUID() },
    params: matchPath(operation.path, target.segments) ?? {},
    forwardedBy: undefined,
    accept: () =>
      new Promise((resolve) => {
        accepted = true;
        sockets.handleUpgrade(incoming, socket, head, resolve);
      }),
    shutdown,
    raw,
  };
  operation.handle(input).catch((error: unknown) => {
    if (accepted || !BerthError.isInstance(error)) {
      failures.push(error);
      socket.destroy();
      return;
    }
    const body = JSON.stringify({ message: error.message });
    socket.end(
      `HTTP/1.1 ${errorShapes[error.code].status} Refused\r\nx-amzn-errortype: ${error.code}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  });
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => {
    server.close(() => {
      resolve();
    });
  });
}

const newSession = () => `session-${randomUUID()}`;

describe("InvokeAgentRuntimeCommandShell over a WebSocket", () => {
  const servers: { close(): Promise<void> }[] = [];
  const start = async (...args: Parameters<typeof startShellServer>) => {
    const server = await startShellServer(...args);
    servers.push(server);
    return server;
  };
  after(async () => {
    await Promise.all(servers.map((server) => server.close()));
  });

  it("opens with a Running status, relays keys, resizes and heartbeats, and ends on a close frame", async () => {
    const server = await start();
    const session = newSession();
    const client = await ShellTestClient.open(server.url({ shellId: "first" }), {
      headers: { [sessionHeader]: session },
    });
    assert.equal(client.socket.protocol, "v5.channel.k8s.io");
    assert.deepEqual(await client.status(0), {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Running",
      shellId: "first",
      runtimeSessionId: session,
      reconnected: false,
    });
    client.type("echo hi\r");
    await client.until("echo hi\r");
    const terminal = server.terminals[0];
    assert.ok(terminal !== undefined);
    assert.deepEqual(terminal.argv, ["/bin/bash", "-l"]);
    assert.deepEqual(terminal.size, { columns: 80, rows: 24 });
    client.resize(120, 40);
    await waitFor("the resize", () => terminal.size?.columns === 120);
    assert.deepEqual(terminal.size, { columns: 120, rows: 40 });
    client.socket.send(encodeFrame(shellChannels.heartbeat, Buffer.from("beat")));
    assert.equal((await client.heartbeat(0)).toString(), "beat");
    client.hangUp();
    const { status, code } = await client.finalStatus();
    assert.equal(code, shellCloseCodes.ended);
    assert.equal(status?.reason, "NonZeroExitCode");
    assert.equal(status.exitCode, 129, "hung up: SIGHUP");
    assert.equal(terminal.hungUp, true);
    assert.deepEqual(terminal.terminations, [100]);
  });

  it("takes the session id from the query, and refuses an upgrade that names no session", async () => {
    const server = await start();
    const session = newSession();
    const fromQuery = await ShellTestClient.open(server.url({ [sessionHeader]: session }));
    assert.equal((await fromQuery.status(0)).runtimeSessionId, session);
    const refused = await ShellTestClient.open(server.url()).catch((error: unknown) => error);
    assert.ok(refused instanceof RefusedUpgrade);
    assert.equal(refused.status, 400);
    assert.equal(refused.errorType, "ValidationException");
  });

  it("sizes a new shell from ?width=&height=, and refuses bad sizes and shell ids before upgrading", async () => {
    const server = await start();
    const session = { headers: { [sessionHeader]: newSession() } };
    await ShellTestClient.open(server.url({ width: "132", height: "43" }), session);
    await waitFor("the terminal", () => server.terminals[0]);
    assert.deepEqual(server.terminals[0]?.size, { columns: 132, rows: 43 });
    for (const query of [
      { width: "132" },
      { width: "0", height: "24" },
      { width: "80", height: "abc" },
      { shellId: "../etc" },
    ]) {
      const refused = await ShellTestClient.open(server.url(query), session).catch(
        (error: unknown) => error,
      );
      assert.ok(refused instanceof RefusedUpgrade, JSON.stringify(query));
      assert.equal(refused.status, 400);
      assert.equal(refused.errorType, "ValidationException");
    }
  });

  it("reattaches after a drop: the replay, then live output, nothing twice, the shell kept", async () => {
    const server = await start();
    const options = { headers: { [sessionHeader]: newSession() } };
    const first = await ShellTestClient.open(server.url({ shellId: "kept" }), options);
    first.type("one\n");
    await first.until("one\n");
    await first.drop();
    const terminal = server.terminals[0];
    assert.ok(terminal !== undefined);
    terminal.output.write("two\n"); // written while no client is attached
    const again = await ShellTestClient.open(server.url({ shellId: "kept" }), options);
    assert.equal((await again.status(0)).reconnected, true);
    await again.until("one\ntwo\n");
    again.type("three\n");
    await again.until("three\n");
    assert.equal(again.text, "one\ntwo\nthree\n");
    assert.equal(server.terminals.length, 1, "the same shell, not a new one");
  });

  it("lets a second connection take the shell over; the first hears Replaced and closes with 4000", async () => {
    const server = await start();
    const options = { headers: { [sessionHeader]: newSession() } };
    const first = await ShellTestClient.open(server.url({ shellId: "shared" }), options);
    await first.status(0);
    const second = await ShellTestClient.open(server.url({ shellId: "shared" }), options);
    const { status, code } = await first.finalStatus();
    assert.equal(code, shellCloseCodes.replaced);
    assert.equal(status?.reason, "Replaced");
    second.type("still here\n");
    await second.until("still here\n");
  });

  it("refuses a shell past maxShellsPerRuntime with ServiceQuotaExceededException", async () => {
    const server = await start({ maxShellsPerRuntime: 2 });
    const options = { headers: { [sessionHeader]: newSession() } };
    await ShellTestClient.open(server.url({ shellId: "a" }), options);
    await ShellTestClient.open(server.url({ shellId: "b" }), options);
    const refused = await ShellTestClient.open(server.url({ shellId: "c" }), options).catch(
      (error: unknown) => error,
    );
    assert.ok(refused instanceof RefusedUpgrade);
    assert.equal(refused.status, 402);
    assert.equal(refused.errorType, "ServiceQuotaExceededException");
    assert.match(refused.body, /maxShellsPerRuntime/);
  });

  it("closes the shell with SessionEnded when its session is stopped", async () => {
    const server = await start();
    const session = newSession();
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: session },
    });
    await client.status(0);
    assert.equal(await server.sessions.stop(runtime.id, session), true);
    const { status, code } = await client.finalStatus();
    assert.equal(code, shellCloseCodes.ended);
    assert.equal(status?.reason, "SessionEnded");
    assert.match(status.message ?? "", /stopped by StopRuntimeSession/);
  });

  it("closes with ShuttingDown and 1001 when Berth shuts down", async () => {
    const server = await start();
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: newSession() },
    });
    await client.status(0);
    server.shutdown.abort();
    const { status, code } = await client.finalStatus();
    assert.equal(code, shellCloseCodes.goingAway);
    assert.equal(status?.reason, "ShuttingDown");
  });

  it("closes on a text frame (1003) or a frame over 64 KiB (1009), keeping the shell to reattach", async () => {
    const server = await start();
    const options = { headers: { [sessionHeader]: newSession() } };
    const texting = await ShellTestClient.open(server.url({ shellId: "t" }), options);
    texting.socket.send("ls");
    assert.equal((await texting.closed).code, shellCloseCodes.unsupportedData);
    const flooding = await ShellTestClient.open(server.url({ shellId: "t" }), options);
    assert.equal((await flooding.status(0)).reconnected, true);
    flooding.socket.send(Buffer.alloc(maxReceivedFrameBytes + 1));
    assert.equal((await flooding.closed).code, shellCloseCodes.tooBig);
    const again = await ShellTestClient.open(server.url({ shellId: "t" }), options);
    assert.equal((await again.status(0)).reconnected, true);
    // A payload of exactly 64 KiB is taken.
    again.socket.send(Buffer.concat([Buffer.from([0]), Buffer.alloc(65_536, "x")]));
    await again.until("x".repeat(65_536));
  });

  it("cuts off a client that stops answering pings; its shell waits for it to reconnect", async () => {
    const server = await start({}, 30);
    const options = { headers: { [sessionHeader]: newSession() } };
    const silent = await ShellTestClient.open(server.url({ shellId: "quiet" }), {
      ...options,
      autoPong: false,
    });
    assert.equal((await silent.closed).code, 1006, "dropped without a close handshake");
    const again = await ShellTestClient.open(server.url({ shellId: "quiet" }), options);
    assert.equal((await again.status(0)).reconnected, true);
  });

  it("echoes a heartbeat of the largest payload a client may send, cut to what a frame holds", async () => {
    const server = await start();
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: newSession() },
    });
    await client.status(0);
    const payload = Buffer.alloc(maxReceivedFrameBytes - 1, "h");
    client.socket.send(Buffer.concat([Buffer.of(shellChannels.heartbeat), payload]));
    const echo = await client.heartbeat(0);
    assert.deepEqual(echo, payload.subarray(0, maxSentFrameBytes - 1));
    client.type("still open\n");
    await client.until("still open\n");
    assert.deepEqual(server.failures, []);
  });

  it("stops echoing heartbeats to a client that does not read them", async () => {
    const server = await start();
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: newSession() },
    });
    await client.status(0);
    client.socket.pause();
    // 64 MiB of heartbeats: far more than the connection's kernel buffers take.
    const sent = 1024;
    const beat = encodeFrame(shellChannels.heartbeat, Buffer.alloc(65_535, "h"));
    for (let index = 1; index < sent; index += 1) client.socket.send(beat);
    await new Promise((resolve) => {
      client.socket.send(beat, resolve); // all of them out of this process
    });
    client.type("after the heartbeats\n"); // echoed by the terminal once they are all handled
    client.socket.resume();
    await client.until("after the heartbeats\n");
    assert.ok(client.heartbeats.length > 0, "echoed while the client's buffer had room");
    assert.ok(
      client.heartbeats.length < sent,
      `${client.heartbeats.length} of ${sent} heartbeats echoed to a client that read none`,
    );
  });

  it("does not take a client for gone while Berth itself has stopped reading it (typed input backs up)", async () => {
    let letTerminalType: () => void = () => undefined;
    const typing = new Promise<void>((resolve) => (letTerminalType = resolve));
    const server = await start({}, 20, (argv, options) => new SlowTerminal(argv, options, typing));
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: newSession() },
    });
    await client.status(0);
    // More than Berth holds untaken: it stops reading the socket, pongs included.
    client.type(Buffer.alloc(2 * 1024 * 1024, "k"));
    let pings = 0;
    client.socket.on("ping", () => (pings += 1));
    await waitFor(
      "ten heartbeat intervals of pings",
      () => pings >= 10 || client.socket.readyState !== client.socket.OPEN,
    );
    assert.equal(
      client.socket.readyState,
      client.socket.OPEN,
      "cut off while Berth was not reading it",
    );
    letTerminalType();
    client.type("\nawake\n");
    await client.until("awake\n");
  });

  it("stops reading the terminal while the client does not read, and loses nothing", async () => {
    const server = await start();
    const client = await ShellTestClient.open(server.url(), {
      headers: { [sessionHeader]: newSession() },
    });
    await client.status(0);
    const terminal = server.terminals[0];
    assert.ok(terminal !== undefined);
    client.socket.pause();
    const chunk = Buffer.alloc(256 * 1024, "0123456789abcdef");
    let written = 0;
    await waitFor("the shell to stop reading its terminal", () => {
      terminal.output.write(chunk);
      written += chunk.length;
      return terminal.output.isPaused();
    });
    client.socket.resume();
    await waitFor("every byte", () => client.stdoutBytes >= written, 60_000);
    assert.equal(client.stdoutBytes, written);
    assert.ok(client.output.equals(Buffer.alloc(written, "0123456789abcdef")));
    assert.deepEqual(server.failures, []);
  });
});
