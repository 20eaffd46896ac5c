import { constants } from "node:os";
import type { Readable } from "node:stream";
import { BerthError } from "./errors.ts";
import { InputReader } from "./input-reader.ts";
import { CommandOutputEncoder } from "./output-encoder.ts";
import { outputTextLength, type OutputText } from "./output-text.ts";
import type { CommandOutput, SandboxCommand, SandboxExit } from "./sandbox.ts";
import type { SessionLease } from "./sessions.ts";

export const commandLimits = {
  maxCommandLength: 65_536,
  minTimeoutSeconds: 1,
  maxTimeoutSeconds: 3600,
  defaultTimeoutSeconds: 300,
} as const;

export interface CommandRequest {
  command: string;
  timeoutSeconds: number;
}

/** The events of InvokeAgentRuntimeCommand's stream, as the SDK models them. */
export type CommandEvent =
  | { contentStart: Record<string, never> }
  | { contentDelta: { stdout: OutputText } | { stderr: OutputText } }
  | { contentStop: { exitCode: number; status: "COMPLETED" | "TIMED_OUT" } };

/** Where a command's events go; the wire layer encodes them. */
export interface CommandEventSink {
  /** False when the receiver is full: wait for drained() before sending more. */
  send(event: CommandEvent): boolean;
  drained(): Promise<void>;
  /** Sends the stream's last event and ends the stream with it (one write, not two). */
  end(last: CommandEvent): void;
}

export interface CommandOutcome {
  exitCode: number;
  status: "COMPLETED" | "TIMED_OUT";
  durationMs: number;
}

/** Reads `{command, timeout}`, reporting every problem at once. */
export function readCommandRequest(body: Record<string, unknown>): CommandRequest {
  const reader = new InputReader();
  const command = reader.requiredString(body["command"], "command", {
    minLength: 1,
    maxLength: commandLimits.maxCommandLength,
  });
  if (command?.includes("\0")) reader.problem("command", "must not contain a NUL character");
  const timeoutSeconds = reader.integer(
    body["timeout"],
    "timeout",
    commandLimits.minTimeoutSeconds,
    commandLimits.maxTimeoutSeconds,
  );
  reader.throwIfProblems();
  return {
    command: command ?? "",
    timeoutSeconds: timeoutSeconds ?? commandLimits.defaultTimeoutSeconds,
  };
}

/**
 * One InvokeAgentRuntimeCommand: `bash -c` in the session's sandbox, its output streamed as
 * events while it runs, ended by its exit or its timeout. On timeout every process it started
 * gets SIGTERM, then SIGKILL after the grace period, and the stream ends once all are gone. A
 * receiver that has gone does not stop it: the command runs to its end (or timeout) with its
 * output discarded. A command killed because its session ended (StopRuntimeSession, a lifetime,
 * Berth shutting down) ends with an error that says so, never with an ordinary contentStop.
 */
export class CommandRun {
  private readonly lease: SessionLease;
  private readonly command: SandboxCommand;
  private readonly request: CommandRequest;
  private readonly killGraceMs: number;
  private readonly startedAt = performance.now();

  private constructor(
    lease: SessionLease,
    command: SandboxCommand,
    request: CommandRequest,
    killGraceMs: number,
  ) {
    this.lease = lease;
    this.command = command;
    this.request = request;
    this.killGraceMs = killGraceMs;
  }

  static async start(
    lease: SessionLease,
    request: CommandRequest,
    options: { killGraceMs: number },
  ): Promise<CommandRun> {
    let command: SandboxCommand;
    try {
      command = await lease.exec([lease.shell, "-c", request.command]);
    } catch (error) {
      throw new BerthError(
        "RuntimeClientError",
        `The command could not start in the session: ${(error as Error).message}`,
        { cause: error },
      );
    }
    return new CommandRun(lease, command, request, options.killGraceMs);
  }

  /**
   * Streams the command's events until it ends. When `signal` aborts (Berth is shutting down),
   * streaming stops at once and its reason is thrown, for the caller to end the stream with.
   */
  async streamTo(
    sink: CommandEventSink,
    options: { signal?: AbortSignal } = {},
  ): Promise<CommandOutcome> {
    const { signal } = options;
    let sessionEnded: string | undefined;
    void this.lease.ended.then((reason) => {
      sessionEnded = reason;
    });
    let terminated: Promise<void> | undefined;
    const timeoutTimer = setTimeout(() => {
      terminated = this.command.terminate(this.killGraceMs);
    }, this.request.timeoutSeconds * 1000);
    try {
      await send(sink, { contentStart: {} }, signal);
      await relayOutput(this.command.output, sink, signal);
      const exit = await unlessAborted(this.command.exited, signal);
      const timedOut = terminated !== undefined;
      // The stream ends only once every process the command started is gone.
      await unlessAborted(Promise.resolve(terminated), signal);
      // A command killed by a signal (or whose exit went unseen) may have died with its session,
      // which kills every process in it: the session's end is seen after the command's.
      if (!timedOut && exit.code === null) sessionEnded ??= await this.lease.endReasonSoon();
      if (sessionEnded !== undefined && !timedOut) {
        throw new BerthError(
          "RuntimeClientError",
          `The session ended while the command ran: ${sessionEnded}`,
        );
      }
      const outcome: CommandOutcome = {
        exitCode: exitCode(exit),
        status: timedOut ? "TIMED_OUT" : "COMPLETED",
        durationMs: Math.round(performance.now() - this.startedAt),
      };
      sink.end({ contentStop: { exitCode: outcome.exitCode, status: outcome.status } });
      return outcome;
    } finally {
      clearTimeout(timeoutTimer);
    }
  }
}

