import { createHash } from "node:crypto";
import { chmod, mkdir, readdir, rm, rmdir, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  agentLogRecord,
  boundedEntry,
  latestOf,
  maxAgentLogRecordBytes,
  type AgentLogEntry,
  type AgentLogPage,
  type AgentLogQuery,
  type AgentLogStore,
  type SessionLogRef,
} from "../../core/agent-logs.ts";
import type { Logger } from "../../core/logger.ts";
import { firstLine } from "./log-lines.ts";
import { parseHeader, SessionLogFiles } from "./session-log-files.ts";

export interface FileAgentLogSettings {
  /** Most bytes one session's log takes on disk (agentLogBytes). */
  sessionBytes: number;
  /** Most bytes all logs take together, once swept (agentLogTotalBytes). */
  totalBytes: number;
}

/** How long appended lines wait to be written with those that follow them. */
const flushDelayMs = 100;
/** A session with this much waiting is written at once. */
const flushBytes = 65_536;

/** A session's files with what waits to be written to them, and its operations in order. */
interface SessionLog {
  files: SessionLogFiles;
  pending: string[];
  pendingBytes: number;
  /** The session's operations (writes, reads, removal), one after another. */
  chain: Promise<void>;
}

/**
 * Sessions' logs as files under a folder of Berth's own (0700, files 0600, never reached through
 * a symbolic link): `<runtime>/<hash of the session id>.log` and its previous half (see
 * SessionLogFiles). Lines are batched for a moment before they are written; each session's
 * writes, reads and removal run one after another, and a read first writes what was appended
 * before it, so it sees exactly those lines. Which sessions have logs is known in memory
 * (loaded at open): a read of a whole runtime queues every session's read in the same turn.
 */
export class FileAgentLogStore implements AgentLogStore {
  private readonly folder: string;
  private readonly settings: FileAgentLogSettings;
  private readonly log: Logger;
  private readonly runtimes = new Map<string, Map<string, SessionLog>>();
  /** Per removed session, its last operation: a log made again for it waits for that. */
  private readonly removals = new Map<string, Promise<void>>();
  private flushTimer: NodeJS.Timeout | undefined;
  private writesFailing = false;
  private closed = false;

  private constructor(folder: string, settings: FileAgentLogSettings, log: Logger) {
    this.folder = folder;
    this.settings = settings;
    this.log = log;
  }

  /** Opens the store in `folder` (made if missing), finding the logs already there. */
  static async open(
    folder: string,
    settings: FileAgentLogSettings,
    log: Logger,
  ): Promise<FileAgentLogStore> {
    await mkdir(folder, { recursive: true, mode: 0o700 });
    await chmod(folder, 0o700);
    const store = new FileAgentLogStore(folder, settings, log);
    await store.loadIndex();
    return store;
  }

  append(session: SessionLogRef, entry: AgentLogEntry): void {
    if (this.closed) return;
    const log = this.sessionLog(session);
    const record = agentLogRecord(boundedEntry(entry, this.maxRecordBytes));
    log.pending.push(record);
    log.pendingBytes += Buffer.byteLength(record) + 1;
    log.files.lastWriteMs = entry.timeMs;
    if (log.pendingBytes >= flushBytes) this.flush(log);
    else {
      this.flushTimer ??= setTimeout(() => {
        this.flushAll();
      }, flushDelayMs).unref();
    }
  }

  /**
   * A session's read is queued now, behind the writes of what was appended until now. Across a
   * runtime, sessions are read one after another, the one that wrote last first: once the lines
   * read are enough (limit or maxBytes) of lines newer than all a session wrote, that session
   * and those that wrote before it are not read at all.
   */
  async read(query: AgentLogQuery): Promise<AgentLogPage> {
    const runtime = this.runtimes.get(query.runtimeId);
    if (query.sessionId !== undefined) {
      const log = runtime?.get(query.sessionId);
      if (log === undefined) return { lines: [], truncated: false };
      this.flush(log);
      return latestOf([await this.queue(log, () => log.files.read(query))], query);
    }
    const sessions = [...(runtime?.values() ?? [])]
      .map((log) => ({ log, lastWriteMs: log.files.lastWriteMs }))
      .filter(({ lastWriteMs }) => lastWriteMs >= (query.sinceMs ?? 0))
      .sort((first, second) => second.lastWriteMs - first.lastWriteMs);
    const pages: AgentLogPage[] = [];
    let leftOut = false;
    let before: Promise<unknown> = Promise.resolve();
    const reads = sessions.map(({ log, lastWriteMs }) => {
      this.flush(log);
      const after = before;
      before = this.queue(log, async () => {
        await after;
        if (enoughNewerThan(pages, lastWriteMs, query)) leftOut = true;
        else pages.push(await log.files.read(query));
      });
      return before;
    });
    await Promise.all(reads);
    const page = latestOf(pages, query);
    return { lines: page.lines, truncated: page.truncated || leftOut };
  }

