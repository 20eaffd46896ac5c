import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { constants } from "node:os";
import { Readable } from "node:stream";
import type { CommandOutput, SandboxExit, SandboxIdentity } from "../../core/sandbox.ts";
import { nativeBinary } from "./native-binaries.ts";

export interface ImageRootRequest {
  root: string;
  inside: SandboxIdentity;
  hostId: number;
  scratch: string;
  sizeBytes: number;
  target: string;
}

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

/** Output pieces buffered ahead of the reader before the socket pauses. Each is one read of a
 * pipe (at most 64 KiB) as output text: usually as long, at most six times (all \u00XX). */
const outputHighWaterMark = 16;

/**
 * The root helper that starts programs inside sandboxes (native/berth-exec; its header comment
 * has the protocol). One runs per driver; each command is one connection to it.
 */
export class ExecServer {
  private helper: ChildProcess;
  private readonly socketPath: string;
  private readonly seccomp: boolean;
  private closed = false;
  /** A restart in progress: concurrent callers share it rather than start helpers of their own. */
  private restarting: Promise<void> | undefined;

  private constructor(helper: ChildProcess, socketPath: string, seccomp: boolean) {
    this.helper = helper;
    this.socketPath = socketPath;
    this.seccomp = seccomp;
  }

  /** With `seccomp`, commands run under Berth's seccomp filter (native/seccomp-filter.h). */
  static async start(socketPath: string, options: { seccomp: boolean }): Promise<ExecServer> {
    const helper = await startHelper(socketPath, options.seccomp);
    return new ExecServer(helper, socketPath, options.seccomp);
  }

  /** Starts a program; rejects with the helper's reason if it could not start. */
  async run(request: ExecRequest): Promise<ExecHandle> {
    const socket = await this.connect();
    socket.write(encodeFrame("r", encodeRequest(request)));
    const reader = new FrameReader(socket);
    return reader.started;
  }

  /**
   * Mounts a copy of the mount at `source` on `target`, its ids mapped through the user namespace
   * `usernsFile` (see idmap_mount in native/berth-exec.c).
   */
  idmapMount(source: string, target: string, usernsFile: string): Promise<void> {
    return this.mountRequest(`source=${source}\0target=${target}\0userns=${usernsFile}\0`);
  }

  /**
   * Makes `directory` a shared mount point: a sandbox whose mount namespace is copied from the
   * host's after this receives what is mounted below it later (its volumes).
   */
  shareMountPoint(directory: string): Promise<void> {
    return this.mountRequest(`share=${directory}\0`);
  }

  /**
   * Mounts an image sandbox's root on `target`: the unpacked image at `root`, read-only, its
   * `inside` user's files owned by `hostId`, under a writable tmpfs layer of `sizeBytes` at
   * `scratch` (see image_root in native/berth-exec.c).
   */
  imageRoot(request: ImageRootRequest): Promise<void> {
    const ids = `${request.inside.uid}:${request.inside.gid}:${request.hostId}`;
    return this.mountRequest(
      `root=${request.root}\0ids=${ids}\0scratch=${request.scratch}\0size=${request.sizeBytes}\0target=${request.target}\0`,
    );
  }

  /** Unmounts `directory`, lazily if it is busy (see unmount_folder in native/berth-exec.c). */
  unmount(directory: string): Promise<void> {
    return this.mountRequest(`unmount=${directory}\0`);
  }

  /** Mounts an ext4 image on `target` through a loop device that detaches itself at unmount. */
  mountImage(image: string, target: string): Promise<void> {
    return this.mountRequest(`image=${image}\0target=${target}\0`);
  }

  private async mountRequest(payloadText: string): Promise<void> {
    const socket = await this.connect();
    socket.end(encodeFrame("m", Buffer.from(payloadText)));
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    await once(socket, "close");
    const answer = Buffer.concat(chunks);
    const message = answer.subarray(5).toString("utf8");
    if (answer.subarray(0, 1).toString("latin1") !== "x" || message !== "exit 0")
      throw new Error(`berth-exec: ${message || "no answer"}`);
  }

  /** A connection to the helper, starting a new one first if the last one died. */
  private async connect(): Promise<Socket> {
    if (this.closed) throw new Error("the sandbox driver is shut down");
    if (this.helper.exitCode !== null || this.helper.signalCode !== null) {
      this.restarting ??= startHelper(this.socketPath, this.seccomp)
        .then((helper) => {
          this.helper = helper;
        })
        .finally(() => {
          this.restarting = undefined;
        });
      await this.restarting;
    }
    return connect(this.socketPath);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.restarting?.catch(() => undefined);
    if (this.helper.exitCode !== null || this.helper.signalCode !== null) return;
    const exited = once(this.helper, "exit");
    this.helper.stdin?.end();
    await exited;
  }
}

