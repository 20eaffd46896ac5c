import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { waitFor } from "./support/agents.ts";
import { berthBin, credentialsIn } from "./support/berth-process.ts";
import { clusterMissing, startTestCluster, type TestCluster } from "./support/cluster.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";
import { ShellTestClient } from "./support/shell-client.ts";
import { opened, RefusedUpgrade, sessionIdHeader, signUpgrade } from "./support/websockets.ts";
import { WebSocket } from "ws";

const run = promisify(execFile);

/*
 * Three Berth nodes, each in a network namespace of its own (as separate hosts), sharing a real
 * PostgreSQL and a real Ceph RGW: any node serves any session, a lost node costs a restart.
 * Leases are 4 s and checkpoints every 2 s, so failovers happen within a test's patience.
 */
describe("a cluster of three nodes", { skip: clusterMissing() }, () => {
  let cluster: TestCluster | undefined;
  const started = (): TestCluster => {
    if (cluster === undefined) throw new Error("started in before()");
    return cluster;
  };
  const node = (index: number) => {
    const found = started().nodes[index];
    if (found === undefined) throw new Error(`no node ${index}`);
    return found;
  };

  before(async () => {
    cluster = await startTestCluster(3);
  });

  after(async () => {
    await cluster?.stop();
  });

  /**
   * Starts a streaming invocation of the probe through node `through` and reads its first event
   * (as text); the probe holds its other two back until `key` is released.
   */
  async function startStream(through: number, arn: string, sessionId: string, key: string) {
    const response = await node(through).data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: sessionId,
        payload: Buffer.from(JSON.stringify({ action: "stream", key, count: 3 })),
      }),
    );
    const reader = (response.response as AsyncIterable<Uint8Array>)[Symbol.asyncIterator]();
    const first = await reader.next();
    return { reader, first: Buffer.from(first.value as Uint8Array).toString("utf8") };
  }

  /** A probe runtime with session storage, created through node `through`, ready. */
  async function createRuntime(through = 0): Promise<{ id: string; arn: string }> {
    const { control } = node(through);
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `cluster_${process.pid}_${Math.floor(Math.random() * 1e9)}`,
        agentRuntimeArtifact: started().probeArtifact,
        roleArn: undefined,
        networkConfiguration: { networkMode: "PUBLIC" },
        ...workspace,
      }),
    );
    const id = created.agentRuntimeId ?? "";
    await waitFor("the runtime to be ready", async () => {
      const got = await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: id }));
      if (got.status === "CREATE_FAILED") throw new Error(got.failureReason);
      return got.status === "READY";
    });
    return { id, arn: created.agentRuntimeArn ?? "" };
  }

  /** The runtime's sessions as ListSessions answers through node `through` (every node's). */
  async function sessionsOf(runtimeId: string, through = 0) {
    const answer = await sendRaw(node(through).url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtimeId}/sessions`,
      credentials: credentialsIn(node(0).dataDir),
    });
    assert.equal(answer.status, 200, answer.body);
    return (JSON.parse(answer.body) as { sessions: { sessionId: string; node: string }[] })
      .sessions;
  }

  /** The node a session runs on, by name. */
  async function ownerOf(
    runtimeId: string,
    sessionId: string,
    through = 0,
  ): Promise<string | undefined> {
    const all = await sessionsOf(runtimeId, through);
    return all.find((session) => session.sessionId === sessionId)?.node;
  }

  /** Retries `attempt` through `data` until it succeeds (a failover under way answers errors). */
  async function untilServed<T>(what: string, attempt: () => Promise<T>): Promise<T> {
    let last: unknown;
    return waitFor(
      what,
      async () => {
        try {
          return await attempt();
        } catch (error) {
          last = error;
          return undefined;
        }
      },
      60_000,
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; last error: ${String(last)}`);
    });
  }

  async function berthCli(args: string[], through = 0): Promise<string> {
    const credentials = credentialsIn(node(0).dataDir);
    const { stdout } = await run(process.execPath, [berthBin, ...args], {
      env: {
        PATH: process.env["PATH"],
        HOME: process.env["HOME"],
        AWS_ACCESS_KEY_ID: credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
        AWS_REGION: "us-east-1",
        BERTH_ENDPOINT: node(through).url,
      },
    });
    return stdout;
  }

  it("serves a session created through A, invoked through B and commanded through C", async () => {
    const runtime = await createRuntime(0);
    const sessionId = newSessionId("abc");
    const wrote = await invokeProbe(node(1).data, runtime.arn, sessionId, {
      action: "write",
      path: "/mnt/workspace/note.txt",
      content: "written through B",
    });
    assert.equal(wrote["error"], undefined);
    const command = await runCommand(
      node(2).data,
      runtime.arn,
      sessionId,
      "cat /mnt/workspace/note.txt; echo; for i in 1 2 3; do echo line $i; done",
    );
    assert.equal(command.exitCode, 0, command.stderr);
    assert.equal(command.stdout, "written through B\nline 1\nline 2\nline 3\n");
    // Streamed across the hop: more than the start and the end arrived as events of their own.
    assert.ok(command.events.length >= 3, `${command.events.length} events`);
    const owner = await ownerOf(runtime.id, sessionId);
    assert.ok(owner !== undefined, "the session is listed, with its node");
    for (const through of [0, 1, 2]) {
      const listed = (await sessionsOf(runtime.id, through)).filter(
        (session) => session.sessionId === sessionId,
      );
      assert.deepEqual(
        listed.map((session) => session.node),
        [owner],
        `node ${through} lists it once`,
      );
    }
    const stopped = await node(0).data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: sessionId }),
    );
    assert.equal(stopped.runtimeSessionId, sessionId);
    assert.equal(await ownerOf(runtime.id, sessionId), undefined);
  });

  it("opens a shell (and refuses the agent's WebSocket) through a node that does not own the session", async () => {
    const runtime = await createRuntime(0);
    const sessionId = newSessionId("shell");
    await invokeProbe(node(0).data, runtime.arn, sessionId, { action: "whoami" });
    const owner = await ownerOf(runtime.id, sessionId);
    const other = started().nodes.findIndex((candidate) => candidate.name !== owner);
    const target = (path: string) => ({
      endpoint: node(other).url,
      credentials: credentialsIn(node(0).dataDir),
      region: "us-east-1",
      path: `/runtimes/${encodeURIComponent(runtime.arn)}${path}`,
    });
    const upgrade = await signUpgrade(target("/ws/shells"), { [sessionIdHeader]: sessionId });
    const shell = await ShellTestClient.open(upgrade.url, { headers: upgrade.headers });
    assert.equal((await shell.status(0)).shellId.length > 0, true);
    shell.type("echo forwarded-$((6*7)) $(hostname)\n");
    await shell.until("forwarded-42 sandbox");
    shell.type("exit 4\n");
    const { status } = await shell.finalStatus();
    assert.equal(status?.exitCode, 4);
    // The probe has no /ws: the owner's refusal comes back through the hop as it was.
    const refused = await signUpgrade(target("/ws"), { [sessionIdHeader]: sessionId });
    const error = await opened(new WebSocket(refused.url, { headers: refused.headers })).then(
      () => assert.fail("the upgrade was accepted"),
      (failure: unknown) => failure,
    );
    assert.ok(error instanceof RefusedUpgrade, String(error));
    assert.equal(error.errorType, "RuntimeClientError");
    assert.equal(await ownerOf(runtime.id, sessionId), owner, "the session did not move");
  });

  it("keeps a raw MCP client (no session header, its Mcp-Session-Id only) in one session through every node", async () => {
    const { control } = node(0);
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `cluster_mcp_${process.pid}_${Math.floor(Math.random() * 1e9)}`,
        agentRuntimeArtifact: started().probeArtifact, // answers any path, listens on PORT
        roleArn: undefined,
        protocolConfiguration: { serverProtocol: "MCP" },
      }),
    );
    const runtimeId = created.agentRuntimeId ?? "";
    await waitFor("the runtime to be ready", async () => {
      const got = await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }));
      return got.status === "READY";
    });
    const mcpPost = (through: number, sessionHeader: Record<string, string>) =>
      sendRaw(node(through).url, {
        method: "POST",
        path: `/runtimes/${encodeURIComponent(created.agentRuntimeArn ?? "")}/invocations`,
        credentials: credentialsIn(node(0).dataDir),
        headers: { accept: "application/json, text/event-stream", ...sessionHeader },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize" }),
      });
    const first = await mcpPost(1, {});
    assert.equal(first.status, 200, first.body);
    const mcpSessionId = String(first.headers["mcp-session-id"] ?? "");
    assert.ok(mcpSessionId.length >= 33, `Mcp-Session-Id ${mcpSessionId}`);
    for (const through of [0, 2, 1]) {
      const next = await mcpPost(through, { "mcp-session-id": mcpSessionId });
      assert.equal(next.status, 200, next.body);
      assert.equal(next.headers["mcp-session-id"], mcpSessionId);
      assert.equal((JSON.parse(next.body) as { url: string }).url, "/mcp");
    }
    const listed = await sessionsOf(runtimeId);
    assert.deepEqual(
      listed.map((session) => session.sessionId),
      [mcpSessionId],
    );
  });

  it("streams an invocation through another node as it is produced, and cancels across the hop", async () => {
    const runtime = await createRuntime(1);
    const sessionId = newSessionId("stream");
    await invokeProbe(node(0).data, runtime.arn, sessionId, { action: "whoami" });
    const owner = await ownerOf(runtime.id, sessionId);
    const through = [0, 1, 2].find((index) => node(index).name !== owner) ?? 0;
    const { reader, first } = await startStream(through, runtime.arn, sessionId, "k1");
    // The first event arrived while the agent still holds the rest back: the hop buffers nothing.
    assert.match(first, /"n":1/);
    await invokeProbe(node(through).data, runtime.arn, sessionId, {
      action: "release",
      key: "k1",
    });
    let rest = "";
    for (;;) {
      const next = await reader.next();
      if (next.done === true) break;
      rest += Buffer.from(next.value).toString("utf8");
    }
    assert.match(rest, /"n":3/);
  });

  it("places new sessions on the least loaded nodes", async () => {
    const runtime = await createRuntime(0);
    const sessions = Array.from({ length: 6 }, (_, index) => newSessionId(`spread${index}`));
    for (const sessionId of sessions) {
      await invokeProbe(node(0).data, runtime.arn, sessionId, { action: "whoami" });
    }
    const listed = await sessionsOf(runtime.id);
    const perNode = new Map<string, number>();
    for (const session of listed) perNode.set(session.node, (perNode.get(session.node) ?? 0) + 1);
    assert.deepEqual(
      [...perNode.values()].sort(),
      [2, 2, 2],
      `sessions per node: ${JSON.stringify(Object.fromEntries(perNode))}`,
    );
    await Promise.all(
      sessions.map((sessionId) =>
        node(0).data.send(
          new StopRuntimeSessionCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId: sessionId,
          }),
        ),
      ),
    );
  });

  it("drains a node: no new sessions there, its idle sessions move on their next request", async () => {
    const runtime = await createRuntime(0);
    const sessionId = newSessionId("drain");
    await invokeProbe(node(0).data, runtime.arn, sessionId, {
      action: "write",
      path: "/mnt/workspace/kept.txt",
      content: "kept across the move",
    });
    const owner = (await ownerOf(runtime.id, sessionId)) ?? "";
    await berthCli(["nodes", "drain", owner]);
    const listed = JSON.parse(await berthCli(["nodes", "list", "--json"])) as {
      nodes: { name: string; state: string }[];
    };
    assert.equal(listed.nodes.find((entry) => entry.name === owner)?.state, "draining");
    try {
      await waitFor("the idle session to leave the draining node", async () =>
        (await ownerOf(runtime.id, sessionId)) === undefined ? true : undefined,
      );
      const read = await invokeProbe(node(0).data, runtime.arn, sessionId, {
        action: "read",
        path: "/mnt/workspace/kept.txt",
      });
      assert.equal(read["ok"], "kept across the move");
      const movedTo = await ownerOf(runtime.id, sessionId);
      assert.ok(movedTo !== undefined && movedTo !== owner, `moved to ${movedTo}`);
      for (let index = 0; index < 4; index += 1) {
        const fresh = newSessionId(`afterdrain${index}`);
        await invokeProbe(node(0).data, runtime.arn, fresh, { action: "whoami" });
        assert.notEqual(await ownerOf(runtime.id, fresh), owner, "nothing new on a draining node");
      }
    } finally {
      await berthCli(["nodes", "resume", owner]);
    }
  });

  /**
   * Writes `content` to the session's workspace and waits until a generation whose clone was
   * taken after the write is durable: a generation is seen to complete after the write, then
   * (checkpoints of a volume run one at a time) the next one, after one more small write.
   */
  async function writeDurably(
    runtime: { id: string; arn: string },
    sessionId: string,
    file: string,
    content: string,
  ): Promise<number> {
    let owner = 0;
    for (const [name, text] of [
      [file, content],
      [".sync", "1"],
    ] as const) {
      await invokeProbe(node(0).data, runtime.arn, sessionId, {
        action: "write",
        path: `/mnt/workspace/${name}`,
        content: text,
      });
      owner = indexOf((await ownerOf(runtime.id, sessionId)) ?? "");
      const written = await generationOf(runtime.id, sessionId, owner);
      await waitFor("a checkpoint after the write", async () =>
        (await generationOf(runtime.id, sessionId, owner)) > written ? true : undefined,
      );
    }
    return owner;
  }

  /** The last durable generation of the session's volume, as its owner reports it. */
  async function generationOf(runtimeId: string, sessionId: string, owner: number) {
    const answer = await sendRaw(node(owner).url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtimeId}/storage`,
      credentials: credentialsIn(node(0).dataDir),
    });
    const volume = (
      JSON.parse(answer.body) as {
        storage: { sessionId: string; replica?: { generation: number } }[];
      }
    ).storage.find((entry) => entry.sessionId === sessionId);
    return volume?.replica?.generation ?? 0;
  }

  const indexOf = (name: string): number => Number(name.replace("node-", ""));
  const others = (index: number): number[] => [0, 1, 2].filter((other) => other !== index);

  /** When node `index` first logged `message` (ms since the epoch), if it did. */
  function loggedAt(index: number, message: string, after = 0): number | undefined {
    const line = node(index).process.lines.find(
      (entry) => entry["msg"] === message && Date.parse(String(entry["time"])) >= after,
    );
    return line === undefined ? undefined : Date.parse(String(line["time"]));
  }

  it("resumes a session on another node after kill -9 of its owner mid-stream, with its workspace as of its last checkpoint", async () => {
    const runtime = await createRuntime(0);
    const sessionId = newSessionId("failover");
    const owner = await writeDurably(runtime, sessionId, "kept.txt", "durable before the crash");
    const [through = 0, then = 0] = others(owner);
    const { reader } = await startStream(through, runtime.arn, sessionId, "k2");
    await started().kill(owner);
    try {
      // The stream through the other node breaks off: its owner is gone.
      const broke = await (async () => {
        for (;;) if ((await reader.next()).done === true) return false;
      })().catch(() => true);
      assert.ok(broke, "the stream broke off instead of ending as if complete");
      const read = await untilServed("the session to start on another node", () =>
        invokeProbe(node(then).data, runtime.arn, sessionId, {
          action: "read",
          path: "/mnt/workspace/kept.txt",
        }),
      );
      assert.equal(read["ok"], "durable before the crash");
      const movedTo = await ownerOf(runtime.id, sessionId, then);
      assert.ok(movedTo !== undefined && movedTo !== node(owner).name, `now on ${movedTo}`);
    } finally {
      await started().restart(owner);
    }
  });

  it("never runs a session on two nodes when its owner is cut off, and refuses the cut-off node's late checkpoint", async () => {
    const runtime = await createRuntime(0);
    const sessionId = newSessionId("partition");
    const owner = await writeDurably(runtime, sessionId, "a.txt", "before the partition");
    const [through = 0] = others(owner);
    // A write inside the sandbox a moment after the cut: only the cut-off node ever has it.
    await runCommand(
      node(owner).data,
      runtime.arn,
      sessionId,
      "setsid sh -c 'sleep 1; echo late > /mnt/workspace/late.txt' > /dev/null 2>&1 &",
    );
    const cutAt = Date.now();
    await started().network.partition(owner);
    try {
      const moved = await untilServed("the session to start on another node", () =>
        invokeProbe(node(through).data, runtime.arn, sessionId, {
          action: "write",
          path: "/mnt/workspace/b.txt",
          content: "after the partition",
        }),
      );
      assert.equal(moved["error"], undefined);
      const gaveUpAt = loggedAt(owner, "giving up every session", cutAt);
      const newOwner = indexOf((await ownerOf(runtime.id, sessionId, through)) ?? "");
      const startedAt = loggedAt(newOwner, "session taken over", cutAt);
      assert.ok(gaveUpAt !== undefined, "the cut-off node gave its sessions up by itself");
      assert.ok(startedAt !== undefined, "another node took the session over");
      assert.ok(gaveUpAt < startedAt, `given up at ${gaveUpAt}, taken over at ${startedAt}`);
    } finally {
      await started().network.heal(owner);
    }
    await waitFor(
      "the healed node's late checkpoint to be refused",
      () =>
        node(owner).process.lines.some((line) =>
          /another Berth process owns the volume|taken over by another Berth process/.test(
            String(line["msg"]),
          ),
        ) || undefined,
      90_000,
    );
    const listing = await runCommand(
      node(through).data,
      runtime.arn,
      sessionId,
      "ls /mnt/workspace",
    );
    assert.deepEqual(listing.stdout.split("\n").filter(Boolean).sort(), ["a.txt", "b.txt"]);
  });

  it("rides out a PostgreSQL restart under load: sessions keep running, nodes recover by themselves", async () => {
    // A node cut off by an earlier test has rejoined first.
    await waitFor(
      "every node to be active",
      async () => (await activeNodes()) === 3 || undefined,
      60_000,
    );
    const runtime = await createRuntime(0);
    const warm = newSessionId("warm");
    const before = await invokeProbe(node(1).data, runtime.arn, warm, { action: "whoami" });
    const loadOver = new AbortController();
    let served = 0;
    const load = (async () => {
      while (!loadOver.signal.aborted) {
        await invokeProbe(node(served % 3).data, runtime.arn, warm, { action: "whoami" })
          .then(() => (served += 1))
          .catch(() => undefined);
      }
    })();
    await started().postgres.restart();
    const servedAtRestart = served;
    for (const index of [0, 1, 2]) {
      await untilServed(`a new session through node ${index}`, () =>
        invokeProbe(node(index).data, runtime.arn, newSessionId(`afterpg${index}`), {
          action: "whoami",
        }),
      );
    }
    loadOver.abort();
    await load;
    assert.ok(served > servedAtRestart, "the warm session was served after the restart");
    const after = await invokeProbe(node(2).data, runtime.arn, warm, { action: "whoami" });
    assert.equal(after["pid"], before["pid"], "the warm session never restarted");
    assert.equal(await activeNodes(), 3);
  });

  async function activeNodes(): Promise<number> {
    const listed = JSON.parse(await berthCli(["nodes", "list", "--json"], 2)) as {
      nodes: { state: string }[];
    };
    return listed.nodes.filter((entry) => entry.state === "active").length;
  }
});
