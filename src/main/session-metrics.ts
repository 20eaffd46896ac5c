import { Counter, Gauge, type Registry } from "prom-client";
import type { SessionInfo } from "../core/sessions.ts";

type SessionLabel = "runtime" | "session";

/**
 * Gauges of the sessions running on this node, set afresh at each scrape from the session
 * manager's list: a session that ended leaves no series behind. Per-session series number at
 * most maxSessions per metric, whatever the traffic.
 */
export class SessionGauges {
  private readonly active: Gauge<"runtime" | "state">;
  private readonly cpu: Counter<SessionLabel>;
  private readonly memory: Gauge<SessionLabel>;
  private readonly processes: Gauge<SessionLabel>;
  private readonly storageUsed: Gauge<SessionLabel>;
  private readonly checkpointLag: Gauge<SessionLabel>;
  private readonly checkpointBytes: Gauge<SessionLabel>;

  constructor(registry: Registry) {
    const perSession = (name: string, help: string) =>
      new Gauge({ name, help, labelNames: ["runtime", "session"], registers: [registry] });
    this.active = new Gauge({
      name: "berth_active_sessions",
      help: "Sessions running on this node, by runtime and state (starting, running) (AgentCore: ActiveSessionCount).",
      labelNames: ["runtime", "state"],
      registers: [registry],
    });
    this.cpu = new Counter({
      name: "berth_session_cpu_seconds_total",
      help: "CPU time a running session's processes used (AgentCore's resource usage: vCPU-hours, here in seconds).",
      labelNames: ["runtime", "session"],
      registers: [registry],
    });
    this.memory = perSession(
      "berth_session_memory_bytes",
      "Memory a running session's sandbox uses now (AgentCore's resource usage: memory GB-hours, here bytes at each scrape).",
    );
    this.processes = perSession(
      "berth_session_processes",
      "Processes and threads in a running session's sandbox.",
    );
    this.storageUsed = perSession(
      "berth_session_storage_used_bytes",
      "Bytes used on a running session's storage volumes.",
    );
    this.checkpointLag = perSession(
      "berth_session_storage_checkpoint_lag_seconds",
      "With an object store: how long a running session's storage has held changes its copy there lacks (0: none).",
    );
    this.checkpointBytes = perSession(
      "berth_session_storage_checkpoint_bytes",
      "With an object store: what a running session's storage's last durable checkpoints took there.",
    );
  }

  update(sessions: readonly SessionInfo[], nowMs: number): void {
    for (const metric of [
      this.active,
      this.cpu,
      this.memory,
      this.processes,
      this.storageUsed,
      this.checkpointLag,
      this.checkpointBytes,
    ])
      metric.reset();
    const counts = new Map<string, { runtime: string; state: string; count: number }>();
    for (const session of sessions) {
      const key = `${session.runtimeId} ${session.state}`;
      const entry = counts.get(key) ?? {
        runtime: session.runtimeId,
        state: session.state,
        count: 0,
      };
      entry.count += 1;
      counts.set(key, entry);
      this.setUsage(session, nowMs);
    }
    for (const { runtime, state, count } of counts.values())
      this.active.set({ runtime, state }, count);
  }

  private setUsage(session: SessionInfo, nowMs: number): void {
    const labels = { runtime: session.runtimeId, session: session.sessionId };
    const { usage, checkpoint } = session;
    // The sandbox's own total: the counter is set to it, not added to.
    if (usage.cpuSeconds !== undefined) this.cpu.inc(labels, usage.cpuSeconds);
    if (usage.memoryBytes !== undefined) this.memory.set(labels, usage.memoryBytes);
    if (usage.processes !== undefined) this.processes.set(labels, usage.processes);
    if (usage.storageUsedBytes !== undefined) this.storageUsed.set(labels, usage.storageUsedBytes);
    if (checkpoint !== undefined) {
      this.checkpointLag.set(labels, checkpointLagSeconds(checkpoint, session.startedAt, nowMs));
      this.checkpointBytes.set(labels, checkpoint.storedBytes);
    }
  }
}

/**
 * About how much work an unclean loss of this node would cost the session now: nothing when its
 * copy is up to date, else the time since its last durable checkpoint or, if later, since the
 * session started (a volume durable days ago changed no earlier than this session's start).
 */
function checkpointLagSeconds(
  checkpoint: NonNullable<SessionInfo["checkpoint"]>,
  startedAt: string,
  nowMs: number,
): number {
  if (!checkpoint.pending) return 0;
  const startedMs = Date.parse(startedAt);
  const durableMs =
    checkpoint.durableAt === undefined ? startedMs : Date.parse(checkpoint.durableAt);
  return Math.max(0, (nowMs - Math.max(startedMs, durableMs)) / 1000);
}