async function startHelper(socketPath: string, seccomp: boolean): Promise<ChildProcess> {
  // stdin stays an open pipe that Berth never writes: its end tells the helper Berth is gone.
  const args = ["serve", socketPath, ...(seccomp ? [] : ["--no-seccomp"])];
  const helper = spawn(nativeBinary("berth-exec"), args, {
    stdio: ["pipe", "pipe", "pipe"],
    env: {},
  });
  const errors: string[] = [];
  helper.stderr.on("data", (chunk: Buffer) => errors.push(chunk.toString("utf8")));
  // A dead helper's pipe would keep Berth's event loop alive for nothing.
  helper.once("exit", () => helper.stdin.destroy());
  const exited = once(helper, "exit").then(() => {
    throw new Error(`berth-exec failed to start: ${errors.join("").trim() || "no output"}`);
  });
  await Promise.race([once(helper.stdout, "data"), exited]);
  helper.stdout.resume();
  exited.catch(() => undefined);
  return helper;
}

function encodeRequest(request: ExecRequest): Buffer {
  const entries = [
    `target=${request.targetPid}`,
    `uid=${request.uid}`,
    `gid=${request.gid}`,
    `cwd=${request.cwd}`,
    ...request.cgroupProcsFiles.map((file) => `cgroup=${file}`),
    ...Object.entries(request.environment).map(([name, value]) => `env=${name}=${value}`),
    ...request.argv.map((word) => `arg=${word}`),
  ];
  for (const entry of entries) {
    if (entry.includes("\0")) throw new Error("a NUL character cannot be passed to a program");
  }
  return Buffer.from(`${entries.join("\0")}\0`);
}

function encodeFrame(type: string, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, "latin1");
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** Turns the helper's frames into a started promise, an output stream and an exit. */
class FrameReader {
  readonly started: Promise<ExecHandle>;
  private readonly socket: Socket;
  private readonly output: Readable;
  private readonly received = new ReceivedBytes();
  private settleStart: { resolve: (handle: ExecHandle) => void; reject: (error: Error) => void };
  private resolveExit: (exit: SandboxExit) => void = () => undefined;
  private finished = false;

  constructor(socket: Socket) {
    this.socket = socket;
    this.output = new Readable({
      objectMode: true,
      highWaterMark: outputHighWaterMark,
      read: () => {
        socket.resume();
      },
    });
    const exited = new Promise<SandboxExit>((resolve) => {
      this.resolveExit = resolve;
    });
    let settle: FrameReader["settleStart"] = { resolve: () => undefined, reject: () => undefined };
    this.started = new Promise<ExecHandle>((resolve, reject) => {
      settle = { resolve, reject };
    });
    this.settleStart = settle;
    const handle = { output: this.output, exited };
    socket.on("data", (chunk: Buffer) => {
      this.received.push(chunk);
      this.readFrames(handle);
    });
    socket.on("error", (error) => {
      this.settleStart.reject(new Error(`berth-exec connection failed: ${error.message}`));
    });
    socket.on("close", () => {
      this.settleStart.reject(new Error("berth-exec closed the connection before the start"));
      this.finish({ code: null, signal: null });
    });
  }

  private readFrames(handle: ExecHandle): void {
    while (this.received.length >= 5) {
      const header = this.received.peek(5);
      const length = header.readUInt32BE(1);
      if (this.received.length < 5 + length) return;
      this.received.take(5);
      const payload = this.received.take(length);
      const type = String.fromCharCode(header[0] ?? 0);
      if (type === "o" || type === "e") {
        const output: CommandOutput = { stream: type === "o" ? "stdout" : "stderr", text: payload };
        if (!this.output.push(output)) this.socket.pause();
        continue;
      }
      const message = Buffer.concat(payload).toString("utf8");
      if (type === "s") this.settleStart.resolve(handle);
      else if (type === "f") this.settleStart.reject(new Error(message));
      else if (type === "x") {
        // The exit is the last frame: done now, not after the keeper has also exited.
        this.finish(parseExit(message));
        this.socket.destroy();
        return;
      }
    }
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