/** The process's own exit code, or 128+N when signal N killed it, as shells report it. */
export function exitCode(exit: SandboxExit): number {
  if (exit.code !== null) return exit.code;
  const signalNumber =
    exit.signal === null ? undefined : constants.signals[exit.signal as NodeJS.Signals];
  return 128 + (signalNumber ?? 0);
}

async function send(
  sink: CommandEventSink,
  event: CommandEvent,
  signal: AbortSignal | undefined,
): Promise<void> {
  if (!sink.send(event)) await unlessAborted(sink.drained(), signal);
}

/** The promise's outcome, or the signal's reason if it aborts first (the promise runs on). */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  signal.throwIfAborted();
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => {
      reject(signal.reason as Error);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => {
      signal.removeEventListener("abort", onAbort);
    });
  });
}

/** Output text gathered into one event at most (one piece may be larger): clients decode big
 * events more slowly than several of this size (measured with the official SDK). */
const maxGatheredText = 65_536;

/**
 * Sends output as it is read. Whatever has arrived by the time the receiver can take more goes
 * out together, consecutive pieces of one stream as one event: small writes are coalesced
 * without a timer, so no latency is added, and stdout and stderr keep the order they were read.
 * Bytes are encoded as output text here, one encoder per stream, so a character cut between
 * two reads waits for its rest; at the output's end, what still waits goes out as escapes.
 */
async function relayOutput(
  output: Readable,
  sink: CommandEventSink,
  signal: AbortSignal | undefined,
): Promise<void> {
  const encoder = new CommandOutputEncoder();
  for await (const batch of batches(output, signal)) {
    const texts = batch.map((piece) => ({ stream: piece.stream, text: encoder.textOf(piece) }));
    await sendGathered(texts, sink, signal);
  }
  await sendGathered(encoder.end(), sink, signal);
}

/** Sends the pieces, consecutive ones of a stream gathered into one event up to maxGatheredText. */
async function sendGathered(
  pieces: readonly { stream: CommandOutput["stream"]; text: OutputText }[],
  sink: CommandEventSink,
  signal: AbortSignal | undefined,
): Promise<void> {
  let stream: CommandOutput["stream"] | undefined;
  let gathered: Buffer[] = [];
  let gatheredLength = 0;
  for (const piece of pieces) {
    const length = outputTextLength(piece.text);
    // All of its bytes wait for the rest of a character.
    if (length === 0) continue;
    if (
      stream !== undefined &&
      (piece.stream !== stream || gatheredLength + length > maxGatheredText)
    ) {
      await send(sink, delta(stream, gathered), signal);
      gathered = [];
      gatheredLength = 0;
    }
    stream = piece.stream;
    gathered.push(...piece.text);
    gatheredLength += length;
  }
  if (stream !== undefined) await send(sink, delta(stream, gathered), signal);
}

function delta(stream: CommandOutput["stream"], text: OutputText): CommandEvent {
  return { contentDelta: stream === "stdout" ? { stdout: text } : { stderr: text } };
}

/** Everything readable at each moment, until the stream ends. */
async function* batches(
  output: Readable,
  signal: AbortSignal | undefined,
): AsyncGenerator<CommandOutput[]> {
  for (;;) {
    signal?.throwIfAborted();
    const batch: CommandOutput[] = [];
    for (let chunk = output.read() as CommandOutput | null; chunk !== null;) {
      batch.push(chunk);
      chunk = output.read() as CommandOutput | null;
    }
    if (batch.length > 0) {
      yield batch;
      continue;
    }
    if (output.readableEnded || output.destroyed) return;
    await new Promise<void>((resolve) => {
      const wake = () => {
        output.off("readable", wake);
        output.off("end", wake);
        output.off("close", wake);
        signal?.removeEventListener("abort", wake);
        resolve();
      };
      output.on("readable", wake);
      output.on("end", wake);
      output.on("close", wake);
      signal?.addEventListener("abort", wake);
    });
  }
}
