import type { Writable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import type { RawData, WebSocket } from "ws";
import {
  decodeFrame,
  encodeFrame,
  encodeFrames,
  encodeResize,
  messageBytes,
  parseStatus,
  shellChannels,
  shellCloseCodes,
  type ShellStatus,
} from "../core/shell-channels.ts";
import { ShellRefusedError, untilOpen } from "./shell-socket.ts";
import type { LocalTerminal } from "./shell-terminal.ts";

/** How the attachment waits before each try to reach the same shell again after a drop. */
const defaultReconnectDelaysMs: readonly number[] = [250, 500, 1000, 2000, 4000];
/** How often a silent connection is probed with a heartbeat; one probe unanswered drops it. */
const defaultProbeIntervalMs = 15_000;
/** Keys waiting in the socket's buffer past this pause the input until they are sent. */
const inputHighWaterBytes = 256 * 1024;
/** End of input, as Ctrl-D types it: a shell reading a terminal sees end of file. */
const endOfTransmission = Buffer.of(0x04);
/**
 * How often Ctrl-D is typed again after piped input ended, until the shell exits. Once is not
 * enough: a Ctrl-D that reaches the terminal while it is in canonical mode (before bash's
 * readline starts, or while a command runs) is taken as an empty line, not as end of file at
 * bash's prompt; the next one, typed while readline waits, ends the shell.
 */
const defaultEndOfInputRepeatMs = 500;

/**
 * Close codes after which trying again cannot help: a protocol mistake (one side's bug), or
 * another connection that took the shell over.
 */
const finalCloseCodes = new Set([1002, 1003, 1007, 1008, 1009, 1010, shellCloseCodes.replaced]);

export interface AttachOptions {
  terminal: LocalTerminal;
  /**
   * Starts opening the shell's socket (a new shell, or, given its id, the same one again) and
   * returns it still connecting, so no frame arrives before the listeners are in place.
   */
  connect(shellId: string | undefined): Promise<WebSocket>;
  /** Typed once the shell is open, before anything read from the input (a command's line). */
  firstInput?: string | undefined;
  reconnectDelaysMs?: readonly number[];
  probeIntervalMs?: number;
  endOfInputRepeatMs?: number;
  /** Hangs up from this side (a signal to the CLI): the shell is ended, the socket closed. */
  signal?: AbortSignal;
  /** How messages to the person start, e.g. "berth shell". */
  name: string;
}

/** The shell ended without an exit code of its own (its session stopped, Berth shut down...). */
export class ShellEndedError extends Error {}

/** The socket closed before the shell's end and could not be reopened. */
export class ShellConnectionError extends Error {}

/** The attachment was hung up from this side (options.signal) before the shell exited. */
export class ShellHungUpError extends Error {}

/** Attaches the terminal to a remote shell until the shell exits; resolves with its exit code. */
export async function attachShell(options: AttachOptions): Promise<number> {
  return new ShellAttachment(options).run();
}

interface Closing {
  code: number;
  reason: string;
}

class ShellAttachment {
  private readonly options: AttachOptions;
  private readonly terminal: LocalTerminal;
  private socket: WebSocket | undefined;
  private shellId: string | undefined;
  /** The status that ended the shell, once it came. */
  private final: ShellStatus | undefined;
  /** Input read while no socket was open, sent once one is. */
  private pendingInput: Buffer[] = [];
  private receivedSinceProbe = true;
  /**
   * Whether the socket's reading was paused (the terminal full) since the last probe: frames
   * then wait unread, so silence says nothing of the connection.
   */
  private pausedSinceProbe = false;

  constructor(options: AttachOptions) {
    this.options = options;
    this.terminal = options.terminal;
    // The command goes first, before any key or piped byte.
    if (options.firstInput !== undefined) this.pendingInput.push(Buffer.from(options.firstInput));
  }

  async run(): Promise<number> {
    const stopResize = this.terminal.onResize(() => {
      this.sendSize();
    });
    const stopInput = this.forwardInput();
    const hangUp = () => {
      this.hangUp();
    };
    this.options.signal?.addEventListener("abort", hangUp);
    const probing = setInterval(() => {
      this.probe();
    }, this.options.probeIntervalMs ?? defaultProbeIntervalMs);
    probing.unref();
    try {
      let connection = await this.connect(undefined);
      for (;;) {
        this.sendOpening();
        const closing = await connection.closed;
        if (this.final !== undefined) return exitCodeOf(this.final);
        if (this.hungUp()) throw new ShellHungUpError("hung up");
        if (finalCloseCodes.has(closing.code)) {
          throw new ShellConnectionError(`Berth closed the shell (${describeClose(closing)})`);
        }
        connection = await this.reconnect(closing);
      }
    } finally {
      clearInterval(probing);
      this.options.signal?.removeEventListener("abort", hangUp);
      stopInput();
      stopResize();
      this.socket?.terminate();
    }
  }

  /**
   * Opens a socket with its listeners in place before its first frame; resolves once it is
   * open with when it closes. Given up (the socket terminated) on options.signal.
   */
  private async connect(shellId: string | undefined): Promise<{ closed: Promise<Closing> }> {
    const { signal } = this.options;
    if (this.hungUp()) throw new ShellHungUpError("hung up");
    const socket = await this.options.connect(shellId);
    // Not events.once: that rejects on the socket's errors, and only the close matters here.
    const closed = new Promise<Closing>((resolve) => {
      socket.once("close", (code, reason) => {
        resolve({ code, reason: reason.toString("utf8") });
      });
    });
    socket.on("message", (data: RawData) => {
      this.receive(socket, messageBytes(data));
    });
    socket.on("error", () => {
      // The close that follows decides: reconnect, or report (untilOpen reports its own).
    });
    const onAbort = () => {
      socket.terminate();
    };
    signal?.addEventListener("abort", onAbort);
    try {
      await untilOpen(socket);
    } catch (error) {
      throw this.hungUp() ? new ShellHungUpError("hung up") : error;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    this.socket = socket;
    this.receivedSinceProbe = true;
    this.pausedSinceProbe = false;
    return { closed };
  }

  private hungUp(): boolean {
    return this.options.signal?.aborted === true;
  }

  /** On a new socket: the window's size, then input that waited for it. */
  private sendOpening(): void {
    this.sendSize();
    const pending = this.pendingInput;
    this.pendingInput = [];
    for (const chunk of pending) this.sendInput(chunk);
    this.terminal.input.resume();
  }

  private receive(socket: WebSocket, frame: Buffer): void {
    this.receivedSinceProbe = true;
    const decoded = decodeFrame(frame);
    if (decoded === undefined) return;
    switch (decoded.channel) {
      case shellChannels.stdout:
        this.write(socket, this.terminal.output, decoded.payload);
        break;
      case shellChannels.stderr:
        this.write(socket, this.terminal.errors, decoded.payload);
        break;
      case shellChannels.status:
        this.receiveStatus(decoded.payload);
        break;
      default:
        // Heartbeat answers (liveness is any frame at all), and channels not for a client.
        break;
    }
  }

  private receiveStatus(payload: Buffer): void {
    const status = parseStatus(payload);
    if (status === undefined) return;
    if (status.status !== "Running") {
      this.final = status;
      return;
    }
    const reattached = this.shellId !== undefined;
    this.shellId = status.shellId;
    if (!reattached) return;
    this.notice(
      status.reconnected === true
        ? `reconnected to shell ${status.shellId}`
        : `the shell was gone; this is a new one (${status.shellId})`,
    );
  }

  /** Output to the terminal; a terminal that cannot keep up stops the socket's reading. */
  private write(socket: WebSocket, stream: Writable, payload: Buffer): void {
    if (stream.write(payload)) return;
    socket.pause();
    this.pausedSinceProbe = true;
    stream.once("drain", () => {
      socket.resume();
    });
  }

  /**
   * Keys (or piped bytes) to the shell as stdin frames. At the end of piped input, the last line
   * is ended (as a shell reading a file runs a last line without a newline) and Ctrl-D typed
   * until the shell exits. Returns what stops reading.
   */
  private forwardInput(): () => void {
    const { input } = this.terminal;
    let lastByte: number | undefined;
    let endOfInput: NodeJS.Timeout | undefined;
    const onData = (chunk: Buffer | string) => {
      const bytes = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      lastByte = bytes.at(-1) ?? lastByte;
      this.sendInput(bytes);
    };
    const onEnd = () => {
      if (lastByte !== undefined && lastByte !== 0x0a && lastByte !== 0x0d)
        this.sendInput(Buffer.from("\n"));
      this.sendInput(endOfTransmission);
      endOfInput = setInterval(() => {
        // Only to a connected shell: repeats must not pile up while reconnecting.
        this.openSocket()?.send(encodeFrame(shellChannels.stdin, endOfTransmission));
      }, this.options.endOfInputRepeatMs ?? defaultEndOfInputRepeatMs);
    };
    input.on("data", onData);
    input.once("end", onEnd);
    return () => {
      clearInterval(endOfInput);
      input.off("data", onData);
      input.off("end", onEnd);
      input.pause();
    };
  }

  private sendInput(bytes: Buffer): void {
    const socket = this.openSocket();
    if (socket === undefined) {
      // Between sockets: kept for the next one, and no more read until then.
      this.pendingInput.push(bytes);
      this.terminal.input.pause();
      return;
    }
    const frames = encodeFrames(shellChannels.stdin, bytes);
    for (const [index, frame] of frames.entries()) {
      // Frames are written in order: once the last is, so is everything before it.
      const last = index === frames.length - 1;
      socket.send(
        frame,
        last
          ? () => {
              this.resumeInputAfter(socket);
            }
          : undefined,
      );
    }
    if (socket.bufferedAmount > inputHighWaterBytes) this.terminal.input.pause();
  }

  private resumeInputAfter(socket: WebSocket): void {
    if (this.socket === socket && socket.bufferedAmount <= inputHighWaterBytes)
      this.terminal.input.resume();
  }

  private sendSize(): void {
    const size = this.terminal.size();
    if (size !== undefined) this.openSocket()?.send(encodeResize(size));
  }

  /** Ends the shell (the close channel), as a terminal that goes away does. */
  private hangUp(): void {
    const socket = this.openSocket();
    socket?.send(encodeFrame(shellChannels.close));
    socket?.close(1000, "hung up");
  }

  /**
   * Drops a connection that stayed silent since the last probe (the network died without a
   * word), unless its reading was paused meanwhile; otherwise asks for an answer, a heartbeat
   * Berth echoes.
   */
  private probe(): void {
    const socket = this.openSocket();
    if (socket === undefined) return;
    if (!this.receivedSinceProbe && !this.pausedSinceProbe) {
      socket.terminate();
      return;
    }
    this.receivedSinceProbe = false;
    this.pausedSinceProbe = socket.isPaused;
    socket.send(encodeFrame(shellChannels.heartbeat));
  }

  private openSocket(): WebSocket | undefined {
    const socket = this.socket;
    return socket !== undefined && socket.readyState === socket.OPEN ? socket : undefined;
  }

  /** Reaches the same shell again after a drop, with backoff; throws if it cannot. */
  private async reconnect(closing: Closing): Promise<{ closed: Promise<Closing> }> {
    const shellId = this.shellId;
    if (shellId === undefined) {
      throw new ShellConnectionError(
        `the connection closed before the shell opened (${describeClose(closing)})`,
      );
    }
    const delays = this.options.reconnectDelaysMs ?? defaultReconnectDelaysMs;
    let lastError: unknown = undefined;
    for (const [attempt, delayMs] of delays.entries()) {
      this.notice(
        `connection lost (${describeClose(closing)}); reconnecting to shell ${shellId} (${attempt + 1}/${delays.length})`,
      );
      try {
        await delay(delayMs, undefined, { signal: this.options.signal });
        return await this.connect(shellId);
      } catch (error) {
        if (this.hungUp()) throw new ShellHungUpError("hung up");
        if (error instanceof ShellRefusedError && !retryable(error.status)) throw error;
        lastError = error;
      }
    }
    throw new ShellConnectionError(
      `could not reconnect to shell ${shellId} after ${delays.length} tries (${(lastError as Error).message}); it runs on for about 15 minutes: reattach with --shell-id ${shellId}`,
    );
  }

  private notice(text: string): void {
    // In raw mode the cursor may be anywhere on a line: start a new one.
    const start = this.terminal.interactive ? "\r\n" : "";
    this.terminal.errors.write(`${start}${this.options.name}: ${text}\r\n`);
  }
}

/**
 * The exit code a final status carries (`exitCode`, or Kubernetes' ExitCode cause); a status
 * without one (the session ended, Berth shut down) is an error that says why.
 */
export function exitCodeOf(status: ShellStatus): number {
  if (typeof status.exitCode === "number") return status.exitCode;
  // Kubernetes' own servers carry the code in a cause only.
  const cause = status.details?.causes.find(
    (candidate) => (candidate.reason as string) === "ExitCode",
  );
  if (cause !== undefined && /^\d+$/.test(cause.message)) return Number(cause.message);
  if (status.status === "Success") return 0;
  throw new ShellEndedError(status.message ?? `the shell ended (${status.reason ?? "Failure"})`);
}

/** Throttling and server-side failures pass; anything else Berth refuses stays refused. */
function retryable(status: number): boolean {
  return status === 429 || status >= 500;
}

function describeClose(closing: Closing): string {
  return closing.reason === "" ? `code ${closing.code}` : `code ${closing.code}: ${closing.reason}`;
}
