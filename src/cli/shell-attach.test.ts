import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { PassThrough, Writable } from "node:stream";
import { after, before, describe, it } from "node:test";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import {
  closingStatus,
  decodeFrame,
  encodeFrame,
  encodeStatus,
  openedStatus,
  shellChannels,
  shellProtocol,
  type ShellChannel,
  type ShellFrame,
} from "../core/shell-channels.ts";
import {
  attachShell,
  exitCodeOf,
  ShellConnectionError,
  ShellEndedError,
  ShellHungUpError,
  type AttachOptions,
} from "./shell-attach.ts";
import { openShellSocket, ShellRefusedError, untilOpen } from "./shell-socket.ts";
import type { LocalTerminal, TerminalSize } from "./shell-terminal.ts";
import { sessionIdName } from "./shell-url.ts";

const sessionId = "conversation-0001-aaaaaaaaaaaaaaaaaaaa";
const runtimeArn = "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/my_agent-a1b2c3d4e5";

/** One connection to the fake server, frames received kept in order until taken. */
class FakeConnection {
  readonly socket: WebSocket;
  readonly request: IncomingMessage;
  private readonly frames: ShellFrame[] = [];
  private readonly waiters: (() => void)[] = [];

  constructor(socket: WebSocket, request: IncomingMessage) {
    this.socket = socket;
    this.request = request;
    socket.on("message", (data: RawData) => {
      const frame = decodeFrame(data as Buffer);
      if (frame === undefined) return;
      this.frames.push(frame);
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  /** The next frame received on `channel`, those of other channels before it dropped. */
  async nextFrame(channel: ShellChannel): Promise<Buffer> {
    for (;;) {
      const index = this.frames.findIndex((frame) => frame.channel === channel);
      if (index >= 0) {
        const [frame] = this.frames.splice(0, index + 1).slice(-1);
        return frame?.payload ?? Buffer.alloc(0);
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Stdin bytes until (and with) `last`, across frames. */
  async stdinUntil(last: number): Promise<{ bytes: Buffer; frameSizes: number[] }> {
    const chunks: Buffer[] = [];
    const frameSizes: number[] = [];
    for (;;) {
      const payload = await this.nextFrame(shellChannels.stdin);
      chunks.push(payload);
      frameSizes.push(payload.length + 1);
      if (payload.at(-1) === last) return { bytes: Buffer.concat(chunks), frameSizes };
    }
  }

  send(channel: ShellChannel, text: string): void {
    this.socket.send(encodeFrame(channel, Buffer.from(text)));
  }

  open(shellId: string, reconnected = false): void {
    this.socket.send(
      encodeStatus(openedStatus({ shellId, runtimeSessionId: sessionId, reconnected })),
    );
  }

  exit(shellId: string, exitCode: number): void {
    this.socket.send(encodeStatus(closingStatus(shellId, { kind: "exited", exitCode })));
    this.socket.close(1000);
  }
}

/**
 * A stand-in for Berth's shell endpoint: each upgrade is accepted as a FakeConnection, or refused
 * with an AWS error when one is queued. It checks nothing of the signature: this is the client's
 * contract test, the real server has its own.
 */
class FakeShellServer {
  readonly refusals: { status: number; json: Record<string, unknown> }[] = [];
  private readonly http: Server;
  private readonly sockets = new WebSocketServer({
    noServer: true,
    handleProtocols: (offered) => (offered.has(shellProtocol) ? shellProtocol : false),
  });
  private readonly arrived: FakeConnection[] = [];
  private readonly waiters: ((connection: FakeConnection) => void)[] = [];

  private constructor(http: Server) {
    this.http = http;
    http.on("upgrade", (request: IncomingMessage, socket: Socket, head: Buffer) => {
      const refusal = this.refusals.shift();
      if (refusal !== undefined) {
        const body = JSON.stringify(refusal.json);
        socket.end(
          `HTTP/1.1 ${String(refusal.status)} Refused\r\ncontent-type: application/json\r\ncontent-length: ${String(Buffer.byteLength(body))}\r\nconnection: close\r\n\r\n${body}`,
        );
        return;
      }
      this.sockets.handleUpgrade(request, socket, head, (websocket) => {
        const connection = new FakeConnection(websocket, request);
        const waiter = this.waiters.shift();
        if (waiter === undefined) this.arrived.push(connection);
        else waiter(connection);
      });
    });
  }

  static async start(): Promise<FakeShellServer> {
    const http = createServer();
    http.listen(0, "127.0.0.1");
    await once(http, "listening");
    return new FakeShellServer(http);
  }

  get endpoint(): string {
    return `http://127.0.0.1:${String((this.http.address() as AddressInfo).port)}`;
  }

  async nextConnection(): Promise<FakeConnection> {
    const connection = this.arrived.shift();
    if (connection !== undefined) return connection;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async close(): Promise<void> {
    for (const client of this.sockets.clients) client.terminate();
    this.sockets.close();
    this.http.closeAllConnections();
    this.http.close();
    await once(this.http, "close");
  }
}

/** A Writable that keeps what it is given and says when some text has arrived. */
class Collected extends Writable {
  text = "";
  private readonly waiters: { text: string; resolve: () => void }[] = [];

  constructor(options: { highWaterMark?: number; hold?: boolean } = {}) {
    super({ highWaterMark: options.highWaterMark ?? 16 * 1024 });
    this.holding = options.hold === true;
  }

  private holding: boolean;
  private held: (() => void)[] = [];

  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString("utf8");
    for (const waiter of [...this.waiters])
      if (this.text.includes(waiter.text)) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    if (this.holding) this.held.push(done);
    else done();
  }

  /** Lets writes held so far (and all later ones) complete. */
  release(): void {
    this.holding = false;
    for (const done of this.held.splice(0)) done();
  }

  async until(text: string): Promise<void> {
    if (this.text.includes(text)) return;
    await new Promise<void>((resolve) => this.waiters.push({ text, resolve }));
  }
}

interface FakeTerminal {
  terminal: LocalTerminal;
  input: PassThrough;
  output: Collected;
  errors: Collected;
  resize(size: TerminalSize): void;
}

function fakeTerminal(options: { interactive: boolean; output?: Collected }): FakeTerminal {
  const input = new PassThrough();
  const output = options.output ?? new Collected();
  const errors = new Collected();
  let size: TerminalSize = { width: 100, height: 30 };
  const listeners = new Set<() => void>();
  return {
    input,
    output,
    errors,
    terminal: {
      input,
      output,
      errors,
      interactive: options.interactive,
      size: () => size,
      onResize: (listener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
      enterRawMode: () => () => {},
    },
    resize: (next) => {
      size = next;
      for (const listener of listeners) listener();
    },
  };
}

let server: FakeShellServer;
before(async () => {
  server = await FakeShellServer.start();
});
after(async () => {
  await server.close();
});

/** Attaches `terminal` to the fake server with the CLI's own signed sockets. */
function attach(
  fake: FakeTerminal,
  extra: Partial<AttachOptions> = {},
): { exit: Promise<number>; sockets: WebSocket[] } {
  const sockets: WebSocket[] = [];
  const exit = attachShell({
    terminal: fake.terminal,
    name: "berth shell",
    reconnectDelaysMs: [0, 0],
    connect: async (shellId) => {
      const socket = await openShellSocket({
        endpoint: server.endpoint,
        region: "us-east-1",
        credentials: { accessKeyId: "AKIDSHELLTEST", secretAccessKey: "secret" },
        runtimeArn,
        sessionId,
        shellId,
      });
      sockets.push(socket);
      return socket;
    },
    ...extra,
  });
  return { exit, sockets };
}

describe("berth shell against a server speaking the shell protocol", () => {
  it("sends the window size first and keys as stdin; writes stdout and stderr apart; exits with the shell's code", async () => {
    const fake = fakeTerminal({ interactive: true });
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    assert.equal(connection.request.headers["sec-websocket-protocol"], shellProtocol);
    assert.equal(connection.request.headers[sessionIdName], sessionId);
    assert.match(String(connection.request.headers["authorization"]), /^AWS4-HMAC-SHA256 /);
    assert.equal(
      connection.request.url,
      `/runtimes/${encodeURIComponent(runtimeArn)}/ws/shells`,
      "a new shell: no shellId",
    );
    connection.open("shell-a");
    assert.deepEqual(JSON.parse((await connection.nextFrame(shellChannels.resize)).toString()), {
      width: 100,
      height: 30,
    });
    fake.input.write("ls\r");
    assert.equal((await connection.nextFrame(shellChannels.stdin)).toString(), "ls\r");
    connection.send(shellChannels.stdout, "out");
    connection.send(shellChannels.stderr, "err");
    connection.exit("shell-a", 7);
    assert.equal(await exit, 7);
    assert.equal(fake.output.text, "out");
    assert.equal(fake.errors.text, "err");
  });

  it("sends the new size when the window changes", async () => {
    const fake = fakeTerminal({ interactive: true });
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-b");
    await connection.nextFrame(shellChannels.resize);
    fake.resize({ width: 80, height: 24 });
    assert.deepEqual(JSON.parse((await connection.nextFrame(shellChannels.resize)).toString()), {
      width: 80,
      height: 24,
    });
    connection.exit("shell-b", 0);
    assert.equal(await exit, 0);
  });

  it("types the command first, then piped input, then Ctrl-D until the shell exits", async () => {
    const fake = fakeTerminal({ interactive: false });
    fake.input.end("echo hi\n");
    const { exit } = attach(fake, { firstInput: "exec python3\n", endOfInputRepeatMs: 5 });
    const connection = await server.nextConnection();
    connection.open("shell-c");
    const { bytes } = await connection.stdinUntil(0x04);
    assert.equal(bytes.toString(), "exec python3\necho hi\n\x04");
    // A Ctrl-D the terminal took as an empty line (bash not yet at its prompt) is typed again.
    assert.deepEqual(await connection.nextFrame(shellChannels.stdin), Buffer.of(0x04));
    assert.deepEqual(await connection.nextFrame(shellChannels.stdin), Buffer.of(0x04));
    connection.exit("shell-c", 0);
    assert.equal(await exit, 0);
  });

  it("ends a last piped line that has no newline, as a shell reading a file runs it", async () => {
    const fake = fakeTerminal({ interactive: false });
    fake.input.end("exit 3");
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-c2");
    const { bytes } = await connection.stdinUntil(0x04);
    assert.equal(bytes.toString(), "exit 3\n\x04");
    connection.exit("shell-c2", 3);
    assert.equal(await exit, 3);
  });

  it("splits input into frames of at most 64 KiB", async () => {
    const fake = fakeTerminal({ interactive: false });
    const typed = Buffer.alloc(150_000, "k");
    fake.input.end(typed);
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-d");
    const { bytes, frameSizes } = await connection.stdinUntil(0x04);
    assert.deepEqual(bytes, Buffer.concat([typed, Buffer.from("\n\x04")]));
    assert.ok(Math.max(...frameSizes) <= 65_536, `frames of ${frameSizes.join(", ")} bytes`);
    connection.exit("shell-d", 0);
    await exit;
  });

  it("reconnects to the same shell after the connection drops, says so, and goes on", async () => {
    const fake = fakeTerminal({ interactive: true });
    const { exit } = attach(fake);
    const first = await server.nextConnection();
    first.open("shell-e");
    first.send(shellChannels.stdout, "before ");
    await fake.output.until("before ");
    first.socket.terminate();
    const second = await server.nextConnection();
    assert.equal(
      new URL(second.request.url ?? "", "http://x").searchParams.get("shellId"),
      "shell-e",
    );
    second.open("shell-e", true);
    await second.nextFrame(shellChannels.resize);
    second.send(shellChannels.stdout, "after");
    second.exit("shell-e", 3);
    assert.equal(await exit, 3);
    assert.equal(fake.output.text, "before after");
    assert.match(fake.errors.text, /connection lost \(code 1006\); reconnecting to shell shell-e/);
    assert.match(fake.errors.text, /berth shell: reconnected to shell shell-e/);
  });

  it("stops reconnecting when Berth refuses the shell, with Berth's error", async () => {
    const fake = fakeTerminal({ interactive: false });
    const { exit } = attach(fake);
    const first = await server.nextConnection();
    first.open("shell-f");
    await first.nextFrame(shellChannels.resize);
    server.refusals.push({
      status: 404,
      json: { __type: "ResourceNotFoundException", message: "No shell shell-f in this session" },
    });
    first.socket.terminate();
    await assert.rejects(exit, (error: unknown) => {
      assert.ok(error instanceof ShellRefusedError);
      assert.equal(error.status, 404);
      assert.equal(error.name, "ResourceNotFoundException");
      assert.equal(error.message, "No shell shell-f in this session");
      return true;
    });
  });

  it("gives up after its tries, saying which shell to reattach to", async () => {
    const fake = fakeTerminal({ interactive: false });
    const { exit } = attach(fake);
    const first = await server.nextConnection();
    first.open("shell-g");
    await first.nextFrame(shellChannels.resize);
    for (let attempt = 0; attempt < 2; attempt += 1)
      server.refusals.push({ status: 503, json: { __type: "ServiceUnavailableException" } });
    first.socket.terminate();
    await assert.rejects(exit, (error: unknown) => {
      assert.ok(error instanceof ShellConnectionError);
      assert.match(error.message, /after 2 tries.*--shell-id shell-g/);
      return true;
    });
  });

  it("ends with Berth's reason when the shell ends without an exit code (the session stopped)", async () => {
    const fake = fakeTerminal({ interactive: true });
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-h");
    connection.socket.send(
      encodeStatus(closingStatus("shell-h", { kind: "sessionEnded", reason: "stopped" })),
    );
    connection.socket.close(1000);
    await assert.rejects(exit, new ShellEndedError("The session ended: stopped"));
  });

  it("does not reconnect when another connection took the shell over", async () => {
    const fake = fakeTerminal({ interactive: true });
    const { exit } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-i");
    await connection.nextFrame(shellChannels.resize);
    connection.socket.close(4000, "replaced");
    await assert.rejects(
      exit,
      new ShellConnectionError("Berth closed the shell (code 4000: replaced)"),
    );
  });

  it("hangs up on its signal: the close channel, then the socket closed", async () => {
    const fake = fakeTerminal({ interactive: true });
    const hangUp = new AbortController();
    const { exit } = attach(fake, { signal: hangUp.signal });
    const connection = await server.nextConnection();
    connection.open("shell-j");
    await connection.nextFrame(shellChannels.resize);
    hangUp.abort();
    await connection.nextFrame(shellChannels.close);
    await assert.rejects(exit, ShellHungUpError);
  });

  it("stops reading the socket while the terminal cannot take more output", async () => {
    const output = new Collected({ highWaterMark: 1, hold: true });
    const fake = fakeTerminal({ interactive: true, output });
    const { exit, sockets } = attach(fake);
    const connection = await server.nextConnection();
    connection.open("shell-k");
    connection.send(shellChannels.stdout, "slow");
    await output.until("slow");
    const [socket] = sockets;
    assert.equal(socket?.isPaused, true, "paused while the terminal is full");
    const drained = once(output, "drain");
    output.release();
    await drained;
    assert.equal(socket.isPaused, false, "reading again once it drained");
    connection.exit("shell-k", 0);
    assert.equal(await exit, 0);
  });

  it("does not drop the connection for silence while it is not reading it (the terminal is full)", async () => {
    const output = new Collected({ highWaterMark: 1, hold: true });
    const fake = fakeTerminal({ interactive: true, output });
    const { exit, sockets } = attach(fake, { probeIntervalMs: 20 });
    const connection = await server.nextConnection();
    connection.open("shell-m");
    connection.send(shellChannels.stdout, "slow");
    await output.until("slow");
    assert.equal(sockets[0]?.isPaused, true, "paused while the terminal is full");
    // This server answers no heartbeat, and whatever it sent would sit unread: probes only.
    const closed = once(connection.socket, "close").then(() => "closed" as const);
    for (let probe = 0; probe < 5; probe += 1) {
      const next = await Promise.race([connection.nextFrame(shellChannels.heartbeat), closed]);
      assert.notEqual(next, "closed", "dropped while its reading was paused");
    }
    connection.exit("shell-m", 0);
    output.release();
    assert.equal(await exit, 0);
    assert.equal(sockets.length, 1, "the same connection throughout");
  });

  it("probes a silent connection with heartbeats and reconnects when one goes unanswered", async () => {
    const fake = fakeTerminal({ interactive: false });
    const { exit } = attach(fake, { probeIntervalMs: 20 });
    const first = await server.nextConnection();
    first.open("shell-l");
    await first.nextFrame(shellChannels.heartbeat);
    // This server stays silent: the next probe finds nothing received and drops the connection.
    const second = await server.nextConnection();
    second.open("shell-l", true);
    second.exit("shell-l", 0);
    assert.equal(await exit, 0);
  });
});

describe("a refused upgrade", () => {
  it("rejects with the AWS error Berth answered", async () => {
    server.refusals.push({
      status: 403,
      json: { __type: "UnrecognizedClientException", message: "Unknown access key id" },
    });
    const socket = await openShellSocket({
      endpoint: server.endpoint,
      region: "us-east-1",
      credentials: { accessKeyId: "AKIDSHELLTEST", secretAccessKey: "secret" },
      runtimeArn,
      sessionId,
    });
    await assert.rejects(untilOpen(socket), (error: unknown) => {
      assert.ok(error instanceof ShellRefusedError);
      assert.equal(error.status, 403);
      assert.equal(error.name, "UnrecognizedClientException");
      return true;
    });
  });
});

describe("the exit code of a final status", () => {
  it("is exitCode, or Kubernetes' ExitCode cause, or 0 for a bare Success", () => {
    assert.equal(exitCodeOf(closingStatus("s", { kind: "exited", exitCode: 130 })), 130);
    assert.equal(
      exitCodeOf({
        kind: "Status",
        apiVersion: "v1",
        metadata: {},
        status: "Failure",
        shellId: "s",
        reason: "NonZeroExitCode",
        details: { causes: [{ reason: "ExitCode", message: "42" }] },
      }),
      42,
    );
    assert.equal(
      exitCodeOf({
        kind: "Status",
        apiVersion: "v1",
        metadata: {},
        status: "Success",
        shellId: "s",
      }),
      0,
    );
  });
});
