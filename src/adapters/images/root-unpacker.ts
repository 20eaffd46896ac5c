import { once } from "node:events";
import { Writable } from "node:stream";
import { Worker } from "node:worker_threads";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { ImageRootNeeds } from "../../core/sandbox.ts";

/** What the worker (root-unpacker-worker.ts) is started with. */
export interface UnpackerSettings {
  /** The folder to create and unpack into. */
  root: string;
  /** Largest unpacked image accepted (file contents and tar metadata). */
  maxImageBytes: number;
  /** Largest PAX or long-name member of a layer. */
  maxMetadataBytes: number;
  /** What the sandbox driver mounts over in a root: made to exist once the layers are in. */
  rootNeeds: ImageRootNeeds;
}

/** Messages to the worker, handled in the order they are sent. */
export type ToUnpacker =
  | { kind: "layer" }
  | { kind: "bytes"; bytes: Uint8Array }
  | { kind: "end-layer" }
  | { kind: "finish" }
  | { kind: "close" };

/** Its answers: one "taken" per "bytes", one answer to each "end-layer" and "finish". */
export type FromUnpacker =
  | { kind: "taken" }
  | { kind: "layer-done"; tarDigest: string }
  | { kind: "finished"; sizeBytes: number }
  | { kind: "failed"; message: string; problem: boolean };

/** Chunks sent ahead of the worker before the sender waits: enough to keep it busy. */
const maxChunksInFlight = 16;

/**
 * Writes an image root from its layers' tar streams on a worker thread. The writer's file calls
 * are synchronous (and an image may unpack to many gigabytes): on the main thread they would
 * hold up every request Berth serves until the image is done. Layers go through one at a
 * time: startLayer, its bytes, endLayer; then finish, and close in every case.
 */
export class RootUnpacker {
  private readonly worker: Worker;
  private readonly exited: Promise<unknown>;
  /** Why the unpack failed, once it has: every later call fails with it. */
  private failure: Error | undefined;
  private chunksInFlight = 0;
  /** The write waiting for the worker to take a chunk. */
  private resumeWriting: ((error?: Error) => void) | undefined;
  /** The endLayer or finish waiting for its answer. */
  private waitingAnswer:
    { resolve: (answer: FromUnpacker) => void; reject: (error: Error) => void } | undefined;

  constructor(settings: UnpackerSettings) {
    this.worker = new Worker(new URL("./root-unpacker-worker.ts", import.meta.url), {
      workerData: settings,
    });
    this.exited = once(this.worker, "exit");
    this.worker.on("message", (answer: FromUnpacker) => {
      this.receive(answer);
    });
    this.worker.on("error", (error: Error) => {
      this.fail(error);
    });
    this.worker.on("exit", () => {
      this.fail(new Error("the image unpacking worker exited"));
    });
  }

  /** Starts the next layer; returns where its uncompressed tar bytes go. */
  startLayer(): Writable {
    this.send({ kind: "layer" });
    return new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        this.sendBytes(chunk, done);
      },
    });
  }

  /** Ends the layer once the worker has applied all of it; resolves to its tar's digest. */
  async endLayer(): Promise<string> {
    const answer = await this.ask({ kind: "end-layer" });
    if (answer.kind !== "layer-done") throw unexpectedAnswer("end-layer", answer.kind);
    return answer.tarDigest;
  }

  /** Prepares the root for sandboxes (rootNeeds); resolves to the image's unpacked size in bytes. */
  async finish(): Promise<number> {
    const answer = await this.ask({ kind: "finish" });
    if (answer.kind !== "finished") throw unexpectedAnswer("finish", answer.kind);
    return answer.sizeBytes;
  }

  /** Stops the worker, once it has closed any file it was writing. */
  async close(): Promise<void> {
    this.send({ kind: "close" });
    await this.exited;
  }

  private sendBytes(chunk: Buffer, done: (error?: Error) => void): void {
    if (this.failure !== undefined) {
      done(this.failure);
      return;
    }
    // A copy of just these bytes, handed over without a second copy (a chunk may be a view of
    // a larger buffer, all of which posting it would copy).
    const bytes = new Uint8Array(chunk);
    this.worker.postMessage({ kind: "bytes", bytes } satisfies ToUnpacker, [bytes.buffer]);
    this.chunksInFlight += 1;
    if (this.chunksInFlight < maxChunksInFlight) done();
    else this.resumeWriting = done;
  }

  private ask(message: ToUnpacker): Promise<FromUnpacker> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waitingAnswer = { resolve, reject };
      this.send(message);
    });
  }

  private send(message: ToUnpacker): void {
    this.worker.postMessage(message);
  }

  private receive(answer: FromUnpacker): void {
    if (answer.kind === "taken") {
      this.chunksInFlight -= 1;
      const resume = this.resumeWriting;
      this.resumeWriting = undefined;
      resume?.();
    } else if (answer.kind === "failed") {
      this.fail(answer.problem ? new ArtifactProblem(answer.message) : new Error(answer.message));
    } else {
      const waiting = this.waitingAnswer;
      this.waitingAnswer = undefined;
      waiting?.resolve(answer);
    }
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const resume = this.resumeWriting;
    const waiting = this.waitingAnswer;
    this.resumeWriting = undefined;
    this.waitingAnswer = undefined;
    resume?.(this.failure);
    waiting?.reject(this.failure);
  }
}

/** The worker answered out of turn: a bug in this protocol, never a digest or size of zero. */
function unexpectedAnswer(asked: string, answered: string): Error {
  return new Error(`the image unpacking worker answered ${answered} to ${asked}`);
}
