import {
  agentLogRecordBytes,
  type AgentLogEntry,
  type AgentLogWriter,
  type SessionLogRef,
} from "./agent-logs.ts";
import type { Logger } from "./logger.ts";

export interface AgentOutputLogSettings {
  /** Bytes a session's agent output may add to its log per second, on average. */
  bytesPerSecond: number;
  /** Bytes it may add at once after a quiet spell (the bucket's size). */
  burstBytes: number;
}

/** How long drops are counted before one note reports them. */
const dropReportIntervalMs = 1000;

/**
 * One session's agent output, written to the session's own log (agent-logs.ts) within a budget:
 * a token bucket of log bytes, refilled at bytesPerSecond up to burstBytes. A line that does not
 * fit is dropped and counted, and once a second a note in the session's log and a warning in
 * Berth's say how many were; a session printing as fast as it can costs the disk and the host no
 * more than its budget. The agent is never slowed: its output is still read as fast as it comes,
 * and what does not fit is thrown away. The log also notes when the session started and ended.
 */
export class AgentOutputLog {
  private readonly log: Logger;
  private readonly ids: SessionLogRef;
  private readonly settings: AgentOutputLogSettings;
  private readonly writer: AgentLogWriter;
  private readonly nowMs: () => number;
  private readonly timeMs: () => number;
  private availableBytes: number;
  private refilledAtMs: number;
  private dropped = { lines: 0, bytes: 0 };
  private dropReport: NodeJS.Timeout | undefined;
  private ended = false;

  constructor(options: {
    log: Logger;
    ids: SessionLogRef;
    settings: AgentOutputLogSettings;
    /** The session's log. */
    writer: AgentLogWriter;
    /** The bucket's clock (monotonic). */
    nowMs?: () => number;
    /** The lines' time (the wall clock). */
    timeMs?: () => number;
  }) {
    this.log = options.log;
    this.ids = options.ids;
    this.settings = options.settings;
    this.writer = options.writer;
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.timeMs = options.timeMs ?? Date.now;
    this.availableBytes = options.settings.burstBytes;
    this.refilledAtMs = this.nowMs();
    this.note("started", "session starting");
  }

  /** Writes one line of the agent's output, or counts it as dropped when over budget. */
  write(stream: "stdout" | "stderr", line: string): void {
    // Output read after the end (the last of a pipe) is not the session's: its log ends there.
    if (this.ended) return;
    this.refill();
    const entry: AgentLogEntry = { timeMs: this.timeMs(), stream, line };
    if (this.take(entry)) {
      this.writer.append(this.ids, entry);
      return;
    }
    this.dropped.lines += 1;
    this.dropped.bytes += Buffer.byteLength(line);
    if (this.dropReport === undefined) {
      this.dropReport = setTimeout(() => {
        this.reportDropped();
      }, dropReportIntervalMs);
      this.dropReport.unref();
    }
  }

  /** The session ended: reports drops not reported yet and notes why it ended (once). */
  end(reason: string | undefined): void {
    if (this.ended) return;
    this.ended = true;
    this.reportDropped();
    this.note("ended", `session ended: ${reason ?? "unknown"}`);
  }

  private refill(): void {
    const now = this.nowMs();
    const earnedBytes = ((now - this.refilledAtMs) / 1000) * this.settings.bytesPerSecond;
    this.availableBytes = Math.min(this.settings.burstBytes, this.availableBytes + earnedBytes);
    this.refilledAtMs = now;
  }

  /** Takes what the line's record costs from the budget; false when it does not fit. */
  private take(entry: AgentLogEntry): boolean {
    // Each character is at least a byte: while the budget is spent, this says no before the
    // line is encoded, so a flood costs little to drop.
    if (entry.line.length > this.availableBytes) return false;
    // Escapes included: a line of control characters is six times longer in the log than it
    // was on the agent's stdout.
    const costBytes = agentLogRecordBytes(entry);
    if (costBytes > this.availableBytes) return false;
    this.availableBytes -= costBytes;
    return true;
  }

  private reportDropped(): void {
    clearTimeout(this.dropReport);
    this.dropReport = undefined;
    if (this.dropped.lines === 0) return;
    const { lines, bytes } = this.dropped;
    const reason = `the agent wrote more than agentLogBytesPerSecond (${this.settings.bytesPerSecond}) allows`;
    this.log.warn("agent output dropped", {
      ...this.ids,
      droppedLines: lines,
      droppedBytes: bytes,
      reason,
    });
    this.note("dropped", `${lines} lines (${bytes} bytes) dropped: ${reason}`);
    this.dropped = { lines: 0, bytes: 0 };
  }

  /** Berth's own note in the session's log (not charged to the agent's budget). */
  private note(event: NonNullable<AgentLogEntry["event"]>, line: string): void {
    this.writer.append(this.ids, { timeMs: this.timeMs(), stream: "berth", line, event });
  }
}
