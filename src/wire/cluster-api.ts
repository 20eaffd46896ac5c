import type { NodeRecord } from "../core/cluster/cluster-store.ts";
import { BerthError } from "../core/errors.ts";
import { operation, type Operation } from "./operation.ts";

/** The cluster as the operator API shows it (core/cluster), or a lone Berth as a cluster of one. */
export interface ClusterView {
  /** This node's name. */
  readonly nodeName: string;
  listNodes(): Promise<NodeRecord[]>;
  /** False when no node has that name. */
  setDraining(name: string, draining: boolean): Promise<boolean>;
}

/** Berth's own operator API for the nodes: `berth nodes list`, `drain`, `resume`. */
export function nodeOperations(cluster: ClusterView): Operation[] {
  const setDraining = (draining: boolean) => async (input: { params: Record<string, string> }) => {
    const name = input.params["name"] ?? "";
    if (!(await cluster.setDraining(name, draining))) {
      throw new BerthError(
        "ResourceNotFoundException",
        `No node named ${name} in the cluster (berth nodes list shows their names)`,
      );
    }
    return {};
  };
  return [
    operation("ListNodes", "GET", "/berth/v1/nodes", 200, async () => ({
      nodes: (await cluster.listNodes()).map(describeNode),
    })),
    operation("DrainNode", "POST", "/berth/v1/nodes/:name/drain", 200, setDraining(true)),
    operation("ResumeNode", "POST", "/berth/v1/nodes/:name/resume", 200, setDraining(false)),
  ];
}

/** What the API shows of a node: never its incarnation, an internal detail. */
function describeNode(node: NodeRecord) {
  return {
    name: node.name,
    id: node.id,
    url: node.url,
    state: !node.live ? "gone" : node.draining ? "draining" : "active",
    runningSessions: node.runningSessions,
    maxSessions: node.capacity.maxSessions,
    memoryBytes: node.capacity.memoryBytes,
    heartbeatAt: node.heartbeatAt,
  };
}
