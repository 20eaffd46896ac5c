// Which node serves a session's requests, and the owner row a node claims before a session
// starts on it: against the in-memory cluster store, whose clock the test moves, wrapped to
// count the round trips a real database would cost.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MemoryClusterStore } from "../../adapters/memory/cluster-store.ts";
import { BerthError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { NodeRecord, SessionOwner } from "./cluster-store.ts";
import { maxHops, SessionRouter, type SessionRoute } from "./session-router.ts";

const leaseMs = 10_000;
const runtime = "runtime-1";

/** The memory store, counting the calls made to it, with a switch that makes releases fail. */
class CountingStore extends MemoryClusterStore {
  calls = 0;
  failReleases = false;

  override findOwner(runtimeId: string, sessionId: string): Promise<SessionOwner | undefined> {
    this.calls += 1;
    return super.findOwner(runtimeId, sessionId);
  }

  override placeSession(
    runtimeId: string,
    sessionId: string,
    choose: (liveNodes: NodeRecord[]) => NodeRecord | undefined,
  ): Promise<SessionOwner | undefined> {
    this.calls += 1;
    return super.placeSession(runtimeId, sessionId, choose);
  }

  override releaseSession(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    epoch: number,
  ): Promise<void> {
    this.calls += 1;
    if (this.failReleases) return Promise.reject(new Error("database unreachable (test)"));
    return super.releaseSession(runtimeId, sessionId, nodeId, epoch);
  }
}

interface Cluster {
  store: CountingStore;
  /** Moves the clock on: the store's and the routers'. */
  advance: (ms: number) => void;
  /** Renews node `id`'s lease, reporting `running` sessions. */
  heartbeat: (id: string, running?: number) => Promise<void>;
  /** The router of node `id`, and what it sees of the node: its sessions, the holders gone. */
  routerOf: (id: string) => NodeUnderTest;
  warnings: string[];
}

interface NodeUnderTest {
  router: SessionRouter;
  /** Sessions running on the node, as `runtime/session`. */
  running: Set<string>;
  goneHolders: Set<string>;
  /** What a session of that id ending here does once it has let go (default: nothing). */
  onLetGo: (runtimeId: string, sessionId: string) => Promise<void>;
  /** The sessions the router waited to be let go, as `runtime/session`. */
  letGo: string[];
  /** Whether the node's lease is fresh enough to run sessions (ClusterNode.mayRunSessions). */
  mayRunSessions: boolean;
}

const rememberMs = 1_000;

async function startCluster(nodes: Record<string, { maxSessions: number }>): Promise<Cluster> {
  let nowMs = Date.UTC(2025, 0, 1);
  const store = new CountingStore({ leaseMs, now: () => nowMs });
  for (const [id, { maxSessions }] of Object.entries(nodes)) {
    await store.register({
      id,
      name: `name-of-${id}`,
      url: `http://${id}:8787`,
      incarnation: `${id}-1`,
      capacity: { maxSessions, memoryBytes: 2 ** 30 },
    });
  }
  const warnings: string[] = [];
  const log: Logger = {
    info: () => undefined,
    warn: (message) => warnings.push(message),
    error: () => undefined,
  };
  return {
    store,
    warnings,
    advance: (ms) => {
      nowMs += ms;
    },
    heartbeat: async (id, running = 0) => {
      assert.equal(await store.heartbeat(id, `${id}-1`, { runningSessions: running }), true);
    },
    routerOf: (id) => {
      const node: NodeUnderTest = {
        running: new Set(),
        goneHolders: new Set(),
        onLetGo: () => Promise.resolve(),
        letGo: [],
        mayRunSessions: true,
        router: undefined as unknown as SessionRouter,
      };
      node.router = new SessionRouter({
        store,
        nodeId: id,
        isRunningHere: (runtimeId, sessionId) => node.running.has(`${runtimeId}/${sessionId}`),
        letGoHere: (runtimeId, sessionId) => {
          node.letGo.push(`${runtimeId}/${sessionId}`);
          return node.onLetGo(runtimeId, sessionId);
        },
        mayRunSessions: () => node.mayRunSessions,
        goneHolders: node.goneHolders,
        log,
        rememberMs,
        nowMs: () => nowMs,
      });
      return node;
    },
  };
}

/** Places session `sessionId` on node `id`, as that node's router would. */
async function placeOn(cluster: Cluster, id: string, sessionId: string): Promise<void> {
  const owner = await cluster.store.placeSession(runtime, sessionId, (nodes) =>
    nodes.find((node) => node.id === id),
  );
  assert.equal(owner?.node.id, id);
}

const placing = { place: true, hops: 0 };
const finding = { place: false, hops: 0 };

/** Asserts `work` rejects with a BerthError of `code` whose message matches `why`. */
async function assertFails(work: Promise<unknown>, code: string, why: RegExp): Promise<void> {
  await assert.rejects(work, (error: unknown) => {
    assert.ok(BerthError.isInstance(error), `a BerthError: ${String(error)}`);
    assert.equal(error.code, code);
    assert.match(error.message, why);
    return true;
  });
}

/** The node a route names: "here", or the owner's id. */
function where(route: SessionRoute): string {
  return route.kind === "here" ? "here" : route.node.id;
}

describe("routing a session's requests", () => {
  it("serves a session running here without asking the store", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const { router, running } = cluster.routerOf("a");
    running.add(`${runtime}/s1`);
    // Even while the store says another node owns it: this node runs it until it ends.
    await placeOn(cluster, "b", "s1");
    cluster.store.calls = 0;
    assert.equal(where(await router.route(runtime, "s1", placing)), "here");
    assert.equal(where(await router.route(runtime, "s1", finding)), "here");
    assert.equal(where(await router.route(runtime, "s1", { place: true, hops: 1 })), "here");
    assert.equal(cluster.store.calls, 0);
  });

  it("refuses a session running here once this node's lease is too old to run it", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const here = cluster.routerOf("a");
    here.running.add(`${runtime}/s1`);
    here.mayRunSessions = false;
    await assertFails(
      here.router.route(runtime, "s1", placing),
      "ThrottlingException",
      /^This node has lost touch with the cluster's database and runs no sessions until it is back: retry \(through another node\)$/,
    );
  });

  it("serves a request forwarded the most times here without asking the store", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "b", "s1");
    cluster.store.calls = 0;
    const route = await cluster.routerOf("a").router.route(runtime, "s1", {
      place: true,
      hops: maxHops,
    });
    assert.equal(where(route), "here");
    assert.equal(cluster.store.calls, 0);
  });

  it("places a forwarded request's session here while this node has room, else elsewhere", async () => {
    const cluster = await startCluster({ a: { maxSessions: 2 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "a", "s0");
    const { router } = cluster.routerOf("a");
    const forwarded = { place: true, hops: 1 };
    // The forwarding node chose this one: it stays here, though b has more room.
    assert.equal(where(await router.route(runtime, "s1", forwarded)), "here");
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "a");
    // Full now: the next goes on to the least loaded node.
    assert.equal(where(await router.route(runtime, "s2", forwarded)), "b");
    assert.equal((await cluster.store.findOwner(runtime, "s2"))?.node.id, "b");
    // Not started by the request (a stop): answered here, left unplaced.
    assert.equal(where(await router.route(runtime, "s3", { place: false, hops: 1 })), "here");
    assert.equal(await cluster.store.findOwner(runtime, "s3"), undefined);
  });

  it("sends a forwarded request on to a live owner: the forwarder's memory was out of date", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "b", "s1");
    const route = await cluster.routerOf("a").router.route(runtime, "s1", { place: true, hops: 1 });
    assert.equal(where(route), "b");
  });

  it("sends a request for a session another live node owns to that node", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "b", "s1");
    for (const options of [placing, finding]) {
      const route = await cluster.routerOf("a").router.route(runtime, "s1", options);
      assert.equal(route.kind, "owner");
      assert.equal(route.node.url, "http://b:8787");
    }
  });

  it("remembers another node's session for a while, until told to forget it", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "b", "s1");
    const { router } = cluster.routerOf("a");
    assert.equal(where(await router.route(runtime, "s1", placing)), "b");
    cluster.store.calls = 0;
    assert.equal(where(await router.route(runtime, "s1", placing)), "b");
    assert.equal(cluster.store.calls, 0, "a warm session's request skips the database");
    cluster.advance(rememberMs);
    assert.equal(where(await router.route(runtime, "s1", placing)), "b");
    assert.equal(cluster.store.calls, 1, "asked again once the memory ran out");
    router.forget(runtime, "s1");
    assert.equal(where(await router.route(runtime, "s1", placing)), "b");
    assert.equal(cluster.store.calls, 2, "asked again once forgotten");
  });

  it("places a new session on the least loaded node, here on a tie, after checking the request", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const { router } = cluster.routerOf("a");
    const checked: string[] = [];
    const checking = (sessionId: string) => ({
      ...placing,
      beforePlacing: () => {
        checked.push(sessionId);
        return Promise.resolve();
      },
    });
    assert.equal(where(await router.route(runtime, "s1", checking("s1"))), "here");
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "a");
    // a now owns one session, b none: the next goes to b.
    assert.equal(where(await router.route(runtime, "s2", checking("s2"))), "b");
    assert.equal((await cluster.store.findOwner(runtime, "s2"))?.node.id, "b");
    // A session already placed is not checked again.
    router.forget(runtime, "s2");
    assert.equal(where(await router.route(runtime, "s2", checking("s2 again"))), "b");
    assert.deepEqual(checked, ["s1", "s2"]);
  });

  it("places nothing for a request that fails its check (a made-up runtime)", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const refused = new BerthError("ResourceNotFoundException", "No agent runtime r-0");
    const route = cluster.routerOf("a").router.route(runtime, "s1", {
      ...placing,
      beforePlacing: () => Promise.reject(refused),
    });
    await assert.rejects(route, refused);
    assert.equal(await cluster.store.findOwner(runtime, "s1"), undefined);
  });

  it("refuses a new session when no node has room, saying what to do", async () => {
    const cluster = await startCluster({ a: { maxSessions: 1 }, b: { maxSessions: 1 } });
    const { router } = cluster.routerOf("a");
    await router.route(runtime, "s1", placing);
    await cluster.store.setDraining("name-of-b", true);
    await assertFails(
      router.route(runtime, "s2", placing),
      "ServiceQuotaExceededException",
      /No node of the cluster has room for a new session: every live node is full \(maxSessions\) or draining\. Stop idle sessions, add a node or raise maxSessions/,
    );
    assert.equal(await cluster.store.findOwner(runtime, "s2"), undefined);
  });

  it("leaves a session no node owns unplaced when the request does not start it", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const { router } = cluster.routerOf("a");
    assert.equal(where(await router.route(runtime, "s1", finding)), "here");
    assert.equal(await cluster.store.findOwner(runtime, "s1"), undefined);
    assert.equal((await cluster.store.listNodes()).find((n) => n.id === "a")?.ownedSessions, 0);
  });

  it("answers here for a session whose owner expired, placing it only to start it", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await placeOn(cluster, "b", "s1");
    cluster.advance(leaseMs / 2);
    await cluster.heartbeat("a");
    cluster.advance(leaseMs / 2);
    const { router, goneHolders } = cluster.routerOf("a");
    assert.equal(where(await router.route(runtime, "s1", finding)), "here");
    assert.equal(await cluster.store.findOwner(runtime, "s1"), undefined, "left unplaced");
    assert.equal(where(await router.route(runtime, "s1", placing)), "here");
    const owner = await cluster.store.findOwner(runtime, "s1");
    assert.equal(owner?.node.id, "a");
    assert.equal(owner.previousNodeId, "b");
    // The session then starts here: its claim finds the row placed, and b's holds are taken.
    await router.claim(runtime, "s1");
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.epoch, owner.epoch);
    assert.deepEqual([...goneHolders], ["b"]);
  });

  it("moves a draining node's session elsewhere once it has let go here", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const here = cluster.routerOf("a");
    const release = await here.router.claim(runtime, "s1");
    await cluster.store.setDraining("name-of-a", true);
    // The session ended to move; its owner row goes once its storage is let go.
    here.onLetGo = () => release();
    assert.equal(where(await here.router.route(runtime, "s1", placing)), "b");
    assert.deepEqual(here.letGo, [`${runtime}/s1`]);
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "b");
  });
});

