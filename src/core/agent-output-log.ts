import type { Logger } from "./logger.ts";

export interface AgentOutputLogSettings {
  /** Log bytes a session's agent output may use per second, on average. */
  bytesPerSecond: number;
  /** Log bytes it may use at once after a quiet spell (the bucket's size). */
  burstBytes: number;
}

/** How long drops are counted before one record reports them. */
const dropReportIntervalMs = 1000;

/**
 * A record's bytes besides the line and the ids: time, level, message, stream and the JSON
 * around them. An estimate, so a budget in bytes means about what it says.
 */
const recordOverheadBytes = 128;

/**
 * One session's agent output in Berth's log, within a budget: a token bucket of log bytes,
 * refilled at bytesPerSecond up to burstBytes. A line that does not fit is dropped and counted,
 * and one record per second says how many were; a session printing as fast as it can costs the
 * log (and the sessions sharing it) no more than its budget. The agent is never slowed: its
 * output is still read as fast as it comes, and what does not fit is thrown away.
 */
export class AgentOutputLog {
  private readonly log: Logger;
  private readonly ids: { runtimeId: string; sessionId: string };
  private readonly settings: AgentOutputLogSettings;
  private readonly nowMs: () => number;
  private readonly idBytes: number;
  private availableBytes: number;
  private refilledAtMs: number;
  private dropped = { lines: 0, bytes: 0 };
  private dropReport: NodeJS.Timeout | undefined;

  constructor(options: {
    log: Logger;
    ids: { runtimeId: string; sessionId: string };
    settings: AgentOutputLogSettings;
    nowMs?: () => number;
  }) {
    this.log = options.log;
    this.ids = options.ids;
    this.settings = options.settings;
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.idBytes = Buffer.byteLength(this.ids.runtimeId) + Buffer.byteLength(this.ids.sessionId);
    this.availableBytes = options.settings.burstBytes;
    this.refilledAtMs = this.nowMs();
  }

  /** Logs one line of the agent's output, or counts it as dropped when over budget. */
  write(stream: "stdout" | "stderr", line: string): void {
    this.refill();
    if (this.take(line)) {
      this.log.info("agent output", { ...this.ids, stream, line });
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

  /** Reports drops not reported yet (the session is ending). */
  flush(): void {
    this.reportDropped();
  }

  private refill(): void {
    const now = this.nowMs();
    const earnedBytes = ((now - this.refilledAtMs) / 1000) * this.settings.bytesPerSecond;
    this.availableBytes = Math.min(this.settings.burstBytes, this.availableBytes + earnedBytes);
    this.refilledAtMs = now;
  }

  /** Takes what the line's record costs from the budget; false when it does not fit. */
  private take(line: string): boolean {
    const fixedBytes = recordOverheadBytes + this.idBytes;
    // Each character is at least a byte: while the budget is spent, this says no before the
    // line is encoded, so a flood costs little to drop.
    if (fixedBytes + line.length > this.availableBytes) return false;
    // Escapes included: a line of control characters is six times longer in the log than it
    // was on the agent's stdout.
    const costBytes = fixedBytes + Buffer.byteLength(JSON.stringify(line));
    if (costBytes > this.availableBytes) return false;
    this.availableBytes -= costBytes;
    return true;
  }

  private reportDropped(): void {
    clearTimeout(this.dropReport);
    this.dropReport = undefined;
    if (this.dropped.lines === 0) return;
    this.log.warn("agent output dropped", {
      ...this.ids,
      droppedLines: this.dropped.lines,
      droppedBytes: this.dropped.bytes,
      reason: `the agent wrote more than agentLogBytesPerSecond (${this.settings.bytesPerSecond}) allows`,
    });
    this.dropped = { lines: 0, bytes: 0 };
  }
}
