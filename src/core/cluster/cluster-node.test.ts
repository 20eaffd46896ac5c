// This node's membership of the cluster: its heartbeat, and what it does with its sessions when
// the cluster's view of it changes. Against the in-memory cluster store (made to fail or hang on
// demand) and fake local sessions, with node:test's fake timers driving the heartbeat and one
// clock for both: the node's monotonic clock and the store's (which a test may move ahead).
import assert from "node:assert/strict";
import { setImmediate as macrotask } from "node:timers/promises";
import { describe, it, type TestContext } from "node:test";
import { MemoryClusterStore } from "../../adapters/memory/cluster-store.ts";
import type { Logger } from "../logger.ts";
import { ClusterNode, type LocalSessions } from "./cluster-node.ts";
import type { NodeLoad, NodeRecord, NodeRegistration } from "./cluster-store.ts";

const leaseMs = 4_000;
const intervalMs = leaseMs / 4;
const never = new Promise<never>(() => undefined);

/**
 * The memory store, whose heartbeats can fail or never answer, whose listing can hang, and
 * whose registrations can land without an answer ever reaching the node (a connection lost).
 */
class FlakyStore extends MemoryClusterStore {
  heartbeats: "answer" | "fail" | "hang" = "answer";
  listing: "answer" | "hang" = "answer";
  registrations: "answer" | "unanswered" = "answer";
  heartbeatsAsked = 0;

  override async register(node: NodeRegistration): Promise<void> {
    await super.register(node);
    if (this.registrations === "unanswered") await never;
  }

  override heartbeat(nodeId: string, incarnation: string, load: NodeLoad): Promise<boolean> {
    this.heartbeatsAsked += 1;
    if (this.heartbeats === "fail") return Promise.reject(new Error("connection refused (test)"));
    if (this.heartbeats === "hang") return never;
    return super.heartbeat(nodeId, incarnation, load);
  }

  override listNodes(): Promise<NodeRecord[]> {
    return this.listing === "hang" ? never : super.listNodes();
  }

  /** The nodes as the test sees them, whatever the node's own listing does. */
  async row(id: string): Promise<NodeRecord> {
    const found = (await super.listNodes()).find((node) => node.id === id);
    assert.ok(found !== undefined, `node ${id} is registered`);
    return found;
  }
}

/** The sessions this node runs, recording what the node asks of them. */
class FakeSessions implements LocalSessions {
  runningCount = 3;
  ends: { reason: string; idleOnly: boolean }[] = [];
  claimsForgotten = 0;
  /** Ending idle sessions takes longer than the lease (their last checkpoints are large). */
  idleEndingHangs = false;

  endAll(reason: string, options: { idleOnly?: boolean } = {}): Promise<void> {
    const idleOnly = options.idleOnly === true;
    this.ends.push({ reason, idleOnly });
    if (idleOnly) return this.idleEndingHangs ? never : Promise.resolve();
    this.runningCount = 0;
    return Promise.resolve();
  }

  forgetClaims(): Promise<void> {
    this.claimsForgotten += 1;
    return Promise.resolve();
  }
}

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

/** A started node "a" on a fresh store, and `pass(ms)`: time passing, one heartbeat at a time. */
async function startNode(t: TestContext) {
  t.mock.timers.enable({ apis: ["setInterval", "setTimeout", "Date"], now: Date.UTC(2025, 0, 1) });
  const clocks = { storeAheadMs: 0 };
  const store = new FlakyStore({ leaseMs, now: () => Date.now() + clocks.storeAheadMs });
  const sessions = new FakeSessions();
  const goneHolders = new Set<string>();
  const node = new ClusterNode({
    store,
    registration: {
      id: "a",
      name: "node-a",
      url: "http://a:8787",
      capacity: { maxSessions: 8, memoryBytes: 2 ** 30 },
    },
    leaseMs,
    sessions,
    goneHolders,
    log: quiet,
    nowMs: () => Date.now(),
  });
  await node.start();
  const pass = async (ms: number): Promise<void> => {
    for (let passed = 0; passed < ms; passed += intervalMs) {
      t.mock.timers.tick(intervalMs);
      // Lets the heartbeat the tick started run as far as it can without more time passing.
      await macrotask();
    }
  };
  return { store, sessions, goneHolders, node, clocks, pass };
}

