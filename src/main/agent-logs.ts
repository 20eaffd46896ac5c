import { join } from "node:path";
import { FileAgentLogStore } from "../adapters/agent-logs/file-agent-log-store.ts";
import type { Settings } from "../config/settings.ts";
import { AgentLogs } from "../core/agent-logs.ts";
import type { Logger } from "../core/logger.ts";
import type { LogsElsewhere } from "../wire/agent-logs-api.ts";
import type { ClusterMembership } from "./cluster.ts";

/** Most bytes one node's answer to a read of logs may have (an answer holds 8 MiB of text). */
const maxAnswerBytes = 64 * 1024 * 1024;

/** Sessions' logs, kept in `<data-dir>/agent-logs` (docs/observability.md, "Agent logs"). */
export async function openAgentLogs(settings: Settings, log: Logger): Promise<AgentLogs> {
  const store = await FileAgentLogStore.open(
    join(settings.dataDir, "agent-logs"),
    { sessionBytes: settings.agentLogBytes, totalBytes: settings.agentLogTotalBytes },
    log,
  );
  return new AgentLogs({
    store,
    settings: {
      retentionMs: settings.agentLogRetentionSeconds * 1000,
      sweepIntervalMs: settings.agentLogSweepIntervalMs,
    },
    log,
  });
}

/**
 * Where a read of logs finds the lines other nodes of a cluster hold: each live node is asked
 * the same read, signed as a node (each keeps the logs of the sessions it ran).
 */
export function logsElsewhere(
  membership: ClusterMembership | undefined,
  nodeId: string,
  log: Logger,
): LogsElsewhere {
  if (membership === undefined) return { read: undefined };
  return {
    read: async (runtimeId, query) => {
      const others = (await membership.view.listNodes()).filter(
        (node) => node.live && node.id !== nodeId,
      );
      const target = `/berth/v1/runtimes/${encodeURIComponent(runtimeId)}/logs?${query.toString()}`;
      const answers = await Promise.all(
        others.map((node) =>
          membership.forwarder.getJson(node, target, maxAnswerBytes).catch((error: unknown) => {
            log.warn("a node did not answer a read of logs", {
              node: node.name,
              error: String(error),
            });
            return undefined;
          }),
        ),
      );
      return {
        answers: answers.filter((answer) => answer !== undefined),
        unreachableNodes: others
          .filter((_, index) => answers[index] === undefined)
          .map((node) => node.name),
      };
    },
  };
}
