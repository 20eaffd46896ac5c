// Berth as a cluster (issue 17), against baselines measured in the same run, on test clusters
// (test/support/cluster.ts): `berth serve` nodes, each in a network namespace of its own with
// its own address, sharing a real PostgreSQL and a real Ceph RGW on a bridge. Needs root. The
// agent is the probe (test/agents/probe); the clients are the official SDK's, with keep-alive.
// Prints JSON. Run one part with `node bench/cluster.ts forwarding|throughput|failover`, or all
// three without an argument.
//
// - forwarding: one warm session; an invocation and a command (`echo hi`) through a node that
//   does not own it (forwarded to the owner), against the same request sent to the owner itself,
//   interleaved. Settings: BENCH_SAMPLES (default 200).
// - throughput: new sessions started (first invocation answered) per second through a
//   round-robin of three nodes' endpoints, against the same on a cluster of one node (the same
//   PostgreSQL and object store path). Settings: BENCH_SESSIONS (60), BENCH_CONCURRENCY (12).
// - failover: a stopped session whose workspace holds ~130 MB started again on node X, X killed
//   with SIGKILL, and the time until another node first answers it (asked every 50 ms), next to
//   its parts: the lease, the restore from the object store, the agent's start. Settings:
//   BENCH_FAILOVERS (3), BENCH_LEASE_SECONDS (the test cluster's 4).
import { availableParallelism } from "node:os";
import { readFileSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import { Client } from "pg";
import { waitFor } from "../test/support/agents.ts";
import { credentialsIn } from "../test/support/berth-process.ts";
import { startTestCluster, type TestCluster, type TestNode } from "../test/support/cluster.ts";
import { invokeProbe, runCommand } from "../test/support/commands.ts";
import { createRuntime, newSessionId, workspace } from "../test/support/runtimes.ts";
import { sendRaw } from "../test/support/signed-request.ts";
import { percentiles, round, timeEach, timeInterleaved } from "./support.ts";

/**
 * ~130 MB of mixed files in the workspace: 80 MB of random bytes in 40 files (incompressible)
 * and 50 MB of log-like text in 50 files; prints MB used, the file count and a checksum of all.
 */
const fillWorkspace = [
  "set -e; cd /mnt/workspace; mkdir -p data logs",
  "for i in $(seq 1 40); do head -c 2000000 /dev/urandom > data/blob-$i.bin; done",
  'for i in $(seq 1 50); do seq -f "line %.0f: the agent wrote this while it worked on task $i" 1 30000 | head -c 1000000 > logs/log-$i.txt; done',
  "sync; du -sm /mnt/workspace | cut -f1; find data logs -type f | wc -l",
  "cat data/* logs/* | md5sum | cut -d' ' -f1",
].join("; ");

const parts = { forwarding, throughput, failover };
const chosen = process.argv[2];
if (chosen !== undefined && !(chosen in parts))
  throw new Error(`unknown part ${chosen}: one of ${Object.keys(parts).join(", ")}`);
const results: Record<string, unknown> = { cores: availableParallelism() };
for (const [name, part] of Object.entries(parts)) {
  if (chosen === undefined || chosen === name) results[name] = await part();
}
console.log(JSON.stringify(results, null, 2));

async function forwarding() {
  const samples = Number(process.env["BENCH_SAMPLES"] ?? 200);
  return withCluster(3, [], async (cluster) => {
    const runtime = await probeRuntime(cluster);
    const sessionId = newSessionId("bench-forwarding");
    await invokeProbe(nodeAt(cluster, 0).data, runtime.arn, sessionId, { action: "startup" });
    const owner = nodeNamed(cluster, await ownerOf(cluster, runtime.id, sessionId));
    const other = cluster.nodes.find((node) => node !== owner) ?? owner;
    const invoke = (node: TestNode) => () =>
      invokeProbe(node.data, runtime.arn, sessionId, { action: "startup" });
    const command = (node: TestNode) => async () => {
      const done = await runCommand(node.data, runtime.arn, sessionId, "echo hi");
      if (done.stdout !== "hi\n") throw new Error(`echo hi answered ${JSON.stringify(done)}`);
    };
    // Not timed: connections opened on both hops, the code paths compiled.
    await timeInterleaved(20, invoke(owner), invoke(other));
    await timeInterleaved(20, command(owner), command(other));
    const [directInvoke, forwardedInvoke] = await timeInterleaved(
      samples,
      invoke(owner),
      invoke(other),
    );
    const [directCommand, forwardedCommand] = await timeInterleaved(
      samples,
      command(owner),
      command(other),
    );
    await stopSessions(owner, runtime.arn, [sessionId]);
    return {
      owner: owner.name,
      forwardedThrough: other.name,
      invoke: compared(directInvoke, forwardedInvoke),
      command: compared(directCommand, forwardedCommand),
      // For reading the difference: what one query to PostgreSQL costs over the bridge.
      postgresQueryMs: latency(await queryRoundTrips(cluster.postgres.url, samples)),
    };
  });
}

/** `SELECT 1` on one connection, `count` times: one round trip to PostgreSQL each. */
async function queryRoundTrips(url: string, count: number): Promise<number[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return await timeEach(count, () => client.query("SELECT 1"));
  } finally {
    await client.end();
  }
}

