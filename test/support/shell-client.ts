import { WebSocket, type ClientOptions, type RawData } from "ws";
import {
  decodeFrame,
  encodeFrame,
  encodeFrames,
  encodeResize,
  messageBytes,
  parseStatus,
  shellChannels,
  shellProtocol,
  type ShellStatus,
} from "../../src/core/shell-channels.ts";
import { opened } from "./websockets.ts";

/** How long a wait for something to arrive may take before it fails, saying what it waited for. */
const waitBoundMs = 20_000;

/**
 * A shell connection as a test drives it: keys in, the terminal's text and the status frames
 * out, with waits on what arrives (never on time). Output is kept as bytes and as text.
 */
export class ShellTestClient {
  readonly socket: WebSocket;
  readonly statuses: ShellStatus[] = [];
  readonly heartbeats: Buffer[] = [];
  /** Every stdout byte so far. */
  stdoutBytes = 0;
  /** The close code and reason, once the socket is closed. */
  readonly closed: Promise<{ code: number; reason: string }>;
  private chunks: Buffer[] = [];
  private waiters: (() => void)[] = [];

  private constructor(socket: WebSocket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => {
      socket.once("close", (code: number, reason: Buffer) => {
        resolve({ code, reason: reason.toString("utf8") });
        this.wake();
      });
    });
    socket.on("message", (data: RawData, isBinary: boolean) => {
      if (isBinary) this.receive(messageBytes(data));
    });
  }

  /** Opens a socket (the upgrade signed or not, as the URL and headers say) and waits for it. */
  static async open(
    url: string,
    options: ClientOptions & { protocols?: string[] } = {},
  ): Promise<ShellTestClient> {
    const { protocols = [shellProtocol], ...rest } = options;
    const socket = new WebSocket(url, protocols, rest);
    // Listening from the first moment: the server's first frames may arrive with the handshake.
    const client = new ShellTestClient(socket);
    await opened(socket);
    return client;
  }

  /** All stdout so far, as text. */
  get text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }

  get output(): Buffer {
    return Buffer.concat(this.chunks);
  }

  type(text: string | Buffer): void {
    for (const frame of encodeFrames(shellChannels.stdin, Buffer.from(text)))
      this.socket.send(frame);
  }

  resize(width: number, height: number): void {
    this.socket.send(encodeResize({ width, height }));
  }

  hangUp(): void {
    this.socket.send(encodeFrame(shellChannels.close));
  }

  /** Resolves once stdout (as text) matches, or rejects once the socket closed without it. */
  async until(expected: string | RegExp, from = 0): Promise<string> {
    const found = () => {
      const text = this.text.slice(from);
      return typeof expected === "string" ? text.includes(expected) : expected.test(text);
    };
    await this.waitFor(
      found,
      () => `stdout to show ${String(expected)}; it shows ${JSON.stringify(this.text.slice(-400))}`,
    );
    return this.text;
  }

  /** Resolves with the n-th status frame (0: the first) once it has arrived. */
  async status(index: number): Promise<ShellStatus> {
    await this.waitFor(
      () => this.statuses.length > index,
      () => `status frame ${index}; got ${JSON.stringify(this.statuses)}`,
    );
    return this.statuses[index] as ShellStatus;
  }

  /** The status that ended the connection, once it is closed. */
  async finalStatus(): Promise<{ status: ShellStatus | undefined; code: number }> {
    const { code } = await this.closed;
    const last = this.statuses.at(-1);
    return { status: last?.status === "Running" ? undefined : last, code };
  }

  async heartbeat(index: number): Promise<Buffer> {
    await this.waitFor(
      () => this.heartbeats.length > index,
      () => `heartbeat ${index}`,
    );
    return this.heartbeats[index] as Buffer;
  }

  /** Drops the connection without a close frame or a WebSocket close: as a network failure does. */
  drop(): Promise<{ code: number; reason: string }> {
    this.socket.terminate();
    return this.closed;
  }

  private receive(frame: Buffer): void {
    const decoded = decodeFrame(frame);
    if (decoded === undefined) return;
    if (decoded.channel === shellChannels.stdout || decoded.channel === shellChannels.stderr) {
      this.chunks.push(Buffer.from(decoded.payload));
      this.stdoutBytes += decoded.payload.length;
    } else if (decoded.channel === shellChannels.status) {
      const status = parseStatus(decoded.payload);
      if (status !== undefined) this.statuses.push(status);
    } else if (decoded.channel === shellChannels.heartbeat) {
      this.heartbeats.push(Buffer.from(decoded.payload));
    }
    this.wake();
  }

  /** Waits for what arrives to meet the condition: rejects once the socket closed or the bound passed. */
  private async waitFor(condition: () => boolean, describe: () => string): Promise<void> {
    const deadline = Date.now() + waitBoundMs;
    while (!condition()) {
      if (this.socket.readyState === WebSocket.CLOSED) {
        throw new Error(`the shell socket closed while waiting for ${describe()}`);
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`timed out waiting for ${describe()}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
