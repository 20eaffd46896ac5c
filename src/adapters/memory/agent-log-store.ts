import {
  agentLogRecordBytes,
  boundedEntry,
  latestOf,
  maxAgentLogRecordBytes,
  type AgentLogEntry,
  type AgentLogPage,
  type AgentLogQuery,
  type AgentLogStore,
  type SessionLogRef,
} from "../../core/agent-logs.ts";

interface SessionLog {
  entries: { entry: AgentLogEntry; bytes: number }[];
  bytes: number;
}

/**
 * Sessions' logs in memory, for tests: bounded as the file store is (each session's to
 * sessionBytes, the oldest lines going first; all to totalBytes by the sweep), gone on restart.
 */
export class MemoryAgentLogStore implements AgentLogStore {
  private readonly settings: { sessionBytes: number; totalBytes: number };
  private readonly runtimes = new Map<string, Map<string, SessionLog>>();
  private closed = false;

  constructor(settings: { sessionBytes: number; totalBytes: number }) {
    this.settings = settings;
  }

  append(session: SessionLogRef, entry: AgentLogEntry): void {
    if (this.closed) return;
    const kept = boundedEntry(entry, maxAgentLogRecordBytes(this.settings.sessionBytes));
    const log = this.sessionLog(session);
    const bytes = agentLogRecordBytes(kept);
    log.entries.push({ entry: kept, bytes });
    log.bytes += bytes;
    while (log.bytes > this.settings.sessionBytes) log.bytes -= log.entries.shift()?.bytes ?? 0;
  }

  read(query: AgentLogQuery): Promise<AgentLogPage> {
    const sessions = this.runtimes.get(query.runtimeId) ?? new Map<string, SessionLog>();
    const pages = [...sessions]
      .filter(([sessionId]) => query.sessionId === undefined || sessionId === query.sessionId)
      .map(([sessionId, log]) => ({
        lines: log.entries
          .filter(({ entry }) => entry.timeMs >= (query.sinceMs ?? 0))
          .map(({ entry }) => ({ ...entry, sessionId })),
        truncated: false,
      }));
    return Promise.resolve(latestOf(pages, query));
  }

  sweep(beforeMs: number): Promise<number> {
    const all = [...this.runtimes].flatMap(([runtimeId, sessions]) =>
      [...sessions].map(([sessionId, log]) => ({ runtimeId, sessionId, log })),
    );
    // Those that wrote last longest ago first.
    all.sort((first, second) => lastWriteMs(first.log) - lastWriteMs(second.log));
    let totalBytes = all.reduce((sum, { log }) => sum + log.bytes, 0);
    let removed = 0;
    for (const { runtimeId, sessionId, log } of all) {
      if (lastWriteMs(log) >= beforeMs && totalBytes <= this.settings.totalBytes) break;
      this.runtimes.get(runtimeId)?.delete(sessionId);
      totalBytes -= log.bytes;
      removed += 1;
    }
    return Promise.resolve(removed);
  }

  removeRuntime(runtimeId: string): Promise<void> {
    this.runtimes.delete(runtimeId);
    return Promise.resolve();
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }

  private sessionLog(session: SessionLogRef): SessionLog {
    let sessions = this.runtimes.get(session.runtimeId);
    if (sessions === undefined) {
      sessions = new Map();
      this.runtimes.set(session.runtimeId, sessions);
    }
    let log = sessions.get(session.sessionId);
    if (log === undefined) {
      log = { entries: [], bytes: 0 };
      sessions.set(session.sessionId, log);
    }
    return log;
  }
}

function lastWriteMs(log: SessionLog): number {
  return log.entries.at(-1)?.entry.timeMs ?? 0;
}
