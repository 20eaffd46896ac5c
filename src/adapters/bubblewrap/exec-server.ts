import type { Socket } from "node:net";
import { constants } from "node:os";
import { Readable } from "node:stream";
import type { CommandOutput, SandboxExit } from "../../core/sandbox.ts";
import { isWindowSide, maxWindowSide } from "../../core/shell-channels.ts";
import { encodeEntries, encodeFrame, RootHelper } from "../host/root-helper.ts";

/** What native/berth-exec needs to start a program inside a sandbox. */
export interface ExecRequest {
  /** The sandbox's first process, in the host's pid namespace. */
  targetPid: number;
  uid: number;
  gid: number;
  cwd: string;
  cgroupProcsFiles: string[];
  environment: Record<string, string>;
  argv: string[];
}

export interface ExecHandle {
  output: Readable;
  exited: Promise<SandboxExit>;
}

/** A program on a terminal: see SandboxTerminal (core/sandbox.ts), which the driver builds on it. */
export interface TerminalHandle extends ExecHandle {
  /** Buffer chunks of what the terminal shows. */
  output: Readable;
  /** Resolves once the socket has taken the bytes (so a program that does not read its input
   * holds the caller); rejects once the connection is closed. */
  write: (bytes: Buffer) => Promise<void>;
  resize: (columns: number, rows: number) => void;
  /** Closes the connection, and with it the terminal (see SandboxTerminal.hangUp). */
  hangUp: () => void;
}

export interface WindowSize {
  columns: number;
  rows: number;
}

/** Output pieces buffered ahead of the reader before the socket pauses. Each is one read of a
 * pipe (at most 64 KiB) as output text: usually as long, at most six times (all \u00XX). */
const outputHighWaterMark = 16;
/** Terminal output bytes buffered ahead of the reader before the socket pauses (a terminal is
 * read a few KiB at a time). */
const terminalHighWaterMark = 64 * 1024;
/** The most berth-exec takes in one 'i' frame (native/terminal-relay.h). */
const maxTypedFrameBytes = 64 * 1024;

/**
 * The root helper that starts programs inside sandboxes (native/berth-exec; its header comment
 * has the protocol). One runs per driver; each command is one connection to it. It runs
 * commands only: mounts are RootMounts' (adapters/host/root-mounts.ts).
 */
export class ExecServer {
  private readonly helper: RootHelper;

  private constructor(helper: RootHelper) {
    this.helper = helper;
  }

  /** With `seccomp`, commands run under Berth's seccomp filter (native/seccomp-filter.h). */
  static async start(socketPath: string, options: { seccomp: boolean }): Promise<ExecServer> {
    const args = ["serve", socketPath, ...(options.seccomp ? [] : ["--no-seccomp"])];
    return new ExecServer(await RootHelper.start("berth-exec", args, socketPath));
  }

  /** Starts a program; rejects with the helper's reason if it could not start. */
  async run(request: ExecRequest): Promise<ExecHandle> {
    const socket = await this.helper.connect();
    socket.write(encodeFrame("r", encodeRequest(request)));
    const output = new Readable({
      objectMode: true,
      highWaterMark: outputHighWaterMark,
      read: () => {
        socket.resume();
      },
    });
    const reader = new FrameReader(socket, output, commandOutput);
    await reader.started;
    return { output, exited: reader.exited };
  }

  /**
   * Starts a program on a terminal of its own, made inside the sandbox (native/berth-exec.c);
   * rejects with the helper's reason if it could not start.
   */
  async openTerminal(request: ExecRequest, size: WindowSize): Promise<TerminalHandle> {
    requireWindowSize(size);
    const socket = await this.helper.connect();
    socket.write(encodeFrame("r", encodeRequest(request, [`tty=${size.columns}x${size.rows}`])));
    const output = new Readable({
      highWaterMark: terminalHighWaterMark,
      read: () => {
        socket.resume();
      },
    });
    const reader = new FrameReader(socket, output, terminalOutput);
    await reader.started;
    return {
      output,
      exited: reader.exited,
      write: (bytes) => typeInto(socket, bytes),
      resize: (columns, rows) => {
        requireWindowSize({ columns, rows });
        if (!socket.destroyed) socket.write(encodeFrame("w", Buffer.from(`${columns} ${rows}`)));
      },
      // The keeper holds the terminal's only master: with the connection it closes, and the
      // kernel hangs the terminal up (SIGHUP to the shell's session).
      hangUp: () => {
        reader.hangUp();
      },
    };
  }

  close(): Promise<void> {
    return this.helper.close();
  }
}

function encodeRequest(request: ExecRequest, extraEntries: string[] = []): Buffer {
  return encodeEntries([
    `target=${request.targetPid}`,
    `uid=${request.uid}`,
    `gid=${request.gid}`,
    `cwd=${request.cwd}`,
    ...request.cgroupProcsFiles.map((file) => `cgroup=${file}`),
    ...Object.entries(request.environment).map(([name, value]) => `env=${name}=${value}`),
    ...request.argv.map((word) => `arg=${word}`),
    ...extraEntries,
  ]);
}

function requireWindowSize({ columns, rows }: WindowSize): void {
  for (const [name, value] of [
    ["columns", columns],
    ["rows", rows],
  ] as const) {
    if (!isWindowSide(value))
      throw new RangeError(
        `a terminal's ${name} must be a whole number from 1 to ${maxWindowSide}, not ${String(value)}`,
      );
  }
}

