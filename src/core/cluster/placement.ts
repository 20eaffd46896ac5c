import type { NodeRecord } from "./cluster-store.ts";

/**
 * Where a new session goes: the live node, not draining, with the most room left relative to
 * its capacity; on a tie the node the request arrived at, which saves a hop. Undefined when
 * every node is full or draining.
 */
export function leastLoaded(nodes: readonly NodeRecord[], here: string): NodeRecord | undefined {
  let best: NodeRecord | undefined;
  for (const node of nodes) {
    if (!node.live || node.draining || sessionsOf(node) >= node.capacity.maxSessions) continue;
    if (best === undefined || isLessLoaded(node, best, here)) best = node;
  }
  return best;
}

function isLessLoaded(node: NodeRecord, than: NodeRecord, here: string): boolean {
  const load = loadOf(node);
  const other = loadOf(than);
  return load < other || (load === other && node.id === here);
}

const loadOf = (node: NodeRecord): number => sessionsOf(node) / node.capacity.maxSessions;

/** Its sessions: those running as of its last heartbeat, or placed there since if more. */
const sessionsOf = (node: NodeRecord): number => Math.max(node.runningSessions, node.ownedSessions);