/** The forwarded samples against the direct ones; the target is +1 ms at p50. */
function compared(direct: number[], forwarded: number[]) {
  const directMs = latency(direct);
  const forwardedMs = latency(forwarded);
  const addedP50Ms = round(forwardedMs.p50 - directMs.p50);
  return {
    directMs,
    forwardedMs,
    addedP50Ms,
    addedP95Ms: round(forwardedMs.p95 - directMs.p95),
    targetAddedP50Ms: 1,
    met: addedP50Ms <= 1,
  };
}

async function throughput() {
  const sessions = Number(process.env["BENCH_SESSIONS"] ?? 60);
  const concurrency = Number(process.env["BENCH_CONCURRENCY"] ?? 12);
  const threeNodes = await sessionsStarted(3, sessions, concurrency);
  const oneNode = await sessionsStarted(1, sessions, concurrency);
  const ratio = round(threeNodes.sessionsPerSecond / oneNode.sessionsPerSecond);
  return { sessions, concurrency, threeNodes, oneNode, ratio, target: 2.5, met: ratio >= 2.5 };
}

/** Starts `count` new sessions, `concurrency` at a time, through a round-robin of the nodes. */
async function sessionsStarted(nodeCount: number, count: number, concurrency: number) {
  // Room for every session on any one node: the probe needs far less than the 2 GiB default
  // memory per session, which would cap a node at a handful of sessions.
  const sessionMemoryBytes = 256 * 2 ** 20;
  const room = [
    "--max-sessions",
    String(count + 8),
    "--session-memory-bytes",
    String(sessionMemoryBytes),
    "--sandboxes-memory-bytes",
    String((count + 8) * sessionMemoryBytes),
  ];
  return withCluster(nodeCount, room, async (cluster) => {
    const runtime = await probeRuntime(cluster);
    const endpoint = (index: number) => nodeAt(cluster, index % nodeCount);
    // Not timed: two sessions per node first, so every node has the code unpacked.
    const warm = Array.from({ length: nodeCount * 2 }, () => newSessionId("bench-warm"));
    for (const [index, sessionId] of warm.entries()) {
      await invokeProbe(endpoint(index).data, runtime.arn, sessionId, { action: "startup" });
    }
    await stopSessions(endpoint(0), runtime.arn, warm);
    const sessionIds = Array.from({ length: count }, () => newSessionId("bench-start"));
    const startMs: number[] = [];
    const cpuBefore = cpuSeconds(cluster);
    const started = performance.now();
    let next = 0;
    const worker = async () => {
      for (let index = next++; index < count; index = next++) {
        const begun = performance.now();
        await invokeProbe(endpoint(index).data, runtime.arn, sessionIds[index] ?? "", {
          action: "startup",
        });
        startMs.push(performance.now() - begun);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const wallMs = performance.now() - started;
    const cpuAfter = cpuSeconds(cluster);
    const perNode = new Map<string, number>();
    for (const session of await sessionsOf(cluster, runtime.id))
      perNode.set(session.node, (perNode.get(session.node) ?? 0) + 1);
    await stopSessions(endpoint(0), runtime.arn, sessionIds);
    const busySeconds = cpuAfter.machineBusy - cpuBefore.machineBusy;
    return {
      sessionsPerSecond: round(count / (wallMs / 1000)),
      wallMs: round(wallMs),
      startMs: latency(startMs),
      sessionsPerNode: Object.fromEntries(perNode),
      // What bounds it: the machine's cores busy over the window (out of availableParallelism),
      // and the Berth nodes' own share of that CPU (the agents and sandboxes use the rest).
      coresBusy: round(busySeconds / (wallMs / 1000)),
      berthCpuMsPerSession: round(((cpuAfter.berth - cpuBefore.berth) * 1000) / count),
      machineCpuMsPerSession: round((busySeconds * 1000) / count),
    };
  });
}

async function failover() {
  const rounds = Number(process.env["BENCH_FAILOVERS"] ?? 3);
  const leaseSeconds = Number(process.env["BENCH_LEASE_SECONDS"] ?? 4);
  return withCluster(3, ["--node-lease-seconds", String(leaseSeconds)], async (cluster) => {
    const runtime = await probeRuntime(cluster, workspace);
    const sessionId = newSessionId("bench-failover");
    const filled = await runCommand(
      nodeAt(cluster, 0).data,
      runtime.arn,
      sessionId,
      fillWorkspace,
      900,
    );
    if (filled.exitCode !== 0) throw new Error(`filling the workspace failed: ${filled.stderr}`);
    const [megabytes, files, checksum] = filled.stdout.trim().split("\n");
    const samples: Failover[] = [];
    for (let index = 0; index < rounds; index += 1) {
      samples.push(await failoverOnce(cluster, runtime, sessionId, leaseSeconds, checksum ?? ""));
    }
    await stopSessions(nodeAt(cluster, 0), runtime.arn, [sessionId]);
    const median = (pick: (sample: Failover) => number) => percentiles(samples.map(pick)).p50;
    return {
      workspace: { megabytes: Number(megabytes), files: Number(files) },
      leaseSeconds,
      p50: {
        failoverMs: median((sample) => sample.failoverMs),
        restoreMs: median((sample) => sample.restoreMs),
        agentStartMs: median((sample) => sample.agentStartMs),
        remainderMs: median((sample) => sample.remainderMs),
        remainderAfterLeaseExpiryMs: median((sample) => sample.remainderAfterLeaseExpiryMs),
      },
      rounds: samples,
    };
  });
}

type Failover = Awaited<ReturnType<typeof failoverOnce>>;

/**
 * One failover: the session stopped (its workspace durable), started again on node X, one file
 * written and checkpointed there (so no other node's copy is current and the new owner must
 * restore), X killed, then asked through another node every 50 ms until it answers.
 */
async function failoverOnce(
  cluster: TestCluster,
  runtime: { id: string; arn: string },
  sessionId: string,
  leaseSeconds: number,
  checksum: string,
) {
  const entry = nodeAt(cluster, 0);
  await stopSessions(entry, runtime.arn, [sessionId]);
  await invokeProbe(entry.data, runtime.arn, sessionId, { action: "startup" });
  const owner = nodeNamed(cluster, await ownerOf(cluster, runtime.id, sessionId));
  const ownerIndex = cluster.nodes.indexOf(owner);
  const through = cluster.nodes.find((node) => node !== owner) ?? owner;
  const generation = await generationOf(owner, runtime.id, sessionId);
  await invokeProbe(owner.data, runtime.arn, sessionId, {
    action: "write",
    path: "/mnt/workspace/marker.txt",
    content: `on ${owner.name}`,
  });
  await waitFor(
    "a checkpoint on the owner",
    async () => (await generationOf(owner, runtime.id, sessionId)) > generation || undefined,
    60_000,
  );

  const killedAt = Date.now();
  const killed = performance.now();
  await cluster.kill(ownerIndex);
  const lastHeartbeat = await heartbeatOf(through, owner.name);
  let attempts = 0;
  let answered = 0;
  let asked = 0;
  for (;;) {
    attempts += 1;
    asked = performance.now();
    try {
      await invokeProbe(through.data, runtime.arn, sessionId, { action: "startup" });
      answered = performance.now();
      break;
    } catch {
      if (asked - killed > 120_000) throw new Error("no node answered for two minutes");
      await delay(50);
    }
  }
  const failoverMs = answered - killed;

  const newOwner = nodeNamed(cluster, await ownerOf(cluster, runtime.id, sessionId, through));
  const restored = loggedAfter(
    newOwner,
    killedAt,
    "session storage restored from the object store",
  );
  const running = loggedAfter(newOwner, killedAt, "session running", sessionId);
  const restoreMs = Number(restored?.["ms"]);
  // startMs spans the whole start: the owner claim, the restore (attach) and the agent's start.
  const sessionStartMs = Number(running?.["startMs"]);
  const leaseExpiredAfterKillMs = Date.parse(lastHeartbeat) + leaseSeconds * 1000 - killedAt;
  const verified = await runCommand(
    through.data,
    runtime.arn,
    sessionId,
    "cd /mnt/workspace && cat marker.txt && echo && cat data/* logs/* | md5sum | cut -d' ' -f1",
  );
  if (verified.stdout !== `on ${owner.name}\n${checksum}\n`)
    throw new Error(`the workspace came back different: ${verified.stdout}`);
  await cluster.restart(ownerIndex);
  return {
    killed: owner.name,
    askedThrough: through.name,
    newOwner: newOwner.name,
    attempts,
    failoverMs: round(failoverMs),
    leaseExpiredAfterKillMs: round(leaseExpiredAfterKillMs),
    restoreMs,
    restoredChunks: Number(restored?.["chunks"]),
    sessionStartMs,
    agentStartMs: round(sessionStartMs - restoreMs),
    remainderMs: round(failoverMs - leaseSeconds * 1000 - sessionStartMs),
    remainderAfterLeaseExpiryMs: round(failoverMs - leaseExpiredAfterKillMs - sessionStartMs),
    // That remainder in two: the wait for the next attempt once the lease ran out, and what the
    // answering request spent besides starting the session (routing, takeover, forwarding).
    askedAfterLeaseExpiryMs: round(asked - killed - leaseExpiredAfterKillMs),
    answerBesidesStartMs: round(answered - asked - sessionStartMs),
  };
}

/** Runs `work` on a fresh test cluster of `nodeCount` nodes, stopped afterwards. */
async function withCluster<T>(
  nodeCount: number,
  extraArgs: string[],
  work: (cluster: TestCluster) => Promise<T>,
): Promise<T> {
  const cluster = await startTestCluster(nodeCount, extraArgs);
  try {
    return await work(cluster);
  } finally {
    await cluster.stop();
  }
}

function probeRuntime(cluster: TestCluster, storage: Partial<typeof workspace> = {}) {
  return createRuntime(nodeAt(cluster, 0), cluster.probeArtifact.codeConfiguration.code.s3.prefix, {
    networkConfiguration: { networkMode: "PUBLIC" },
    ...storage,
  });
}

function nodeAt(cluster: TestCluster, index: number): TestNode {
  const node = cluster.nodes[index];
  if (node === undefined) throw new Error(`no node ${index}`);
  return node;
}

function nodeNamed(cluster: TestCluster, name: string | undefined): TestNode {
  const node = cluster.nodes.find((candidate) => candidate.name === name);
  if (node === undefined) throw new Error(`no node named ${String(name)}`);
  return node;
}

/** The operator API through `node`, signed with the cluster's one key pair. */
async function operatorGet(node: TestNode, path: string): Promise<unknown> {
  const answer = await sendRaw(node.url, {
    method: "GET",
    path,
    credentials: credentialsIn(node.dataDir),
  });
  if (answer.status !== 200) throw new Error(`GET ${path}: ${answer.status} ${answer.body}`);
  return JSON.parse(answer.body);
}

async function sessionsOf(cluster: TestCluster, runtimeId: string, through = nodeAt(cluster, 0)) {
  const listed = (await operatorGet(through, `/berth/v1/runtimes/${runtimeId}/sessions`)) as {
    sessions: { sessionId: string; node: string }[];
  };
  return listed.sessions;
}

async function ownerOf(
  cluster: TestCluster,
  runtimeId: string,
  sessionId: string,
  through?: TestNode,
): Promise<string | undefined> {
  const sessions = await sessionsOf(cluster, runtimeId, through);
  return sessions.find((session) => session.sessionId === sessionId)?.node;
}

/** The last durable generation of the session's volume, as its owner reports it. */
async function generationOf(owner: TestNode, runtimeId: string, sessionId: string) {
  const listed = (await operatorGet(owner, `/berth/v1/runtimes/${runtimeId}/storage`)) as {
    storage: { sessionId: string; replica?: { generation: number } }[];
  };
  return listed.storage.find((entry) => entry.sessionId === sessionId)?.replica?.generation ?? 0;
}

/** When a node last renewed its lease (PostgreSQL's clock, this machine's), as another sees it. */
async function heartbeatOf(through: TestNode, name: string): Promise<string> {
  const listed = (await operatorGet(through, "/berth/v1/nodes")) as {
    nodes: { name: string; heartbeatAt: string }[];
  };
  const node = listed.nodes.find((candidate) => candidate.name === name);
  if (node === undefined) throw new Error(`node ${name} is not listed`);
  return node.heartbeatAt;
}

/** The first log line `message` of `node` at or after `since` (ms since the epoch). */
function loggedAfter(node: TestNode, since: number, message: string, sessionId?: string) {
  return node.process.lines.find(
    (line) =>
      line["msg"] === message &&
      Date.parse(String(line["time"])) >= since &&
      (sessionId === undefined || line["sessionId"] === sessionId),
  );
}

async function stopSessions(node: TestNode, arn: string, sessionIds: string[]): Promise<void> {
  await Promise.all(
    sessionIds.map((sessionId) =>
      node.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: sessionId }),
      ),
    ),
  );
}

/** p50, p95 and p99 of latencies in ms. */
function latency(samplesMs: number[]) {
  const sorted = [...samplesMs].sort((a, b) => a - b);
  const { p50, p99, samples } = percentiles(sorted);
  const p95 = round(sorted[Math.min(sorted.length - 1, Math.floor(0.95 * sorted.length))] ?? NaN);
  return { p50, p95, p99, samples };
}

/** CPU seconds used so far: by the whole machine (all cores), and by the cluster's Berth nodes. */
function cpuSeconds(cluster: TestCluster): { machineBusy: number; berth: number } {
  const ticksPerSecond = 100;
  const [, ...fields] = readFileSync("/proc/stat", "utf8").split("\n")[0]?.split(/\s+/) ?? [];
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields.map(Number);
  const machineBusy = (user + nice + system + irq + softirq + steal) / ticksPerSecond;
  let berth = 0;
  for (const node of cluster.nodes) {
    const stat = readFileSync(`/proc/${String(node.process.child.pid)}/stat`, "utf8");
    const after = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are the 14th and 15th fields, the 12th and 13th after the name.
    berth += (Number(after[11]) + Number(after[12])) / ticksPerSecond;
  }
  return { machineBusy, berth };
}
