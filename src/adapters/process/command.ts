import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { Readable } from "node:stream";
import type { CommandOutput, SandboxCommand, SandboxExit } from "../../core/sandbox.ts";
import { endGroup } from "./process-groups.ts";

/** Where and how the process driver runs a program: the agent's own folder and environment. */
export interface ProcessPlace {
  cwd: string;
  environment: Record<string, string>;
}

/**
 * Spawns a program in a process group of its own (detached), for its group to be ended as one.
 * Resolves once it runs; rejects, saying why, if it cannot start (no such program, ...).
 */
export async function spawnInGroup(
  argv: readonly string[],
  place: ProcessPlace,
  stdio: "ignore" | "pipe",
): Promise<ChildProcess & { pid: number }> {
  const [program, ...args] = argv;
  if (program === undefined) throw new Error("the command is empty");
  const child = spawn(program, args, {
    cwd: place.cwd,
    env: place.environment,
    detached: true,
    stdio: ["ignore", stdio, stdio],
  });
  try {
    await once(child, "spawn");
  } catch (error) {
    throw new Error(`${program} could not start: ${(error as Error).message}`, { cause: error });
  }
  if (child.pid === undefined) throw new Error(`${program} started without a pid`);
  return child as ChildProcess & { pid: number };
}

/** Output chunks held before the program's pipes are paused (object mode: pieces, not bytes). */
const outputHighWaterMark = 16;

/**
 * Sandbox.exec for the process driver: the program beside the agent, its output as bytes. As
 * with bubblewrap, the output ends once the program's own process has exited and what its pipes
 * already held is read: output that processes it left running write later is not waited for.
 */
export async function startCommand(
  argv: readonly string[],
  place: ProcessPlace,
  onGroup: (groupId: number) => void,
): Promise<SandboxCommand> {
  const child = await spawnInGroup(argv, place, "pipe");
  onGroup(child.pid);
  const output = new CommandOutputStream(child);
  const exit = new Promise<SandboxExit>((resolve) => {
    child.once("exit", (code, signal) => {
      resolve({ code, signal });
      output.programExited();
    });
  });
  // Settled with what it had written by then read (the pipes may close before or after).
  const exited = Promise.all([exit, output.finished]).then(([seen]) => seen);
  return {
    output: output.readable,
    exited,
    terminate: (graceMs) => endGroup(child.pid, graceMs),
  };
}

/**
 * A program's stdout and stderr as one object-mode stream of `{stream, bytes}` in the order
 * read. When the reader stops, both pipes are paused, so the program waits at its next write
 * once a pipe is full: nothing piles up in memory.
 */
class CommandOutputStream {
  readonly readable: Readable;
  /** Resolves when the output has ended. */
  readonly finished: Promise<void>;
  private readonly pipes: Readable[];
  private openPipes = 2;
  private ended = false;
  private readonly end: () => void;
  /** Set by each chunk read, so the end can tell when the pipes have gone quiet. */
  private readSinceCheck = false;
  /** Which check for quiet is the latest: an older one may have seen less. */
  private quietChecks = 0;
  private exited = false;

  constructor(child: ChildProcess) {
    const { stdout, stderr } = child;
    if (stdout === null || stderr === null) throw new Error("the command's pipes are missing");
    this.pipes = [stdout, stderr];
    this.readable = new Readable({
      objectMode: true,
      highWaterMark: outputHighWaterMark,
      read: () => {
        for (const pipe of this.pipes) pipe.resume();
        if (this.exited) this.endWhenQuiet();
      },
      destroy: (error, callback) => {
        for (const pipe of this.pipes) pipe.destroy();
        callback(error);
      },
    });
    let resolveFinished = (): void => undefined;
    this.finished = new Promise((resolve) => {
      resolveFinished = resolve;
    });
    this.end = () => {
      if (this.ended) return;
      this.ended = true;
      this.readable.push(null);
      resolveFinished();
    };
    this.forward("stdout", stdout);
    this.forward("stderr", stderr);
  }

  /** The program's own process is gone: end once what the pipes already hold is read. */
  programExited(): void {
    this.exited = true;
    this.endWhenQuiet();
  }

  private forward(stream: CommandOutput["stream"], pipe: Readable): void {
    pipe.on("data", (bytes: Buffer) => {
      this.readSinceCheck = true;
      if (this.ended) return;
      const piece: CommandOutput = { stream, bytes };
      if (!this.readable.push(piece)) for (const each of this.pipes) each.pause();
    });
    pipe.once("end", () => {
      this.openPipes -= 1;
      if (this.openPipes === 0) this.end();
    });
    pipe.once("error", (error) => {
      this.readable.destroy(error);
    });
  }

  /**
   * Ends the output after a whole turn of the event loop in which the flowing pipes gave
   * nothing: what was in them when the program exited has been read (Node reads a readable pipe
   * at each turn). Processes the program left running may hold the pipes open for good, so
   * their closing is not waited for; they are destroyed, as berth-exec closes its ends.
   */
  private endWhenQuiet(): void {
    if (this.ended || this.pipes.some((pipe) => pipe.isPaused())) return;
    this.readSinceCheck = false;
    const check = ++this.quietChecks;
    // The first setImmediate runs in this turn's check phase, the second in the next turn's:
    // between them lies one whole poll phase, where any bytes waiting in a pipe are read.
    setImmediate(() => {
      setImmediate(() => {
        if (check !== this.quietChecks || this.ended) return;
        // Paused by a full reader: read() checks again once it wants more.
        if (this.pipes.some((pipe) => pipe.isPaused())) return;
        if (this.readSinceCheck) {
          this.endWhenQuiet();
          return;
        }
        this.end();
        for (const pipe of this.pipes) pipe.destroy();
      });
    });
  }
}
