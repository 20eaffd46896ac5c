import type { Logger } from "./logger.ts";

/**
 * Sessions' own logs: what each agent printed on stdout and stderr, kept apart from Berth's log,
 * bounded in size and time, readable after the session ended (docs/observability.md, "Agent
 * logs"). A store (an adapter) keeps them; AgentLogs adds what the core needs on top: readers
 * following new lines, the retention, and the sweep.
 */

/** Where a line came from: the agent's stdout or stderr, or Berth's own note about the session. */
export type AgentLogStream = "stdout" | "stderr" | "berth";

/** What a note of Berth's says happened: the session started or ended, or lines were dropped. */
export type AgentLogEvent = "started" | "ended" | "dropped";

export interface AgentLogEntry {
  /** When Berth read the line, in ms since the epoch. */
  timeMs: number;
  stream: AgentLogStream;
  line: string;
  /** Set on Berth's notes (stream "berth"). */
  event?: AgentLogEvent;
}

/** An entry as read back, with the session it belongs to. */
export interface AgentLogLine extends AgentLogEntry {
  sessionId: string;
}

export interface SessionLogRef {
  runtimeId: string;
  sessionId: string;
}

export interface AgentLogQuery {
  runtimeId: string;
  /** One session's lines; every session's of the runtime when unset. */
  sessionId?: string | undefined;
  /** Only lines read at or after this time (ms since the epoch). */
  sinceMs?: number | undefined;
  /** At most this many lines: the latest. */
  limit: number;
  /** At most about this many bytes of line text: the latest lines that fit. */
  maxBytes: number;
}

export interface AgentLogPage {
  /** Oldest first. */
  lines: AgentLogLine[];
  /** Older lines matching the query were left out (limit or maxBytes). */
  truncated: boolean;
}

/** Where a session's lines are written: AgentLogs, or nothing (noAgentLogs). */
export interface AgentLogWriter {
  /** Adds an entry to a session's log. Called for every line an agent prints: never blocks or throws. */
  append(session: SessionLogRef, entry: AgentLogEntry): void;
}

export const noAgentLogs: AgentLogWriter = { append: () => undefined };

/**
 * Keeps sessions' logs (an adapter). Each session's log is bounded by the store's own setting
 * (agentLogBytes): past it the oldest lines go. Contract (test/contracts/agent-log-store.test.ts):
 * a read sees every entry appended before it was called and none appended after, however the
 * store batches its writes, so a reader that subscribes to new entries in the same turn misses
 * none and sees none twice.
 */
export interface AgentLogStore extends AgentLogWriter {
  read(query: AgentLogQuery): Promise<AgentLogPage>;
  /**
   * Deletes the logs of sessions that wrote nothing since `beforeMs`, then, while all logs
   * together are over the store's total bound (agentLogTotalBytes), those that wrote last longest
   * ago. Resolves with how many sessions' logs it deleted.
   */
  sweep(beforeMs: number): Promise<number>;
  /** Deletes every log of a runtime (it was deleted). */
  removeRuntime(runtimeId: string): Promise<void>;
  /** Writes what is pending; entries appended after this are dropped. */
  close(): Promise<void>;
}

/** What a record of a log costs, as the stores count it: its JSON line (see agentLogRecord). */
export function agentLogRecordBytes(entry: AgentLogEntry): number {
  return Buffer.byteLength(agentLogRecord(entry)) + 1;
}

/** One entry as a line of JSON, as the file store writes it (and the memory store counts it). */
export function agentLogRecord(entry: AgentLogEntry): string {
  return JSON.stringify({
    time: new Date(entry.timeMs).toISOString(),
    stream: entry.stream,
    line: entry.line,
    ...(entry.event === undefined ? {} : { event: entry.event }),
  });
}

/** A record (agentLogRecord's shape, parsed) as an entry; undefined when it is not one. */
export function entryOfRecord(record: unknown): AgentLogEntry | undefined {
  if (typeof record !== "object" || record === null) return undefined;
  const { time, stream, line, event } = record as Record<string, unknown>;
  const timeMs = typeof time === "string" ? Date.parse(time) : Number.NaN;
  if (Number.isNaN(timeMs) || typeof line !== "string") return undefined;
  if (stream !== "stdout" && stream !== "stderr" && stream !== "berth") return undefined;
  const known = event === "started" || event === "ended" || event === "dropped";
  return { timeMs, stream, line, ...(known ? { event } : {}) };
}

export interface AgentLogSettings {
  /** Lines older than this are neither shown nor kept. */
  retentionMs: number;
  /** How often the store is swept (retention and total bound). */
  sweepIntervalMs: number;
}

type NewEntryListener = (sessionId: string, entry: AgentLogEntry) => void;

/**
 * The sessions' logs of this node: writes go to the store and to whoever follows the runtime;
 * reads leave out what is past the retention, which a sweep deletes every sweepIntervalMs.
 */
