import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { nativeBinary, type NativeBinary } from "./native-binaries.ts";

/**
 * One of Berth's native root servers, berth-exec or berth-mount (native/root-server.h says how
 * they serve): a child process listening on a root-only Unix socket, one connection per request.
 * Its stdin is a pipe Berth holds and never writes: its end tells the server Berth is gone. A
 * server that died is started again by the next request.
 */
export class RootHelper {
  private child: ChildProcess;
  private readonly name: NativeBinary;
  private readonly args: string[];
  private readonly socketPath: string;
  private closed = false;
  /** A restart in progress: concurrent callers share it rather than start servers of their own. */
  private restarting: Promise<void> | undefined;

  private constructor(child: ChildProcess, name: NativeBinary, args: string[], socketPath: string) {
    this.child = child;
    this.name = name;
    this.args = args;
    this.socketPath = socketPath;
  }

  /** Starts `name` with `args`, which make it listen on `socketPath`; resolves once it listens. */
  static async start(name: NativeBinary, args: string[], socketPath: string): Promise<RootHelper> {
    return new RootHelper(await startChild(name, args), name, args, socketPath);
  }

  /** A connection to the server, starting a new one first if the last one died. */
  async connect(): Promise<Socket> {
    if (this.closed) throw new Error(`${this.name} is shut down`);
    if (this.child.exitCode !== null || this.child.signalCode !== null) {
      this.restarting ??= startChild(this.name, this.args)
        .then((child) => {
          this.child = child;
        })
        .finally(() => {
          this.restarting = undefined;
        });
      await this.restarting;
    }
    return connect(this.socketPath);
  }

  /** Ends the server (closing its stdin) and waits for it to exit. */
  async close(): Promise<void> {
    this.closed = true;
    await this.restarting?.catch(() => undefined);
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, "exit");
    this.child.stdin?.end();
    await exited;
  }
}

async function startChild(name: NativeBinary, args: string[]): Promise<ChildProcess> {
  const child = spawn(nativeBinary(name), args, { stdio: ["pipe", "pipe", "pipe"], env: {} });
  const errors: string[] = [];
  child.stderr.on("data", (chunk: Buffer) => errors.push(chunk.toString("utf8")));
  // A dead server's pipe would keep Berth's event loop alive for nothing.
  child.once("exit", () => child.stdin.destroy());
  const exited = once(child, "exit").then(() => {
    throw new Error(`${name} failed to start: ${errors.join("").trim() || "no output"}`);
  });
  // Its "ready" line: it listens from then on.
  await Promise.race([once(child.stdout, "data"), exited]);
  child.stdout.resume();
  exited.catch(() => undefined);
  return child;
}

/** A frame as the root servers read and write them: [type: u8][length: u32 BE][payload]. */
export function encodeFrame(type: string, payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, "latin1");
  header.writeUInt32BE(payload.length, 1);
  return Buffer.concat([header, payload]);
}

/** key=value entries as the root servers parse them, each ending in NUL (native/request-frames.h). */
export function encodeEntries(entries: string[]): Buffer {
  for (const entry of entries) {
    if (entry.includes("\0")) throw new Error("a NUL character cannot be passed to a root helper");
  }
  return Buffer.from(entries.map((entry) => `${entry}\0`).join(""));
}