/** The sessions ended for good (not only idle ones). */
const givenUp = (sessions: FakeSessions) => sessions.ends.filter((end) => !end.idleOnly);

describe("a node's heartbeat", () => {
  it("registers, then renews its lease with its load every quarter of it", async (t) => {
    const { store, node, pass } = await startNode(t);
    const registered = await store.row("a");
    assert.equal(registered.live, true);
    assert.equal(node.heartbeatIntervalMs, intervalMs);
    await pass(leaseMs * 2);
    const renewed = await store.row("a");
    assert.equal(renewed.live, true);
    assert.equal(renewed.runningSessions, 3);
    assert.equal(renewed.incarnation, registered.incarnation);
    assert.equal(store.heartbeatsAsked, 8);
  });

  it("ends every session, frees its claims and registers anew when a heartbeat is refused", async (t) => {
    const { store, sessions, node, clocks, pass } = await startNode(t);
    const before = await store.row("a");
    await pass(intervalMs);
    assert.deepEqual(sessions.ends, []);
    // The store's clock runs ahead (a long pause of this process): it presumes the node gone.
    clocks.storeAheadMs = leaseMs;
    await pass(intervalMs);
    assert.equal(givenUp(sessions).length, 1);
    assert.match(givenUp(sessions)[0]?.reason ?? "", /the cluster presumed this node gone/);
    assert.equal(sessions.claimsForgotten, 1);
    const after = await store.row("a");
    assert.notEqual(after.incarnation, before.incarnation, "a new incarnation");
    assert.equal(after.live, true);
    assert.equal(node.mayRunSessions, true);
    // The new incarnation's heartbeats are renewed: nothing more is given up.
    await pass(leaseMs);
    assert.equal(givenUp(sessions).length, 1);
    assert.equal((await store.row("a")).incarnation, after.incarnation);
  });

  it("renews its new incarnation even when the answer to registering it was lost", async (t) => {
    const { store, sessions, clocks, pass } = await startNode(t);
    store.registrations = "unanswered";
    clocks.storeAheadMs = leaseMs;
    await pass(intervalMs);
    assert.equal(givenUp(sessions).length, 1);
    const registered = await store.row("a");
    await pass(leaseMs * 2);
    const row = await store.row("a");
    assert.equal(row.live, true, "registered, and renewed since");
    assert.equal(row.incarnation, registered.incarnation);
    assert.equal(givenUp(sessions).length, 1);
  });

  it("ends its sessions once a failing database has been silent for the lease less one interval, not before", async (t) => {
    const { store, sessions, node, pass } = await startNode(t);
    store.heartbeats = "fail";
    await pass(leaseMs - 2 * intervalMs);
    assert.deepEqual(sessions.ends, [], "silent for half the lease: the sessions keep running");
    assert.equal(node.mayRunSessions, true);
    await pass(intervalMs);
    assert.equal(givenUp(sessions).length, 1, "silent for the lease less one interval");
    assert.match(
      givenUp(sessions)[0]?.reason ?? "",
      /cut off from the cluster's database for 3000 ms/,
    );
    assert.equal(sessions.claimsForgotten, 1);
    assert.equal(node.mayRunSessions, false);
    // Still cut off: given up once, not at every failed heartbeat.
    await pass(intervalMs);
    assert.equal(givenUp(sessions).length, 1);
    // The database back, after the lease ran out: the node joins again as a new incarnation.
    store.heartbeats = "answer";
    await pass(intervalMs);
    assert.equal(node.mayRunSessions, true);
    assert.equal((await store.row("a")).live, true);
  });

  it("tells how long ago its last good heartbeat was (a metric)", async (t) => {
    const { store, node, pass } = await startNode(t);
    await pass(intervalMs);
    assert.equal(node.heartbeatAgeMs, 0);
    store.heartbeats = "fail";
    await pass(2 * intervalMs);
    assert.equal(node.heartbeatAgeMs, 2 * intervalMs);
    store.heartbeats = "answer";
    await pass(intervalMs);
    assert.equal(node.heartbeatAgeMs, 0);
  });

  it("counts a heartbeat the database never answers as failed once its interval is over", async (t) => {
    const { store, sessions, node, pass } = await startNode(t);
    store.heartbeats = "hang";
    await pass(leaseMs - 2 * intervalMs);
    assert.deepEqual(sessions.ends, []);
    assert.equal(store.heartbeatsAsked, 2, "each heartbeat gave up on the last, then asked again");
    t.mock.timers.tick(intervalMs - 1);
    assert.equal(node.mayRunSessions, true, "a moment before the lease less one interval");
    t.mock.timers.tick(1);
    await macrotask();
    assert.equal(givenUp(sessions).length, 1);
    assert.match(givenUp(sessions)[0]?.reason ?? "", /cut off .* for 3000 ms/);
    assert.equal(node.mayRunSessions, false);
  });

  it("keeps renewing its lease while the database never answers a listing of the nodes", async (t) => {
    const { store, sessions, pass } = await startNode(t);
    store.listing = "hang";
    await pass(leaseMs * 2);
    assert.deepEqual(sessions.ends, []);
    const row = await store.row("a");
    assert.equal(row.live, true);
    assert.ok(store.heartbeatsAsked >= 4, `${store.heartbeatsAsked} heartbeats`);
    // And when the heartbeats fail too, the node still gives its sessions up in time.
    store.heartbeats = "fail";
    await pass(leaseMs);
    assert.equal(givenUp(sessions).length, 1);
  });
});