  async sweep(beforeMs: number): Promise<number> {
    const all = [...this.runtimes.values()].flatMap((sessions) => [...sessions.values()]);
    const removals: Promise<void>[] = [];
    const kept: SessionLog[] = [];
    for (const log of all) {
      if (log.files.lastWriteMs < beforeMs) removals.push(this.remove(log));
      else {
        kept.push(log);
        if (log.files.previousBytes > 0 && log.files.previousWrittenMs < beforeMs)
          removals.push(this.queue(log, () => log.files.removePrevious()));
      }
    }
    let removed = all.length - kept.length;
    // Those that wrote last longest ago go first while all together are over the bound.
    kept.sort((first, second) => first.files.lastWriteMs - second.files.lastWriteMs);
    let totalBytes = kept.reduce((sum, log) => sum + log.files.bytes + log.pendingBytes, 0);
    for (const log of kept) {
      if (totalBytes <= this.settings.totalBytes) break;
      totalBytes -= log.files.bytes + log.pendingBytes;
      removals.push(this.remove(log));
      removed += 1;
    }
    await Promise.all(removals);
    return removed;
  }

  async removeRuntime(runtimeId: string): Promise<void> {
    const sessions = [...(this.runtimes.get(runtimeId)?.values() ?? [])];
    await Promise.all(sessions.map((log) => this.remove(log)));
    // Left if a session wrote again meanwhile: the sweep takes it in time.
    await rmdir(join(this.folder, runtimeFolderName(runtimeId))).catch(() => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.flushTimer);
    this.flushAll();
    const chains = [...this.runtimes.values()].flatMap((sessions) =>
      [...sessions.values()].map((log) => log.chain),
    );
    await Promise.all([...chains, ...this.removals.values()]);
  }

  private get maxRecordBytes(): number {
    return maxAgentLogRecordBytes(this.settings.sessionBytes);
  }

  private sessionLog(session: SessionLogRef): SessionLog {
    const known = this.runtimes.get(session.runtimeId)?.get(session.sessionId);
    if (known !== undefined) return known;
    const base = join(
      this.folder,
      runtimeFolderName(session.runtimeId),
      sessionFileName(session.sessionId),
    );
    return this.track(new SessionLogFiles({ ...session, base, maxFileBytes: this.maxFileBytes }));
  }

  private get maxFileBytes(): number {
    return Math.floor(this.settings.sessionBytes / 2);
  }

  /** Puts a session's files in the index, its first operation after a removal of it. */
  private track(files: SessionLogFiles): SessionLog {
    const key = sessionKey(files);
    const log: SessionLog = {
      files,
      pending: [],
      pendingBytes: 0,
      chain: this.removals.get(key) ?? Promise.resolve(),
    };
    let sessions = this.runtimes.get(files.runtimeId);
    if (sessions === undefined) {
      sessions = new Map();
      this.runtimes.set(files.runtimeId, sessions);
    }
    sessions.set(files.sessionId, log);
    return log;
  }

