import { constants } from "node:fs";
import { open, rename, rm } from "node:fs/promises";
import {
  entryOfRecord,
  type AgentLogEntry,
  type AgentLogLine,
  type AgentLogPage,
  type AgentLogQuery,
} from "../../core/agent-logs.ts";
import { linesBackwards } from "./log-lines.ts";

/** Appends, creates 0600, never through a symbolic link. */
const appendFlags =
  constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW;

/**
 * One session's log on disk: `<base>.log`, and `<base>.1.log` with the lines before it. Each
 * file starts with a header naming the session and holds at most half of the session's bound:
 * when the current one is full it becomes the previous one (replacing it), so the two together
 * never pass the bound and always keep its latest half. Records are JSON lines (agentLogRecord).
 * Not safe for concurrent use: the store runs one operation at a time per session.
 */
export class SessionLogFiles {
  readonly runtimeId: string;
  readonly sessionId: string;
  readonly base: string;
  currentBytes: number;
  previousBytes: number;
  /** When the previous file took its last line (it became previous then). */
  previousWrittenMs: number;
  /** When the session's log took its last line. */
  lastWriteMs: number;
  private readonly maxFileBytes: number;
  private readonly header: string;

  constructor(fields: {
    runtimeId: string;
    sessionId: string;
    base: string;
    maxFileBytes: number;
    currentBytes?: number;
    previousBytes?: number;
    previousWrittenMs?: number;
    lastWriteMs?: number;
  }) {
    this.runtimeId = fields.runtimeId;
    this.sessionId = fields.sessionId;
    this.base = fields.base;
    this.maxFileBytes = fields.maxFileBytes;
    this.currentBytes = fields.currentBytes ?? 0;
    this.previousBytes = fields.previousBytes ?? 0;
    this.previousWrittenMs = fields.previousWrittenMs ?? 0;
    this.lastWriteMs = fields.lastWriteMs ?? 0;
    this.header = `${JSON.stringify({ runtimeId: this.runtimeId, sessionId: this.sessionId })}\n`;
  }

  get currentPath(): string {
    return `${this.base}.log`;
  }

  get previousPath(): string {
    return `${this.base}.1.log`;
  }

  get bytes(): number {
    return this.currentBytes + this.previousBytes;
  }

  /** Appends records (JSON lines without their newline), moving to a new file when one is full. */
  async append(records: string[], nowMs: number): Promise<void> {
    let chunk = "";
    let chunkBytes = 0;
    for (const record of records) {
      const bytes = Buffer.byteLength(record) + 1;
      const headerBytes = this.currentBytes === 0 ? Buffer.byteLength(this.header) : 0;
      const full = headerBytes + this.currentBytes + chunkBytes + bytes > this.maxFileBytes;
      if (full && this.currentBytes + chunkBytes > 0) {
        await this.write(chunk);
        await this.rotate(nowMs);
        chunk = "";
        chunkBytes = 0;
      }
      chunk += `${record}\n`;
      chunkBytes += bytes;
    }
    if (chunk !== "") await this.write(chunk);
  }

  /** The latest lines matching the query (bounds: one past them, to know they were reached). */
  async read(query: AgentLogQuery): Promise<AgentLogPage> {
    const lines: AgentLogLine[] = [];
    let bytes = 0;
    for (const path of [this.currentPath, this.previousPath]) {
      for await (const text of linesBackwards(path)) {
        const entry = parseRecord(text);
        if (entry === undefined) continue;
        if (entry.timeMs < (query.sinceMs ?? 0))
          return { lines: lines.reverse(), truncated: false };
        bytes += Buffer.byteLength(entry.line);
        if (lines.length === query.limit || (bytes > query.maxBytes && lines.length > 0))
          return { lines: lines.reverse(), truncated: true };
        lines.push({ ...entry, sessionId: this.sessionId });
      }
    }
    return { lines: lines.reverse(), truncated: false };
  }

  async removeAll(): Promise<void> {
    await rm(this.currentPath, { force: true });
    await this.removePrevious();
  }

  async removePrevious(): Promise<void> {
    await rm(this.previousPath, { force: true });
    this.previousBytes = 0;
  }

  private async write(text: string): Promise<void> {
    const handle = await open(this.currentPath, appendFlags, 0o600);
    try {
      const { size } = await handle.stat();
      // A new file (or one the sweep removed meanwhile) starts with its header.
      const bytes = Buffer.from(size === 0 ? `${this.header}${text}` : text);
      for (let written = 0; written < bytes.length;) {
        written += (await handle.write(bytes, written)).bytesWritten;
      }
      this.currentBytes = size + bytes.length;
    } finally {
      await handle.close();
    }
  }

  private async rotate(nowMs: number): Promise<void> {
    await rename(this.currentPath, this.previousPath);
    this.previousBytes = this.currentBytes;
    this.previousWrittenMs = nowMs;
    this.currentBytes = 0;
  }
}

/** A record read back; undefined for a header, or a record cut short by a crash. */
function parseRecord(text: string): AgentLogEntry | undefined {
  try {
    return entryOfRecord(JSON.parse(text));
  } catch {
    return undefined;
  }
}

/** A log file's header: the session it belongs to. */
export function parseHeader(text: string): { runtimeId: string; sessionId: string } | undefined {
  try {
    const parsed = JSON.parse(text) as Record<string, unknown>;
    const { runtimeId, sessionId } = parsed;
    if (typeof runtimeId === "string" && typeof sessionId === "string" && !("time" in parsed))
      return { runtimeId, sessionId };
  } catch {
    // not a header
  }
  return undefined;
}
