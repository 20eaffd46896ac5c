import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { waitFor } from "./support/agents.ts";
import { credentialsIn } from "./support/berth-process.ts";
import { clusterMissing, startTestCluster, type TestCluster } from "./support/cluster.ts";
import { invokeProbe } from "./support/commands.ts";
import { newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

/*
 * Two Berth nodes sharing a real PostgreSQL and a real Ceph RGW, each in a network namespace of
 * its own: a session's log is kept by the node that ran it, and read through either.
 */
describe("agents' logs in a cluster of two nodes", { skip: clusterMissing() }, () => {
  let cluster: TestCluster | undefined;
  const node = (index: number) => {
    const found = cluster?.nodes[index];
    if (found === undefined) throw new Error(`no node ${index} (started in before())`);
    return found;
  };

  before(async () => {
    cluster = await startTestCluster(2);
  });
  after(async () => {
    await cluster?.stop();
  });

  /** A signed request to Berth's own API through node `through`, its JSON answer. */
  async function berthApi(through: number, method: string, path: string) {
    const answer = await sendRaw(node(through).url, {
      method,
      path,
      credentials: credentialsIn(node(0).dataDir),
    });
    assert.equal(answer.status, 200, answer.body);
    return JSON.parse(answer.body) as Record<string, unknown>;
  }

  it("reads a session's lines through a node that did not run it, after it ended", async () => {
    const { control, data } = node(0);
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `cluster_logs_${process.pid}`,
        agentRuntimeArtifact: cluster?.probeArtifact,
        roleArn: undefined,
        networkConfiguration: { networkMode: "PUBLIC" },
      }),
    );
    const runtimeId = created.agentRuntimeId ?? "";
    await waitFor("the runtime to be ready", async () => {
      const got = await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }));
      return got.status === "READY";
    });
    // With node-0 draining, the session starts on node-1, though asked for through node-0.
    await berthApi(0, "POST", "/berth/v1/nodes/node-0/drain");
    const session = newSessionId("cluster-logs");
    try {
      await invokeProbe(data, created.agentRuntimeArn ?? "", session, { action: "whoami" });
    } finally {
      await berthApi(0, "POST", "/berth/v1/nodes/node-0/resume");
    }
    // Node-0 lists other nodes' sessions from its view of the cluster, which takes in a node that
    // joined a moment ago at its next heartbeat.
    const listedOn = await waitFor("node-0 to list the session with its node", async () => {
      const listed = (await berthApi(0, "GET", `/berth/v1/runtimes/${runtimeId}/sessions`)) as {
        sessions: { sessionId: string; node: string }[];
      };
      return listed.sessions.find((entry) => entry.sessionId === session)?.node;
    });
    assert.equal(listedOn, "node-1");
    // The agent exits with a last line on stderr: its session ends on node-1.
    await invokeProbe(data, created.agentRuntimeArn ?? "", session, {
      action: "exit",
      code: 4,
    }).catch(() => undefined);

    const read = (through: number, query: string) =>
      berthApi(through, "GET", `/berth/v1/runtimes/${runtimeId}/logs?${query}`) as Promise<{
        lines: { sessionId: string; stream: string; line: string }[];
      }>;
    const lines = await waitFor("the session's end, read through node-0", async () => {
      const found = (await read(0, `sessionId=${session}`)).lines;
      return found.at(-1)?.line.startsWith("session ended") === true ? found : undefined;
    });
    assert.deepEqual(
      lines.slice(-2).map((line) => `${line.stream}: ${line.line}`),
      ["stderr: probe: exiting with 4", "berth: session ended: the agent exited (exit code 4)"],
    );
    // Every session of the runtime, through node-0: node-1's lines among them.
    const everyone = (await read(0, "")).lines;
    assert.ok(everyone.some((line) => line.line === "probe: exiting with 4"));
    // Node-0 alone holds none of them: what node-0 answered came from node-1.
    const following = await sendRaw(node(0).url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtimeId}/logs?sessionId=${session}&follow=true`,
      credentials: credentialsIn(node(0).dataDir),
    });
    assert.deepEqual(
      following.body
        .trim()
        .split("\n")
        .map((text) => (JSON.parse(text) as { end?: string }).end),
      ["session-not-running"],
      "a follow serves the node it reached only",
    );
  });
});
