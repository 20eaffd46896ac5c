import { ListAgentRuntimesCommand } from "@aws-sdk/client-bedrock-agentcore-control";
import type { Connection } from "./connection.ts";
import { BerthApiError } from "./errors.ts";
import type { RuntimeRef } from "./runtimes.ts";

/** One session as ListSessions reported it, at the moment it was asked. */
export interface SessionSample {
  runtimeName: string;
  runtimeId: string;
  sessionId: string;
  node: string;
  state: string;
  cpuSeconds: number | undefined;
  memoryBytes: number | undefined;
  storageUsedBytes: number | undefined;
  startedAt: string;
  lastActivityAt: string;
  activeRequests: number;
}

/** Every session of some runtimes, as listed at one moment. */
export interface Snapshot {
  /** The client's monotonic clock when the answers were in (CPU % is measured against it). */
  takenAtMs: number;
  sessions: SessionSample[];
  /** Nodes of a cluster that did not answer: their sessions are missing. */
  unreachableNodes: string[];
}

/** A session as `berth top` shows it. */
export interface TopRow {
  runtime: string;
  session: string;
  node: string;
  state: string;
  /** CPU used between the last two snapshots, in % of one CPU; undefined after only one. */
  cpuPercent: number | undefined;
  memoryBytes: number | undefined;
  storageUsedBytes: number | undefined;
  ageSeconds: number;
  /** Undefined while a request is using the session. */
  idleSeconds: number | undefined;
}

/** Every runtime, page after page (runtimes come and go: asked again at each refresh). */
export async function allRuntimes(connection: Connection): Promise<RuntimeRef[]> {
  const runtimes: RuntimeRef[] = [];
  let nextToken: string | undefined;
  do {
    const page = await connection.control.send(new ListAgentRuntimesCommand({ nextToken }));
    for (const runtime of page.agentRuntimes ?? []) {
      runtimes.push({
        id: runtime.agentRuntimeId ?? "",
        arn: runtime.agentRuntimeArn ?? "",
        name: runtime.agentRuntimeName ?? "",
      });
    }
    nextToken = page.nextToken;
  } while (nextToken !== undefined);
  return runtimes;
}

/** Lists the sessions of these runtimes (ListSessions: every node's, in a cluster). */
export async function takeSnapshot(
  connection: Connection,
  runtimes: readonly RuntimeRef[],
): Promise<Snapshot> {
  const answers = await Promise.all(
    runtimes.map(async (runtime) => ({
      runtime,
      answer: await connection
        .berthApi("GET", `/berth/v1/runtimes/${encodeURIComponent(runtime.id)}/sessions`)
        .catch((error: unknown): Record<string, unknown> => {
          // Deleted since it was listed: it has no sessions to show.
          if (error instanceof BerthApiError && error.name === "ResourceNotFoundException")
            return {};
          throw error;
        }),
    })),
  );
  const unreachable = new Set<string>();
  const sessions = answers.flatMap(({ runtime, answer }) => {
    for (const node of (answer["unreachableNodes"] ?? []) as string[]) unreachable.add(node);
    return ((answer["sessions"] ?? []) as Record<string, unknown>[]).map((session) =>
      sampleOf(runtime, session),
    );
  });
  return { takenAtMs: performance.now(), sessions, unreachableNodes: [...unreachable] };
}

function sampleOf(runtime: RuntimeRef, session: Record<string, unknown>): SessionSample {
  const usage = (session["usage"] ?? {}) as Record<string, unknown>;
  const numberOf = (value: unknown): number | undefined =>
    typeof value === "number" ? value : undefined;
  return {
    runtimeName: runtime.name,
    runtimeId: runtime.id,
    sessionId: String(session["sessionId"]),
    node: typeof session["node"] === "string" ? session["node"] : "",
    state: String(session["state"]),
    cpuSeconds: numberOf(usage["cpuSeconds"]),
    memoryBytes: numberOf(usage["memoryBytes"]),
    storageUsedBytes: numberOf(usage["storageUsedBytes"]),
    startedAt: String(session["startedAt"]),
    lastActivityAt: String(session["lastActivityAt"]),
    activeRequests: numberOf(session["activeRequests"]) ?? 0,
  };
}

/**
 * The rows to show: CPU % from the CPU time each session used since the previous snapshot, the
 * busiest first (then the largest), age and idle time by `nowMs` (the wall clock).
 */
export function topRows(
  previous: Snapshot | undefined,
  current: Snapshot,
  nowMs: number,
): TopRow[] {
  const before = new Map(previous?.sessions.map((session) => [keyOf(session), session]));
  const elapsedSeconds =
    previous === undefined ? 0 : (current.takenAtMs - previous.takenAtMs) / 1000;
  const rows = current.sessions.map((session): TopRow => {
    const earlier = before.get(keyOf(session));
    return {
      runtime: session.runtimeName,
      session: session.sessionId,
      node: session.node,
      state: session.state,
      cpuPercent: cpuPercent(earlier?.cpuSeconds, session.cpuSeconds, elapsedSeconds),
      memoryBytes: session.memoryBytes,
      storageUsedBytes: session.storageUsedBytes,
      ageSeconds: secondsSince(session.startedAt, nowMs),
      idleSeconds:
        session.activeRequests > 0 ? undefined : secondsSince(session.lastActivityAt, nowMs),
    };
  });
  return rows.sort(
    (first, second) =>
      (second.cpuPercent ?? -1) - (first.cpuPercent ?? -1) ||
      (second.memoryBytes ?? -1) - (first.memoryBytes ?? -1) ||
      first.runtime.localeCompare(second.runtime) ||
      first.session.localeCompare(second.session),
  );
}

/** The same session on the same node: one that moved or restarted starts its count afresh. */
function keyOf(session: SessionSample): string {
  return `${session.runtimeId}\u0000${session.sessionId}\u0000${session.node}\u0000${session.startedAt}`;
}

function cpuPercent(
  before: number | undefined,
  now: number | undefined,
  elapsedSeconds: number,
): number | undefined {
  if (before === undefined || now === undefined || elapsedSeconds <= 0 || now < before)
    return undefined;
  return ((now - before) / elapsedSeconds) * 100;
}

function secondsSince(time: string, nowMs: number): number {
  const thenMs = Date.parse(time);
  return Number.isNaN(thenMs) ? 0 : Math.max(0, (nowMs - thenMs) / 1000);
}
