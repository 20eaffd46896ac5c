// Where a new session goes: the least loaded live node with room, as the nodes' records come
// out of the cluster store (the in-memory one, whose clock the test moves).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { MemoryClusterStore } from "../../adapters/memory/cluster-store.ts";
import { leastLoaded } from "./placement.ts";

const leaseMs = 10_000;

/** A store holding nodes, each with its capacity and the sessions its last heartbeat reported. */
async function cluster(
  nodes: Record<string, { maxSessions: number; running?: number }>,
): Promise<{ store: MemoryClusterStore; advance: (ms: number) => void }> {
  let nowMs = Date.UTC(2025, 0, 1);
  const store = new MemoryClusterStore({ leaseMs, now: () => nowMs });
  for (const [id, { maxSessions, running = 0 }] of Object.entries(nodes)) {
    await store.register({
      id,
      name: id,
      url: `http://${id}:8787`,
      incarnation: `${id}-1`,
      capacity: { maxSessions, memoryBytes: 2 ** 30 },
    });
    assert.equal(await store.heartbeat(id, `${id}-1`, { runningSessions: running }), true);
  }
  return {
    store,
    advance: (ms) => {
      nowMs += ms;
    },
  };
}

let sessions = 0;

/** Places `count` new sessions on node `id` (owner rows, not yet counted by a heartbeat). */
async function placeOn(store: MemoryClusterStore, id: string, count: number): Promise<void> {
  for (let index = 0; index < count; index += 1) {
    await store.placeSession("runtime", `session-${(sessions += 1)}`, (nodes) =>
      nodes.find((node) => node.id === id),
    );
  }
}

async function chosen(store: MemoryClusterStore, here: string): Promise<string | undefined> {
  return leastLoaded(await store.listNodes(), here)?.id;
}

describe("placement of a new session", () => {
  it("chooses the node with the most room relative to its capacity, not the fewest sessions", async () => {
    const { store } = await cluster({
      small: { maxSessions: 4, running: 2 },
      big: { maxSessions: 16, running: 4 },
    });
    assert.equal(await chosen(store, "small"), "big");
  });

  it("counts sessions placed on a node since its last heartbeat", async () => {
    const { store } = await cluster({ a: { maxSessions: 8, running: 1 }, b: { maxSessions: 8 } });
    assert.equal(await chosen(store, "x"), "b");
    await placeOn(store, "b", 3);
    assert.equal(await chosen(store, "x"), "a", "b owns 3 sessions its heartbeat has not shown");
  });

  it("counts sessions a heartbeat reported beyond those placed there", async () => {
    const { store } = await cluster({ a: { maxSessions: 8, running: 5 }, b: { maxSessions: 8 } });
    await placeOn(store, "a", 1);
    await placeOn(store, "b", 2);
    // a: max(5 running, 1 owned) = 5 against b's max(0, 2) = 2.
    assert.equal(await chosen(store, "a"), "b");
  });

  it("skips draining nodes", async () => {
    const { store } = await cluster({ a: { maxSessions: 8, running: 6 }, b: { maxSessions: 8 } });
    assert.equal(await store.setDraining("b", true), true);
    assert.equal(await chosen(store, "b"), "a");
  });

  it("skips full nodes, and chooses none when every node is full", async () => {
    const { store } = await cluster({ a: { maxSessions: 2, running: 2 }, b: { maxSessions: 4 } });
    await placeOn(store, "b", 3);
    assert.equal(await chosen(store, "a"), "b", "b has one slot left");
    await placeOn(store, "b", 1);
    assert.equal(await chosen(store, "a"), undefined);
  });

  it("skips nodes whose lease ran out", async () => {
    const { store, advance } = await cluster({
      a: { maxSessions: 8, running: 4 },
      gone: { maxSessions: 8 },
    });
    advance(leaseMs / 2);
    assert.equal(await store.heartbeat("a", "a-1", { runningSessions: 4 }), true);
    advance(leaseMs / 2);
    assert.equal(await chosen(store, "gone"), "a");
  });

  it("prefers the node the request arrived at on a tie", async () => {
    const { store } = await cluster({
      a: { maxSessions: 4, running: 1 },
      b: { maxSessions: 8, running: 2 },
      c: { maxSessions: 4, running: 1 },
    });
    assert.equal(await chosen(store, "a"), "a");
    assert.equal(await chosen(store, "b"), "b");
    assert.equal(await chosen(store, "c"), "c");
    // Not among the tied: the first of them, as the store lists nodes (by name).
    const { store: other } = await cluster({
      a: { maxSessions: 4, running: 1 },
      b: { maxSessions: 4, running: 1 },
      c: { maxSessions: 4, running: 3 },
    });
    assert.equal(await chosen(other, "c"), "a");
  });

  it("chooses none among no nodes, or nodes of no capacity", async () => {
    assert.equal(leastLoaded([], "a"), undefined);
    const { store } = await cluster({ a: { maxSessions: 0 } });
    assert.equal(await chosen(store, "a"), undefined);
  });
});