  /** Runs `work` after the session's operations queued before it. */
  private queue<T>(log: SessionLog, work: () => Promise<T>): Promise<T> {
    const result = log.chain.then(work);
    log.chain = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Queues the writing of what waits for the session. */
  private flush(log: SessionLog): void {
    if (log.pending.length === 0) return;
    const records = log.pending;
    log.pending = [];
    log.pendingBytes = 0;
    void this.queue(log, async () => {
      await mkdir(join(log.files.base, ".."), { recursive: true, mode: 0o700 });
      await log.files.append(records, Date.now());
    }).then(
      () => {
        this.writesFailing = false;
      },
      (error: unknown) => {
        this.reportWriteFailure(log, error);
      },
    );
  }

  private flushAll(): void {
    this.flushTimer = undefined;
    for (const sessions of this.runtimes.values()) {
      for (const log of sessions.values()) this.flush(log);
    }
  }

  /** A failed write loses its lines; reported once until writes succeed again (a full disk). */
  private reportWriteFailure(log: SessionLog, error: unknown): void {
    if (this.writesFailing) return;
    this.writesFailing = true;
    this.log.warn("could not write an agent log: lines are lost until writes succeed again", {
      runtimeId: log.files.runtimeId,
      sessionId: log.files.sessionId,
      error: String(error),
    });
  }

  /** Takes a session out of the index now and deletes its files once its operations are done. */
  private remove(log: SessionLog): Promise<void> {
    const key = sessionKey(log.files);
    const sessions = this.runtimes.get(log.files.runtimeId);
    if (sessions?.get(log.files.sessionId) === log) sessions.delete(log.files.sessionId);
    if (sessions?.size === 0) this.runtimes.delete(log.files.runtimeId);
    log.pending = [];
    log.pendingBytes = 0;
    const removal = this.queue(log, () => log.files.removeAll());
    this.removals.set(key, log.chain);
    void log.chain.then(() => {
      if (this.removals.get(key) === log.chain) this.removals.delete(key);
    });
    return removal;
  }

  /** Finds the logs in the folder: each session's files, named in their header. */
  private async loadIndex(): Promise<void> {
    for (const runtimeFolder of await readdir(this.folder, { withFileTypes: true })) {
      if (!runtimeFolder.isDirectory()) continue;
      const folder = join(this.folder, runtimeFolder.name);
      const bases = new Set(
        (await readdir(folder))
          .filter((name) => name.endsWith(".log"))
          .map((name) => join(folder, name.replace(/(\.1)?\.log$/, ""))),
      );
      for (const base of bases) await this.loadSession(base);
    }
  }

  private async loadSession(base: string): Promise<void> {
    const current = await stat(`${base}.log`).catch(() => undefined);
    const previous = await stat(`${base}.1.log`).catch(() => undefined);
    const ids = (await headerOf(`${base}.log`)) ?? (await headerOf(`${base}.1.log`));
    if (ids === undefined) {
      // Made, but Berth stopped before it wrote the header: nothing of it can be read.
      await rm(`${base}.log`, { force: true });
      await rm(`${base}.1.log`, { force: true });
      return;
    }
    this.track(
      new SessionLogFiles({
        ...ids,
        base,
        maxFileBytes: this.maxFileBytes,
        currentBytes: current?.size ?? 0,
        previousBytes: previous?.size ?? 0,
        previousWrittenMs: previous?.mtimeMs ?? 0,
        lastWriteMs: current?.mtimeMs ?? previous?.mtimeMs ?? 0,
      }),
    );
  }
}

/** Whether the pages hold a full answer (limit or maxBytes) of lines newer than `timeMs`. */
function enoughNewerThan(
  pages: AgentLogPage[],
  timeMs: number,
  bounds: Pick<AgentLogQuery, "limit" | "maxBytes">,
): boolean {
  let lines = 0;
  let bytes = 0;
  for (const page of pages) {
    for (const line of page.lines) {
      if (line.timeMs <= timeMs) continue;
      lines += 1;
      bytes += Buffer.byteLength(line.line);
      if (lines >= bounds.limit || bytes > bounds.maxBytes) return true;
    }
  }
  return false;
}

/** Most bytes of a header: its ids, a session id being at most 256 printable characters. */
const maxHeaderBytes = 4096;

/** The session named in a log file's first line. */
async function headerOf(
  path: string,
): Promise<{ runtimeId: string; sessionId: string } | undefined> {
  const first = await firstLine(path, maxHeaderBytes);
  return first === undefined ? undefined : parseHeader(first);
}

function sessionKey(session: SessionLogRef): string {
  return `${session.runtimeId}\u0000${session.sessionId}`;
}

/** A runtime's folder: its id, which is made of safe characters, else a hash of it. */
function runtimeFolderName(runtimeId: string): string {
  return /^[A-Za-z0-9_-]{1,100}$/.test(runtimeId) ? runtimeId : `id-${hashOf(runtimeId)}`;
}

/** A session's files' name: session ids may hold any printable character and be 256 long. */
function sessionFileName(sessionId: string): string {
  return hashOf(sessionId);
}

function hashOf(text: string): string {
  return createHash("sha256").update(text).digest("hex").slice(0, 32);
}
