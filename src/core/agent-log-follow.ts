import type { AgentLogLine, AgentLogQuery, AgentLogs } from "./agent-logs.ts";

/** Why a follow ended. */
export type FollowEnd =
  /** The session followed ended (its log's "ended" note was the last line sent). */
  | "session-ended"
  /** The session followed does not run here: its lines so far were sent. */
  | "session-not-running"
  /** It lasted agentLogFollowMaxSeconds: follow again from the last line's time. */
  | "time-limit"
  /** The reader left, or Berth is shutting down. */
  | "stopped";

export type FollowItem =
  | { line: AgentLogLine }
  /** Lines left out because the reader took them more slowly than the agents wrote them. */
  | { skipped: { lines: number; bytes: number } }
  | { end: FollowEnd };

export interface FollowOptions {
  /** Ends the follow (the reader left, Berth shuts down). */
  signal: AbortSignal;
  /** Longest a follow lasts. */
  maxMs: number;
  /** Whether the session runs (or is starting) here now. */
  isRunning: (sessionId: string) => boolean;
  /** Most bytes of new lines held for a slow reader; past it lines are skipped and counted. */
  maxQueuedBytes: number;
}

/**
 * The latest lines matching the query, then each new one as it is appended, until the session
 * followed ends (or does not run here), the reader stops, or maxMs passes. The reader sets the
 * pace: up to maxQueuedBytes of new lines wait for it, and past that lines are skipped (the
 * agents are never slowed and Berth's memory stays bounded), then reported as skipped once the
 * reader has caught up.
 */
export async function* followAgentLogs(
  logs: AgentLogs,
  query: AgentLogQuery,
  options: FollowOptions,
): AsyncGenerator<FollowItem> {
  const queue = new FollowQueue(options.maxQueuedBytes);
  // Subscribed in the same turn as the read: no line is missed or sent twice (see AgentLogStore).
  const unsubscribe = logs.subscribe(query.runtimeId, (sessionId, entry) => {
    if (query.sessionId === undefined || query.sessionId === sessionId)
      queue.push({ ...entry, sessionId });
  });
  const timeLimit = AbortSignal.timeout(options.maxMs);
  const stop = AbortSignal.any([options.signal, timeLimit]);
  try {
    const history = await logs.read(query);
    for (const line of history.lines) yield { line };
    if (query.sessionId !== undefined && !options.isRunning(query.sessionId)) {
      // It may have ended while the history was read: what it wrote meanwhile (its "ended"
      // note among them) waits here, and is sent before the follow ends.
      let endedLast = history.lines.at(-1)?.event === "ended";
      for (let item = queue.take(); item !== undefined; item = queue.take()) {
        yield item;
        endedLast = "line" in item && item.line.event === "ended";
      }
      yield { end: endedLast ? "session-ended" : "session-not-running" };
      return;
    }
    for (;;) {
      const item = await queue.next(stop);
      if (item === undefined) {
        yield { end: options.signal.aborted ? "stopped" : "time-limit" };
        return;
      }
      yield item;
      if ("line" in item && query.sessionId !== undefined && item.line.event === "ended") {
        yield { end: "session-ended" };
        return;
      }
    }
  } finally {
    unsubscribe();
  }
}

/**
 * What a line waiting for a reader costs besides its text (its object and the slot holding it):
 * charged so that empty lines, which have no text, still fill the queue.
 */
export const followLineOverheadBytes = 64;

/**
 * New lines waiting for a reader, up to a number of bytes. Once one is skipped, every line is
 * until the reader has taken all those before it: the report of what was skipped then stands
 * where the gap is.
 */
class FollowQueue {
  private readonly maxBytes: number;
  private readonly lines: AgentLogLine[] = [];
  private bytes = 0;
  private skipped = { lines: 0, bytes: 0 };
  private wake: (() => void) | undefined;

  constructor(maxBytes: number) {
    this.maxBytes = maxBytes;
  }

  push(line: AgentLogLine): void {
    const size = queuedBytesOf(line);
    // A line is always taken into an empty queue, however long: a reader gets every line it
    // keeps up with.
    const full = this.lines.length > 0 && this.bytes + size > this.maxBytes;
    if (this.skipped.lines > 0 || full) {
      this.skipped.lines += 1;
      this.skipped.bytes += Buffer.byteLength(line.line);
    } else {
      this.lines.push(line);
      this.bytes += size;
    }
    this.wake?.();
  }

  /** The next line (or skip report), waiting for one; undefined once `stop` aborts. */
  async next(stop: AbortSignal): Promise<Exclude<FollowItem, { end: FollowEnd }> | undefined> {
    for (;;) {
      if (stop.aborted) return undefined;
      const item = this.take();
      if (item !== undefined) return item;
      await this.arrival(stop);
    }
  }

  /** The next line (or skip report) if one waits, without waiting. */
  take(): Exclude<FollowItem, { end: FollowEnd }> | undefined {
    const line = this.lines.shift();
    if (line !== undefined) {
      this.bytes -= queuedBytesOf(line);
      return { line };
    }
    if (this.skipped.lines > 0) {
      const skipped = this.skipped;
      this.skipped = { lines: 0, bytes: 0 };
      return { skipped };
    }
    return undefined;
  }

  private arrival(stop: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        this.wake = undefined;
        stop.removeEventListener("abort", done);
        resolve();
      };
      this.wake = done;
      stop.addEventListener("abort", done, { once: true });
    });
  }
}

/** What a line costs a follow's queue: its text and what holding it costs. */
function queuedBytesOf(line: AgentLogLine): number {
  return Buffer.byteLength(line.line) + followLineOverheadBytes;
}
