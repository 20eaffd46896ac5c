import { randomBytes } from "node:crypto";
import { BedrockAgentCoreClient } from "@aws-sdk/client-bedrock-agentcore";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { credentialsIn, killAll, type BerthProcess } from "./berth-process.ts";
import { makeDataDir, removeDir } from "./berth.ts";
import { cephMissing, putProbeZip, startCephS3, type CephS3 } from "./ceph-s3.ts";
import { createTestNetwork, netnsMissing, serveInNamespace, type TestNetwork } from "./netns.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "./postgres.ts";

/** Why a test cluster cannot run here, if it cannot. */
export function clusterMissing(): string | undefined {
  return netnsMissing() ?? postgresMissing() ?? cephMissing();
}

/** One Berth node of a test cluster, in a network namespace of its own, as on a host. */
export interface TestNode {
  name: string;
  dataDir: string;
  process: BerthProcess;
  url: string;
  /** Official SDK clients signed with the cluster's one key pair, pointed at this node. */
  data: BedrockAgentCoreClient;
  control: BedrockAgentCoreControlClient;
}

export interface TestCluster {
  network: TestNetwork;
  postgres: TestPostgres;
  ceph: CephS3;
  nodes: TestNode[];
  /** The probe agent (test/agents/probe) as codeConfiguration.code.s3 names it. */
  probeArtifact: {
    codeConfiguration: {
      code: { s3: { bucket: string; prefix: string } };
      runtime: "NODE_22";
      entryPoint: string[];
    };
  };
  /** Starts node `index` again (after a kill) on its data directory. */
  restart(index: number): Promise<TestNode>;
  /** `kill -9` of node `index`. */
  kill(index: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Three (or `nodeCount`) `berth serve` nodes, each in a network namespace with its own address,
 * sharing a real PostgreSQL and a real Ceph RGW that listen on the bridge. Nodes start one after
 * the other: the first generates the key pair every node then shares through the object store.
 */
export async function startTestCluster(
  nodeCount: number,
  extraArgs: string[] = [],
): Promise<TestCluster> {
  const cleanups: (() => Promise<void> | void)[] = [];
  const stop = async (): Promise<void> => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    const network = await createTestNetwork(nodeCount);
    cleanups.push(() => network.destroy());
    const postgres = await startPostgres({ host: network.hostAddress });
    cleanups.push(() => postgres.stop());
    const ceph = await startCephS3({ host: network.hostAddress });
    cleanups.push(() => ceph.stop());
    await ceph.bucket("berth-cluster");
    await ceph.bucket("agents");
    await putProbeZip(ceph, "agents", "probe.zip");
    const databaseUrl = await postgres.freshDatabase();
    const secret = randomBytes(32).toString("hex");
    const args = (index: number, dataDir: string): string[] => [
      ...ceph.berthArgs("s3://berth-cluster/cluster"),
      "--database-url",
      databaseUrl,
      "--data-dir",
      dataDir,
      "--node-name",
      `node-${index}`,
      "--node-lease-seconds",
      "4",
      "--session-storage-checkpoint-seconds",
      "2",
      "--sandbox-outbound",
      "none",
      ...extraArgs,
    ];
    const dataDirs = network.nodes.map(() => makeDataDir());
    cleanups.push(() => {
      for (const dir of dataDirs) removeDir(dir);
    });
    // Cleanups run last first: the nodes are killed before their data directories go.
    const processes: BerthProcess[] = [];
    cleanups.push(() => killAll(processes));
    const start = async (index: number): Promise<BerthProcess> => {
      const node = network.nodes[index];
      const dataDir = dataDirs[index];
      if (node === undefined || dataDir === undefined) throw new Error(`no node ${index}`);
      const started = await serveInNamespace(node, args(index, dataDir), {
        env: { BERTH_CLUSTER_SECRET: secret },
      });
      processes.push(started);
      return started;
    };
    const clientsFor = (index: number, started: BerthProcess): TestNode => {
      const dataDir = dataDirs[index] ?? "";
      const credentials = credentialsIn(dataDir);
      const config = { endpoint: started.url, region: "us-east-1", credentials, maxAttempts: 1 };
      return {
        name: `node-${index}`,
        dataDir,
        process: started,
        url: started.url,
        data: new BedrockAgentCoreClient(config),
        control: new BedrockAgentCoreControlClient(config),
      };
    };
    const nodes: TestNode[] = [];
    for (let index = 0; index < nodeCount; index += 1) {
      nodes.push(clientsFor(index, await start(index)));
    }
    return {
      network,
      postgres,
      ceph,
      nodes,
      probeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix: "probe.zip" } },
          runtime: "NODE_22",
          entryPoint: ["main.js"],
        },
      },
      restart: async (index) => {
        const node = clientsFor(index, await start(index));
        nodes[index] = node;
        return node;
      },
      kill: async (index) => {
        const node = nodes[index];
        if (node === undefined) throw new Error(`no node ${index}`);
        await killAll([node.process]);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}