export class AgentLogs implements AgentLogWriter {
  private readonly store: AgentLogStore;
  private readonly settings: AgentLogSettings;
  private readonly log: Logger;
  private readonly nowMs: () => number;
  /** Per runtime, the readers following its new lines. */
  private readonly followers = new Map<string, Set<NewEntryListener>>();
  private readonly sweeper: NodeJS.Timeout;
  /** The sweep under way, if any: sweeps never overlap. */
  private sweeping: Promise<void> | undefined;

  constructor(options: {
    store: AgentLogStore;
    settings: AgentLogSettings;
    log: Logger;
    nowMs?: () => number;
  }) {
    this.store = options.store;
    this.settings = options.settings;
    this.log = options.log;
    this.nowMs = options.nowMs ?? Date.now;
    this.sweeper = setInterval(() => {
      void this.sweep();
    }, options.settings.sweepIntervalMs);
    this.sweeper.unref();
  }

  append(session: SessionLogRef, entry: AgentLogEntry): void {
    this.store.append(session, entry);
    for (const listener of this.followers.get(session.runtimeId) ?? []) {
      listener(session.sessionId, entry);
    }
  }

  /** The latest lines matching the query, none older than the retention. */
  read(query: AgentLogQuery): Promise<AgentLogPage> {
    const oldestMs = this.nowMs() - this.settings.retentionMs;
    return this.store.read({ ...query, sinceMs: Math.max(query.sinceMs ?? oldestMs, oldestMs) });
  }

  /**
   * Calls `listener` with each entry appended to a session of the runtime from now on, until the
   * returned function is called. Subscribing and then reading in the same turn sees every entry
   * exactly once (see AgentLogStore).
   */
  subscribe(runtimeId: string, listener: NewEntryListener): () => void {
    let listeners = this.followers.get(runtimeId);
    if (listeners === undefined) {
      listeners = new Set();
      this.followers.set(runtimeId, listeners);
    }
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
      if (listeners.size === 0 && this.followers.get(runtimeId) === listeners)
        this.followers.delete(runtimeId);
    };
  }

  removeRuntime(runtimeId: string): Promise<void> {
    return this.store.removeRuntime(runtimeId);
  }

  /** Deletes what is past the retention or the total bound (it also runs every sweepIntervalMs). */
  sweep(): Promise<void> {
    this.sweeping ??= this.sweepOnce().finally(() => {
      this.sweeping = undefined;
    });
    return this.sweeping;
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    await this.sweeping;
    await this.store.close();
  }

  private async sweepOnce(): Promise<void> {
    try {
      const removed = await this.store.sweep(this.nowMs() - this.settings.retentionMs);
      if (removed > 0) this.log.info("agent logs swept", { sessionsRemoved: removed });
    } catch (error) {
      this.log.warn("could not sweep agent logs", { error: String(error) });
    }
  }
}

/**
 * The largest record a store bounded to `sessionBytes` per session keeps: half of it (the file
 * store keeps the latest half at least) less room for a file's header.
 */
export function maxAgentLogRecordBytes(sessionBytes: number): number {
  return Math.floor(sessionBytes / 2) - 1024;
}

/**
 * The entry as a store with this bound per record keeps it: itself, or, when its record is
 * bigger than that, a note of Berth's saying so (a store bounded per session never takes one
 * record past its bound).
 */
export function boundedEntry(entry: AgentLogEntry, maxRecordBytes: number): AgentLogEntry {
  const bytes = agentLogRecordBytes(entry);
  if (bytes <= maxRecordBytes) return entry;
  return {
    timeMs: entry.timeMs,
    stream: "berth",
    event: "dropped",
    line: `a ${entry.stream} line of ${bytes} bytes was left out: its record is bigger than half of agentLogBytes`,
  };
}

/**
 * The latest lines of several pages (each oldest first), merged by time: at most `limit` of
 * them and about `maxBytes` of line text, oldest first. Truncated when any page was, or lines
 * were left out here.
 */
export function latestOf(
  pages: AgentLogPage[],
  bounds: Pick<AgentLogQuery, "limit" | "maxBytes">,
): AgentLogPage {
  // Stable: lines of one time keep their order within their session.
  const all = pages
    .flatMap((page) => page.lines)
    .sort((first, second) => first.timeMs - second.timeMs);
  const kept: AgentLogLine[] = [];
  let bytes = 0;
  for (let index = all.length - 1; index >= 0 && kept.length < bounds.limit; index -= 1) {
    const line = all[index];
    if (line === undefined) break;
    bytes += Buffer.byteLength(line.line);
    if (bytes > bounds.maxBytes && kept.length > 0) break;
    kept.push(line);
  }
  return {
    lines: kept.reverse(),
    truncated: kept.length < all.length || pages.some((page) => page.truncated),
  };
}
