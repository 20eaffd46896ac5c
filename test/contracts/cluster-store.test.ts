import assert from "node:assert/strict";
import { setTimeout as delay } from "node:timers/promises";
import { after, afterEach, describe, it } from "node:test";
import { MemoryClusterStore } from "../../src/adapters/memory/cluster-store.ts";
import { openPostgres, type PostgresStores } from "../../src/adapters/postgres/open.ts";
import type {
  ClusterStore,
  NodeRecord,
  NodeRegistration,
} from "../../src/core/cluster/cluster-store.ts";
import { leastLoaded } from "../../src/core/cluster/placement.ts";
import { NameTakenError } from "../../src/core/store.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "../support/postgres.ts";

/*
 * The contract every ClusterStore keeps (src/core/cluster/cluster-store.ts), run against the
 * in-memory store and PostgreSQL. Leases run out by the store's clock: the memory store's moves
 * when the test ticks it; PostgreSQL's is real, so its short lease is waited out by polling.
 */

/** How long a lease lasts: "short" ones run out within a test, "long" ones never do. */
type Lease = "short" | "long";

interface ClusterUnderTest {
  name: string;
  skip: string | false;
  /** `count` stores sharing one fresh, empty cluster: several nodes' views of it. */
  open(count: number, lease: Lease): Promise<ClusterStore[]>;
  /** Lets a little time pass on the store's clock. */
  tick(): Promise<void>;
  /** An interval for claimJob that passes within a test. */
  shortIntervalMs: number;
  close(): Promise<void>;
}

let postgres: Promise<TestPostgres> | undefined;
let opened: PostgresStores[] = [];
after(async () => {
  await (await postgres)?.stop();
});

let clock = Date.UTC(2025, 0, 1);

const implementations: ClusterUnderTest[] = [
  {
    name: "memory",
    skip: false,
    open: (count, lease) => {
      const store = new MemoryClusterStore({
        leaseMs: lease === "short" ? 1_000 : 60_000,
        now: () => clock,
      });
      return Promise.resolve(Array.from({ length: count }, () => store));
    },
    tick: () => {
      clock += 100;
      return Promise.resolve();
    },
    shortIntervalMs: 500,
    close: () => Promise.resolve(),
  },
  {
    name: "PostgreSQL",
    skip: postgresMissing() ?? false,
    open: async (count, lease) => {
      postgres ??= startPostgres();
      const url = await (await postgres).freshDatabase();
      const leaseMs = lease === "short" ? 500 : 60_000;
      // Opened at once, as nodes starting together do: each runs the migrations. The short
      // lease is the test's, not the database's speed: queries get a timeout fit for a busy host.
      const stores = await Promise.all(
        Array.from({ length: count }, () => openPostgres(url, { leaseMs, timeoutMs: 10_000 })),
      );
      opened.push(...stores);
      return stores.map((store) => store.cluster);
    },
    tick: () => delay(20),
    shortIntervalMs: 300,
    close: async () => {
      await Promise.all(opened.map((store) => store.close()));
      opened = [];
    },
  },
];

function node(n: number, incarnation = "first"): NodeRegistration {
  return {
    id: `node-id-${n}`,
    name: `node-${n}`,
    url: `http://10.0.0.${n}:8080`,
    incarnation,
    capacity: { maxSessions: 10 * n, memoryBytes: n * 2 ** 30 },
  };
}

/** The store a caller number `index` uses, the callers taking the stores in turn. */
function nth(stores: ClusterStore[], index: number): ClusterStore {
  const store = stores[index % stores.length];
  assert.ok(store);
  return store;
}

/** The one node the store lists. */
async function onlyNode(store: ClusterStore): Promise<NodeRecord> {
  const listed = await store.listNodes();
  assert.equal(listed.length, 1);
  const [record] = listed;
  assert.ok(record);
  return record;
}

/** A `choose` that takes the node with this id when it is among the live ones. */
const pick =
  (id: string) =>
  (liveNodes: NodeRecord[]): NodeRecord | undefined =>
    liveNodes.find((candidate) => candidate.id === id);