describe("claiming a session before it starts here", () => {
  it("takes the session of a node whose lease ran out, and marks that node gone", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const taken = await cluster.store.placeSession(runtime, "s1", (nodes) =>
      nodes.find((n) => n.id === "b"),
    );
    cluster.advance(leaseMs / 2);
    await cluster.heartbeat("a");
    cluster.advance(leaseMs / 2);
    const { router, goneHolders } = cluster.routerOf("a");
    await router.claim(runtime, "s1");
    const owner = await cluster.store.findOwner(runtime, "s1");
    assert.equal(owner?.node.id, "a");
    assert.equal(owner.previousNodeId, "b");
    assert.ok(owner.epoch > (taken?.epoch ?? Infinity), "a new epoch");
    assert.deepEqual([...goneHolders], ["b"]);
  });

  it("claims a new session, and one already placed here, without marking anyone gone", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const { router, goneHolders } = cluster.routerOf("a");
    await router.claim(runtime, "s1");
    await router.route(runtime, "s2", placing);
    const placed = await cluster.store.findOwner(runtime, "s2");
    await router.claim(runtime, "s2");
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "a");
    assert.equal((await cluster.store.findOwner(runtime, "s2"))?.epoch, placed?.epoch);
    assert.equal(goneHolders.size, 0);
  });

  it("refuses a session another live node owns, naming that node, as retryable", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    await cluster.store.placeSession(runtime, "s1", (nodes) => nodes.find((n) => n.id === "b"));
    await assertFails(
      cluster.routerOf("a").router.claim(runtime, "s1"),
      "ThrottlingException",
      /^Session s1 cannot start on this node: node name-of-b owns it now\. Retry: the request then goes to its owner$/,
    );
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "b");
  });

  it("refuses, without asking the store, while this node's lease is too old", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const here = cluster.routerOf("a");
    here.mayRunSessions = false;
    cluster.store.calls = 0;
    await assertFails(
      here.router.claim(runtime, "s1"),
      "ThrottlingException",
      /lost touch with the cluster's database/,
    );
    assert.equal(cluster.store.calls, 0);
    assert.equal(await cluster.store.findOwner(runtime, "s1"), undefined);
  });

  it("refuses when the store no longer counts this node live", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    cluster.advance(leaseMs);
    await assertFails(
      cluster.routerOf("a").router.claim(runtime, "s1"),
      "ThrottlingException",
      /cannot start on this node: no live node can take it/,
    );
  });

  it("gives the owner row up at its own epoch only: never a later owner's", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 }, b: { maxSessions: 4 } });
    const release = await cluster.routerOf("a").router.claim(runtime, "s1");
    // a's lease runs out while its session is still ending; b takes the session over.
    cluster.advance(leaseMs / 2);
    await cluster.heartbeat("b");
    cluster.advance(leaseMs / 2);
    await cluster.routerOf("b").router.claim(runtime, "s1");
    await release();
    assert.equal((await cluster.store.findOwner(runtime, "s1"))?.node.id, "b");
  });

  it("gives its own owner row up: the session then runs nowhere", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const release = await cluster.routerOf("a").router.claim(runtime, "s1");
    await release();
    assert.equal(await cluster.store.findOwner(runtime, "s1"), undefined);
    assert.equal((await cluster.store.listNodes())[0]?.ownedSessions, 0);
  });

  it("only logs a release the store failed: the row expires with the node's lease", async () => {
    const cluster = await startCluster({ a: { maxSessions: 4 } });
    const release = await cluster.routerOf("a").router.claim(runtime, "s1");
    cluster.store.failReleases = true;
    await release();
    assert.deepEqual(cluster.warnings, ["could not give up a session's owner row"]);
  });
});