/** Types bytes at the terminal, in frames berth-exec takes; resolves once the socket took them. */
function typeInto(socket: Socket, bytes: Buffer): Promise<void> {
  if (socket.destroyed) return Promise.reject(new Error("the terminal is closed"));
  if (bytes.length === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    for (let start = 0; start < bytes.length; start += maxTypedFrameBytes) {
      const frame = encodeFrame("i", bytes.subarray(start, start + maxTypedFrameBytes));
      const last = start + maxTypedFrameBytes >= bytes.length;
      // Callbacks run in order, each once its frame is in the kernel (or the socket failed).
      socket.write(frame, (error) => {
        if (error) reject(new Error(`the terminal is closed: ${error.message}`));
        else if (last) resolve();
      });
    }
  });
}

/** What an exec'd program's output frames become: its stdout and stderr as output text. */
function commandOutput(type: string, payload: Buffer[]): CommandOutput | undefined {
  if (type !== "o" && type !== "e") return undefined;
  return { stream: type === "o" ? "stdout" : "stderr", text: payload };
}

/** What a terminal's output frames become: the bytes it shows. */
function terminalOutput(type: string, payload: Buffer[]): Buffer | undefined {
  if (type !== "b") return undefined;
  return payload.length === 1 && payload[0] !== undefined ? payload[0] : Buffer.concat(payload);
}

/**
 * Turns the helper's frames into a started promise, an exit, and output pushed to a stream (each
 * output frame as `toChunk` makes it), the socket paused whenever the stream is full.
 */
class FrameReader {
  readonly started: Promise<void>;
  readonly exited: Promise<SandboxExit>;
  private readonly socket: Socket;
  private readonly output: Readable;
  private readonly toChunk: (type: string, payload: Buffer[]) => unknown;
  private readonly received = new ReceivedBytes();
  private settleStart: { resolve: () => void; reject: (error: Error) => void };
  private resolveExit: (exit: SandboxExit) => void = () => undefined;
  private finished = false;

  constructor(
    socket: Socket,
    output: Readable,
    toChunk: (type: string, payload: Buffer[]) => unknown,
  ) {
    this.socket = socket;
    this.output = output;
    this.toChunk = toChunk;
    this.exited = new Promise<SandboxExit>((resolve) => {
      this.resolveExit = resolve;
    });
    let settle: FrameReader["settleStart"] = { resolve: () => undefined, reject: () => undefined };
    this.started = new Promise<void>((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.settleStart = settle;
    socket.on("data", (chunk: Buffer) => {
      this.received.push(chunk);
      this.readFrames();
    });
    socket.on("error", (error) => {
      this.settleStart.reject(new Error(`berth-exec connection failed: ${error.message}`));
    });
    socket.on("close", () => {
      this.settleStart.reject(new Error("berth-exec closed the connection before the start"));
      this.finish({ code: null, signal: null });
    });
  }

  private readFrames(): void {
    while (this.received.length >= 5) {
      const header = this.received.peek(5);
      const length = header.readUInt32BE(1);
      if (this.received.length < 5 + length) return;
      this.received.take(5);
      const payload = this.received.take(length);
      const type = String.fromCharCode(header[0] ?? 0);
      const chunk = this.toChunk(type, payload);
      if (chunk !== undefined) {
        if (!this.output.push(chunk)) this.socket.pause();
        continue;
      }
      const message = Buffer.concat(payload).toString("utf8");
      if (type === "s") this.settleStart.resolve();
      else if (type === "f") this.settleStart.reject(new Error(message));
      else if (type === "x") {
        // The exit is the last frame: done now, not after the keeper has also exited.
        this.finish(parseExit(message));
        this.socket.destroy();
        return;
      }
    }
  }

  /** Ends the connection; the exit reads as a hang-up (SIGHUP) unless it had already come. */
  hangUp(): void {
    this.finish({ code: null, signal: "SIGHUP" });
    this.socket.destroy();
  }

  private finish(exit: SandboxExit): void {
    if (this.finished) return;
    this.finished = true;
    this.output.push(null);
    this.resolveExit(exit);
  }
}

function parseExit(text: string): SandboxExit {
  const [kind, number = ""] = text.split(" ");
  const value = Number(number);
  if (kind === "exit") return { code: value, signal: null };
  const name = Object.entries(constants.signals).find(([, signal]) => signal === value)?.[0];
  return { code: null, signal: name ?? `SIG${value}` };
}

/**
 * Bytes read from the helper, kept in the chunks they arrived in: a frame's payload is handed on
 * as slices of those chunks, never copied together.
 */
export class ReceivedBytes {
  length = 0;
  private chunks: Buffer[] = [];

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The first `count` bytes, without taking them. */
  peek(count: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= count) return first.subarray(0, count);
    // A header cut by a read (rare): join just its bytes into one chunk at the front.
    const joined = Buffer.concat(this.take(count));
    this.chunks.unshift(joined);
    this.length += joined.length;
    return joined;
  }

  /** Takes the first `count` bytes, as slices of the chunks they arrived in. */
  take(count: number): Buffer[] {
    const slices: Buffer[] = [];
    while (count > 0) {
      const first = this.chunks[0];
      if (first === undefined) break;
      const slice = first.subarray(0, count);
      slices.push(slice);
      count -= slice.length;
      this.length -= slice.length;
      if (slice.length === first.length) this.chunks.shift();
      else this.chunks[0] = first.subarray(slice.length);
    }
    return slices;
  }
}