for (const implementation of implementations) {
  describe(`ClusterStore contract: ${implementation.name}`, { skip: implementation.skip }, () => {
    afterEach(() => implementation.close());

    const open = async (lease: Lease = "long"): Promise<ClusterStore> => {
      const [store] = await implementation.open(1, lease);
      assert.ok(store);
      return store;
    };

    /** Ticks the store's clock until `condition` holds (at most 500 ticks). */
    async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
      for (let ticks = 0; !(await condition()); ticks += 1) {
        if (ticks > 500) throw new Error(`${what} did not happen`);
        await implementation.tick();
      }
    }

    const liveOf = async (store: ClusterStore, name: string) =>
      (await store.listNodes()).find((record) => record.name === name)?.live;

    describe("nodes", () => {
      it("registers a node live, not draining, with no load; a heartbeat records its load", async () => {
        const store = await open();
        await store.register(node(1));
        const registered = await onlyNode(store);
        assert.deepEqual(
          { ...registered, heartbeatAt: undefined },
          {
            ...node(1),
            runningSessions: 0,
            ownedSessions: 0,
            draining: false,
            live: true,
            heartbeatAt: undefined,
          },
        );
        assert.ok(Number.isFinite(Date.parse(registered.heartbeatAt)));

        await implementation.tick();
        assert.equal(await store.heartbeat("node-id-1", "first", { runningSessions: 3 }), true);
        const beating = await onlyNode(store);
        assert.equal(beating.runningSessions, 3);
        assert.ok(beating.heartbeatAt > registered.heartbeatAt);
      });

      it("replaces a node's row when it registers again: the new incarnation is what beats, draining as before", async () => {
        const store = await open();
        await store.register(node(1, "first"));
        await store.heartbeat("node-id-1", "first", { runningSessions: 5 });
        await store.setDraining("node-1", true);
        await store.register({ ...node(1, "second"), url: "http://10.0.0.9:8080" });
        assert.deepEqual(
          (await store.listNodes()).map(({ incarnation, url, runningSessions, draining }) => ({
            incarnation,
            url,
            runningSessions,
            draining,
          })),
          [
            {
              incarnation: "second",
              url: "http://10.0.0.9:8080",
              runningSessions: 0,
              // An operator's drain outlives a restart: only setDraining(name, false) ends it.
              draining: true,
            },
          ],
        );
        assert.equal(await store.heartbeat("node-id-1", "first", { runningSessions: 1 }), false);
        assert.equal(await store.heartbeat("node-id-1", "second", { runningSessions: 1 }), true);
        assert.equal(await store.heartbeat("node-id-9", "first", { runningSessions: 1 }), false);
      });

      it("refuses a heartbeat once the lease ran out, until the node registers again", async () => {
        const store = await open("short");
        await store.register(node(1));
        await until(async () => (await liveOf(store, "node-1")) === false, "the lease to end");
        assert.equal(await store.heartbeat("node-id-1", "first", { runningSessions: 0 }), false);
        await store.register(node(1, "second"));
        assert.equal(await liveOf(store, "node-1"), true);
        assert.equal(await store.heartbeat("node-id-1", "second", { runningSessions: 0 }), true);
      });

      it("lists every node by name, each live or not by the store's clock", async () => {
        const store = await open("short");
        await store.register(node(2));
        await until(async () => (await liveOf(store, "node-2")) === false, "the lease to end");
        await store.register(node(3));
        await store.register(node(1));
        const listed = await store.listNodes();
        assert.deepEqual(
          listed.map(({ name, live }) => [name, live]),
          [
            ["node-1", true],
            ["node-2", false],
            ["node-3", true],
          ],
        );
      });

      it("deregisters a node only in the incarnation named", async () => {
        const store = await open();
        await store.register(node(1, "second"));
        await store.register(node(2));
        await store.deregister("node-id-1", "first");
        assert.equal((await store.listNodes()).length, 2);
        await store.deregister("node-id-1", "second");
        assert.deepEqual(
          (await store.listNodes()).map((record) => record.name),
          ["node-2"],
        );
      });

      it("keeps a node draining when it leaves and registers again; a new node taking a gone node's name does not drain", async () => {
        const store = await open("short");
        await store.register(node(1, "first"));
        await store.setDraining("node-1", true);
        await store.deregister("node-id-1", "first");
        await store.register(node(1, "second"));
        assert.deepEqual(
          (await store.listNodes()).map(({ name, draining }) => [name, draining]),
          [["node-1", true]],
        );
        await until(async () => (await liveOf(store, "node-1")) === false, "the lease to end");
        await store.register({ ...node(2), name: "node-1" });
        assert.deepEqual(
          (await store.listNodes()).map(({ id, draining }) => [id, draining]),
          [["node-id-2", false]],
        );
      });

      it("sets draining by name; false for a name no node has", async () => {
        const store = await open();
        await store.register(node(1));
        await store.register(node(2));
        assert.equal(await store.setDraining("node-2", true), true);
        assert.equal(await store.setDraining("node-9", true), false);
        assert.deepEqual(
          (await store.listNodes()).map(({ name, draining }) => [name, draining]),
          [
            ["node-1", false],
            ["node-2", true],
          ],
        );
        assert.equal(await store.setDraining("node-2", false), true);
        assert.equal((await store.listNodes())[1]?.draining, false);
      });

      it("refuses a name a live node of another id has; a node presumed gone gives it up", async () => {
        const store = await open("short");
        await store.register(node(1));
        const impostor = { ...node(2), name: "node-1" };
        await assert.rejects(
          store.register(impostor),
          (error: unknown) => error instanceof NameTakenError && error.takenName === "node-1",
        );
        await until(async () => (await liveOf(store, "node-1")) === false, "the lease to end");
        await store.register(impostor);
        assert.deepEqual(
          (await store.listNodes()).map(({ id, name }) => [id, name]),
          [["node-id-2", "node-1"]],
        );
      });
    });

    describe("session owners", () => {
      it("places a session with choose among the live nodes, then answers that owner", async () => {
        const store = await open();
        await store.register(node(1));
        await store.register(node(2));
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
        let offered: string[] = [];
        const placed = await store.placeSession("runtime-a", "session-1", (liveNodes) => {
          offered = liveNodes.map((record) => record.name);
          return pick("node-id-2")(liveNodes);
        });
        assert.deepEqual(offered.sort(), ["node-1", "node-2"]);
        assert.equal(placed?.node.id, "node-id-2");
        assert.equal(placed.previousNodeId, undefined);
        assert.deepEqual(
          [placed.runtimeId, placed.sessionId, placed.node.url],
          ["runtime-a", "session-1", node(2).url],
        );
        const found = await store.findOwner("runtime-a", "session-1");
        assert.deepEqual([found?.node.id, found?.epoch], ["node-id-2", placed.epoch]);
        // Placing again finds the live owner: choose is not asked.
        const again = await store.placeSession("runtime-a", "session-1", () => {
          throw new Error("choose was called for a session with a live owner");
        });
        assert.deepEqual([again?.node.id, again?.epoch], ["node-id-2", placed.epoch]);
        // Another session is another owner row.
        assert.equal(await store.findOwner("runtime-a", "session-2"), undefined);
      });

      it("places nothing when choose finds no room", async () => {
        const store = await open();
        await store.register(node(1));
        const placed = await store.placeSession("runtime-a", "session-1", () => undefined);
        assert.equal(placed, undefined);
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
      });

      it("gives 20 concurrent placements of one session, from several stores, one owner", async () => {
        const stores = await implementation.open(4, "long");
        for (const n of [1, 2, 3, 4]) await stores[0]?.register(node(n));
        // Each caller would choose a different node: only one choice may be written.
        const placements = await Promise.all(
          Array.from({ length: 20 }, (_, index) =>
            nth(stores, index).placeSession(
              "runtime-a",
              "session-1",
              pick(`node-id-${(index % 4) + 1}`),
            ),
          ),
        );
        const owners = new Set(placements.map((owner) => `${owner?.node.id}@${owner?.epoch}`));
        assert.equal(owners.size, 1, [...owners].join(", "));
        const found = await stores[3]?.findOwner("runtime-a", "session-1");
        assert.equal(`${found?.node.id}@${found?.epoch}`, [...owners][0]);
      });

      it("replaces an owner whose lease ran out, with a greater epoch naming the one replaced", async () => {
        const store = await open("short");
        await store.register(node(1));
        const first = await store.placeSession("runtime-a", "session-1", pick("node-id-1"));
        assert.ok(first);
        await until(async () => (await liveOf(store, "node-1")) === false, "the lease to end");
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
        await store.register(node(2));
        const second = await store.placeSession("runtime-a", "session-1", pick("node-id-2"));
        assert.equal(second?.node.id, "node-id-2");
        assert.ok(second.epoch > first.epoch, `${second.epoch} > ${first.epoch}`);
        assert.equal(second.previousNodeId, "node-id-1");
        const found = await store.findOwner("runtime-a", "session-1");
        assert.deepEqual(
          [found?.node.id, found?.epoch, found?.previousNodeId],
          ["node-id-2", second.epoch, "node-id-1"],
        );
        // The old owner coming back does not get the session back: it has a live owner.
        await store.register(node(1, "second"));
        const kept = await store.placeSession("runtime-a", "session-1", pick("node-id-1"));
        assert.equal(kept?.node.id, "node-id-2");
      });

      it("replaces an owner that deregistered", async () => {
        const store = await open();
        await store.register(node(1));
        await store.register(node(2));
        const first = await store.placeSession("runtime-a", "session-1", pick("node-id-1"));
        await store.deregister("node-id-1", "first");
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
        const second = await store.placeSession("runtime-a", "session-1", pick("node-id-2"));
        assert.deepEqual([second?.node.id, second?.previousNodeId], ["node-id-2", "node-id-1"]);
        assert.ok((second?.epoch ?? 0) > (first?.epoch ?? 0));
      });

      it("forgets what a node's earlier incarnation owned once it registers again", async () => {
        const store = await open();
        await store.register(node(1));
        await store.register(node(2));
        await store.placeSession("runtime-a", "session-1", pick("node-id-1"));
        await store.placeSession("runtime-a", "session-2", pick("node-id-2"));
        // Restarted, the node runs nothing: its old rows neither load it nor route to it.
        await store.register(node(1, "second"));
        assert.deepEqual(
          (await store.listNodes()).map(({ name, ownedSessions }) => [name, ownedSessions]),
          [
            ["node-1", 0],
            ["node-2", 1],
          ],
        );
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
        assert.equal((await store.findOwner("runtime-a", "session-2"))?.node.id, "node-id-2");
      });

      it("places no more sessions on a node than it has room for, however many placements race", async () => {
        const stores = await implementation.open(4, "long");
        for (const n of [1, 2]) {
          await stores[0]?.register({
            ...node(n),
            capacity: { maxSessions: 5, memoryBytes: 2 ** 30 },
          });
        }
        const placements = await Promise.all(
          Array.from({ length: 20 }, (_, index) =>
            nth(stores, index).placeSession("runtime-a", `session-${index}`, (liveNodes) =>
              leastLoaded(liveNodes, `node-id-${(index % 2) + 1}`),
            ),
          ),
        );
        assert.equal(placements.filter((owner) => owner !== undefined).length, 10);
        assert.deepEqual(
          (await stores[1]?.listNodes())?.map(({ name, ownedSessions }) => [name, ownedSessions]),
          [
            ["node-1", 5],
            ["node-2", 5],
          ],
        );
      });

      it("releases a session only for its owner at its epoch; placed again, its epoch is new", async () => {
        const store = await open();
        await store.register(node(1));
        await store.register(node(2));
        const placed = await store.placeSession("runtime-a", "session-1", pick("node-id-1"));
        assert.ok(placed);
        await store.releaseSession("runtime-a", "session-1", "node-id-2", placed.epoch);
        await store.releaseSession("runtime-a", "session-1", "node-id-1", placed.epoch + 1);
        assert.equal((await store.findOwner("runtime-a", "session-1"))?.epoch, placed.epoch);
        await store.releaseSession("runtime-a", "session-1", "node-id-1", placed.epoch);
        assert.equal(await store.findOwner("runtime-a", "session-1"), undefined);
        // An epoch is a fencing token: one the session had before is never given again.
        const again = await store.placeSession("runtime-a", "session-1", pick("node-id-2"));
        assert.ok((again?.epoch ?? 0) > placed.epoch);
        assert.equal(again?.previousNodeId, undefined);
      });
    });

    describe("cluster jobs", () => {
      it("gives a job to exactly one of 20 concurrent callers, then to none within the interval", async () => {
        const stores = await implementation.open(4, "long");
        const claimAll = (name: string) =>
          Promise.all(
            Array.from({ length: 20 }, (_, index) =>
              nth(stores, index).claimJob(name, `node-id-${index}`, 3_600_000),
            ),
          );
        assert.equal((await claimAll("sweep")).filter(Boolean).length, 1);
        assert.equal((await claimAll("sweep")).filter(Boolean).length, 0);
        // Each job has an interval of its own.
        assert.equal((await claimAll("collect")).filter(Boolean).length, 1);
      });

      it("gives the job again once its interval is over", async () => {
        const store = await open();
        const hour = 3_600_000;
        assert.equal(
          await store.claimJob("sweep", "node-id-1", implementation.shortIntervalMs),
          true,
        );
        // The interval a run gives is the one before the next: this run's is an hour.
        await until(() => store.claimJob("sweep", "node-id-2", hour), "the next run");
        assert.equal(await store.claimJob("sweep", "node-id-1", hour), false);
      });
    });
  });
}
