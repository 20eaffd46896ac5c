// A writer for benchmarks that stall writers: a process of its own (as an agent in its sandbox
// is) writing 4 KiB at a time into one file, in place, and keeping the longest any single write
// took. A durable writer (O_DSYNC: each write returns once on disk, as a database's commit does)
// also feels what holds the disk below the page cache.
//
// Not a thread of the benchmark: each program the benchmark starts copies its address space,
// which holds every other thread of the process that faults a page meanwhile (some 2-3 ms here).
// In the probe's process, the writing is a worker thread and the main thread answers the
// benchmark's messages, reading and resetting the longest write through shared memory, so the
// writer never waits for a message between writes.
import { fork } from "node:child_process";
import { once } from "node:events";
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { isMainThread, Worker, workerData } from "node:worker_threads";

const writeBytes = 4096;
/** The file's size: writes cycle over it, so it stays in the page cache. */
const fileBytes = 1024 * 1024;
/** A 100 µs pause every this many writes: the probe must not take a whole core from the work. */
const writesBetweenPauses = 64;
/** How long the probe's main thread waits for the writer to answer before deciding it is stuck. */
const answerTimeoutMs = 60_000;
/** The first argument of the probe's process, telling it from a benchmark importing this file. */
const probeMarker = "--write-latency-probe";

/** Int32 slots of the shared memory; after them, the longest write in ms as a Float64. */
const slot = {
  /** Set by the main thread: the writer ends. */
  stop: 0,
  /** Set by the main thread, cleared by the writer before its next write: longest starts over. */
  reset: 1,
  /** Never set: the writer's short pauses wait on it. */
  pause: 2,
  /** Set by the main thread, cleared by the writer once the write under way (if any) is counted. */
  settle: 3,
} as const;

interface ProbeMemory {
  flags: Int32Array;
  longestMs: Float64Array;
}

function probeMemory(buffer: SharedArrayBuffer): ProbeMemory {
  return { flags: new Int32Array(buffer, 0, 4), longestMs: new Float64Array(buffer, 16, 1) };
}

/** What the benchmark asks the probe's process, and what it answers. */
type Request = "reset" | "settle" | "stop";
interface Answer {
  longestWriteMs: number;
}

export interface WriteLatencyProbe {
  /**
   * Runs `work`; returns its result and the longest single write begun before it ended, in ms
   * (a write it held up is counted whole, also when it completes after the work).
   */
  during<T>(work: () => Promise<T>): Promise<{ result: T; longestWriteMs: number }>;
  stop(): Promise<void>;
}

export function startWriteLatencyProbe(
  file: string,
  options: { durable?: boolean } = {},
): WriteLatencyProbe {
  const mode = options.durable === true ? "durable" : "buffered";
  const child = fork(fileURLToPath(import.meta.url), [probeMarker, file, mode], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  // A benchmark that fails ends without waiting for its probe (which then loses its channel
  // and ends too).
  child.unref();
  child.channel?.unref();
  const ask = async (request: Request): Promise<Answer> => {
    // Listeners of this request only: the loser of the race is removed once it is decided.
    const settled = new AbortController();
    child.channel?.ref();
    try {
      const answered = once(child, "message", settled) as Promise<[Answer]>;
      child.send(request);
      const [answer] = await Promise.race([
        answered,
        once(child, "exit", settled).then(() => {
          throw new Error(`the write-latency probe for ${file} ended`);
        }),
      ]);
      return answer;
    } finally {
      settled.abort();
      child.channel?.unref();
    }
  };
  return {
    async during(work) {
      await ask("reset");
      const result = await work();
      const { longestWriteMs } = await ask("settle");
      return { result, longestWriteMs };
    },
    async stop() {
      child.ref();
      const exited = once(child, "exit");
      child.send("stop");
      await exited;
    },
  };
}

/** The probe's process: the writer in a worker, the benchmark's requests answered here. */
function serveProbe(file: string, durable: boolean): void {
  const buffer = new SharedArrayBuffer(24);
  const memory = probeMemory(buffer);
  const worker = new Worker(new URL(import.meta.url), { workerData: { file, buffer, durable } });
  const answer = (): void => {
    process.send?.({ longestWriteMs: memory.longestMs[0] ?? NaN } satisfies Answer);
  };
  process.on("message", (request: Request) => {
    if (request === "stop") {
      Atomics.store(memory.flags, slot.stop, 1);
      void once(worker, "exit").then(() => {
        process.disconnect();
      });
      return;
    }
    void requestAndWait(memory.flags, slot[request]).then(answer, (error: unknown) => {
      console.error(error);
      process.exit(1);
    });
  });
  // The benchmark gone (ended or failed): so is the probe.
  process.on("disconnect", () => {
    Atomics.store(memory.flags, slot.stop, 1);
  });
}

/** Sets a flag and waits, without spinning, until the writer clears it. */
async function requestAndWait(flags: Int32Array, index: number): Promise<void> {
  Atomics.store(flags, index, 1);
  const waiting = Atomics.waitAsync(flags, index, 1, answerTimeoutMs);
  const outcome = await waiting.value;
  if (outcome === "timed-out") {
    throw new Error(`the write-latency probe's writer did not answer within ${answerTimeoutMs} ms`);
  }
}

/** Clears a flag the main thread set, waking it. */
function answerFlag(flags: Int32Array, index: number): void {
  Atomics.store(flags, index, 0);
  Atomics.notify(flags, index);
}

function writeUntilStopped(file: string, memory: ProbeMemory, durable: boolean): void {
  const { flags, longestMs } = memory;
  const mode = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC;
  const fd = openSync(file, durable ? mode | constants.O_DSYNC : mode, 0o600);
  const block = Buffer.alloc(writeBytes, 1);
  for (let count = 0; Atomics.load(flags, slot.stop) === 0; count += 1) {
    // The previous write is counted: a settle asked for meanwhile is answered.
    if (Atomics.load(flags, slot.settle) === 1) answerFlag(flags, slot.settle);
    if (Atomics.load(flags, slot.reset) === 1) {
      longestMs[0] = 0;
      answerFlag(flags, slot.reset);
    }
    const started = performance.now();
    writeSync(fd, block, 0, writeBytes, (count * writeBytes) % fileBytes);
    longestMs[0] = Math.max(longestMs[0] ?? 0, performance.now() - started);
    if (count % writesBetweenPauses === 0) Atomics.wait(flags, slot.pause, 0, 0.1);
  }
  closeSync(fd);
}

if (!isMainThread) {
  const { file, buffer, durable } = workerData as {
    file: string;
    buffer: SharedArrayBuffer;
    durable: boolean;
  };
  writeUntilStopped(file, probeMemory(buffer), durable);
} else if (process.argv[2] === probeMarker) {
  serveProbe(process.argv[3] ?? "", process.argv[4] === "durable");
}