describe("a draining node", () => {
  it("ends only its idle sessions, at each heartbeat", async (t) => {
    const { store, sessions, pass } = await startNode(t);
    await pass(intervalMs);
    assert.deepEqual(
      sessions.ends.map((end) => end.reason),
      [],
    );
    assert.equal(await store.setDraining("node-a", true), true);
    await pass(intervalMs * 2);
    assert.ok(sessions.ends.length >= 1);
    for (const end of sessions.ends) {
      assert.equal(end.idleOnly, true);
      assert.match(end.reason, /the node is draining/);
    }
    assert.equal(sessions.claimsForgotten, 0);
    await store.setDraining("node-a", false);
    const ended = sessions.ends.length;
    await pass(intervalMs * 2);
    assert.equal(sessions.ends.length, ended, "resumed: nothing more ends");
  });

  it("keeps its lease while its idle sessions take longer than the lease to end", async (t) => {
    const { store, sessions, pass } = await startNode(t);
    sessions.idleEndingHangs = true;
    await store.setDraining("node-a", true);
    await pass(leaseMs * 2);
    assert.equal((await store.row("a")).live, true);
    assert.deepEqual(givenUp(sessions), [], "its busy sessions keep running");
    assert.equal(sessions.ends.length, 1, "one ending of idle sessions at a time");
  });
});

describe("the holders known gone", () => {
  it("gains nodes whose lease ran out and loses them once they are live again", async (t) => {
    const { store, goneHolders, node, pass } = await startNode(t);
    const other = {
      id: "b",
      name: "node-b",
      url: "http://b:8787",
      capacity: { maxSessions: 8, memoryBytes: 2 ** 30 },
    };
    await store.register({ ...other, incarnation: "b-1" });
    await pass(intervalMs);
    assert.deepEqual(
      node.nodes.map((record) => record.name),
      ["node-a", "node-b"],
    );
    assert.equal(goneHolders.size, 0);
    await pass(leaseMs - intervalMs);
    assert.deepEqual([...goneHolders], ["b"], "b sent no heartbeat for a lease");
    await store.register({ ...other, incarnation: "b-2" });
    await pass(intervalMs);
    assert.deepEqual([...goneHolders], []);
  });
});
