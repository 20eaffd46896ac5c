// The fenced head: who owns a volume (or the metadata database) in the object store, and which
// generation is current. Against the in-memory store, with writes that fail or lose their answer
// on demand.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ForwardingObjectStore, MemoryObjectStore } from "../../adapters/memory/object-store.ts";
import type { ObjectStore, WriteCondition } from "../object-store.ts";
import { FencedHead, HeldElsewhereError, LostOwnershipError } from "./fenced-head.ts";

const key = "volumes/v/head";

/**
 * The memory store, whose next write can fail before it lands, land and lose its answer (a
 * connection cut after the store wrote), or time out and land only later, when the test says
 * (landLateWrite); and whose next read can fail.
 */
class UnreliableStore extends ForwardingObjectStore {
  constructor() {
    super(new MemoryObjectStore(), "memory://unreliable");
  }

  nextPut: "fails" | "loses-answer" | "lands-later" | undefined;
  failNextGet = false;
  /** The write that timed out, still on its way to the store. */
  private late: (() => Promise<unknown>) | undefined;

  override get(objectKey: string, maxBytes: number) {
    if (this.failNextGet) {
      this.failNextGet = false;
      return Promise.reject(new Error("object store: unreachable (test)"));
    }
    return this.inner.get(objectKey, maxBytes);
  }

  override async put(objectKey: string, body: Uint8Array, condition?: WriteCondition) {
    const failure = this.nextPut;
    this.nextPut = undefined;
    if (failure === "fails") throw new Error("object store: unreachable (test)");
    if (failure === "lands-later") {
      this.late = () => this.inner.put(objectKey, body, condition);
      throw new Error("object store: request timed out (test)");
    }
    const written = await this.inner.put(objectKey, body, condition);
    if (failure === "loses-answer") throw new Error("object store: connection reset (test)");
    return written;
  }

  /** The write that timed out reaches the store now. */
  async landLateWrite(): Promise<void> {
    assert.ok(this.late !== undefined, "a write timed out");
    await this.late();
    this.late = undefined;
  }

  override delete(keys: readonly string[]) {
    return this.inner.delete(keys);
  }
}

function headOf(store: ObjectStore, holder: string, leaseMs: number): FencedHead {
  return new FencedHead({ store, key, holder, leaseMs, what: "volume v" });
}

/** A lease no test waits out: an acquire that would wait for it would time the test out. */
const foreverMs = 3_600_000;

describe("a fenced head in the object store", () => {
  it("is created at generation 0, owned by the first process to acquire it", async () => {
    const store = new MemoryObjectStore();
    const head = headOf(store, "node-a", foreverMs);
    assert.equal(await head.peek(), undefined);
    const record = await head.acquire();
    assert.deepEqual(
      { holder: record.holder, fence: record.fence, generation: record.generation },
      { holder: "node-a", fence: 1, generation: 0 },
    );
    assert.deepEqual(await headOf(store, "node-b", foreverMs).peek(), record);
  });

  it("moves one generation per advance, each visible to any reader", async () => {
    const store = new MemoryObjectStore();
    const head = headOf(store, "node-a", foreverMs);
    await head.acquire();
    await head.advance({ manifest: "m1" });
    const second = await head.advance({ manifest: "m2" });
    assert.equal(second.generation, 2);
    const seen = await headOf(store, "node-b", foreverMs).peek();
    assert.equal(seen?.generation, 2);
    assert.deepEqual(seen.payload, { manifest: "m2" });
  });

  it("refuses another process while its owner keeps writing it", async () => {
    const store = new MemoryObjectStore();
    const owner = headOf(store, "node-a", foreverMs);
    await owner.acquire();
    const stop = new AbortController();
    const renewals = (async () => {
      while (!stop.signal.aborted) {
        await owner.renew();
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    try {
      await assert.rejects(headOf(store, "node-b", 200).acquire(), (error: unknown) => {
        assert.ok(error instanceof HeldElsewhereError);
        assert.equal(error.holder, "node-a");
        assert.match(error.message, /volume v is in use by another Berth process \(node node-a\)/);
        return true;
      });
    } finally {
      stop.abort();
      await renewals;
    }
    assert.equal((await owner.peek())?.holder, "node-a");
  });

  it("is taken over once unchanged for a lease, and the old owner can no longer move it", async () => {
    const store = new MemoryObjectStore();
    const stale = headOf(store, "node-a", foreverMs);
    await stale.acquire();
    await stale.advance({ manifest: "a1" });
    const taker = headOf(store, "node-b", 100);
    const taken = await taker.acquire();
    assert.deepEqual(
      { holder: taken.holder, fence: taken.fence, generation: taken.generation },
      { holder: "node-b", fence: 2, generation: 1 },
    );
    await taker.advance({ manifest: "b2" });

    await assert.rejects(stale.advance({ manifest: "a2" }), LostOwnershipError);
    // Every later write says why it fails, not merely that the head is not held.
    await assert.rejects(stale.renew(), LostOwnershipError);
    const now = await taker.peek();
    assert.deepEqual(
      { holder: now?.holder, fence: now?.fence, generation: now?.generation },
      { holder: "node-b", fence: 2, generation: 2 },
    );
    assert.deepEqual(now?.payload, { manifest: "b2" });
  });

  it("says which holder it was taken from once that one's lease ran out", async () => {
    const store = new MemoryObjectStore();
    await headOf(store, "node-a", foreverMs).acquire();
    const taker = headOf(store, "node-b", 100);
    await taker.acquire();
    assert.equal(taker.tookOverFrom, "node-a");
  });

  it("is taken at once from a holder named gone, and from no other", async () => {
    const store = new MemoryObjectStore();
    await headOf(store, "node-a", foreverMs).acquire();
    const taker = headOf(store, "node-b", foreverMs);
    const taken = await taker.acquire({ goneHolders: new Set(["node-a"]) });
    assert.deepEqual({ holder: taken.holder, fence: taken.fence }, { holder: "node-b", fence: 2 });
    assert.equal(taker.tookOverFrom, "node-a");

    // node-b is alive (it renews): naming another node gone does not skip its lease.
    const renewing = setInterval(() => void taker.renew(), 20);
    try {
      await assert.rejects(
        headOf(store, "node-c", 200).acquire({ goneHolders: new Set(["node-a"]) }),
        HeldElsewhereError,
      );
    } finally {
      clearInterval(renewing);
    }
  });

  it("is taken at once, with no lease to wait, once its owner released it", async () => {
    const store = new MemoryObjectStore();
    const first = headOf(store, "node-a", foreverMs);
    await first.acquire();
    await first.advance({ manifest: "a1" });
    await first.release();
    assert.equal((await first.peek())?.holder, null);
    const taker = headOf(store, "node-b", foreverMs);
    const taken = await taker.acquire();
    assert.deepEqual(
      { holder: taken.holder, fence: taken.fence, generation: taken.generation },
      { holder: "node-b", fence: 2, generation: 1 },
    );
    assert.deepEqual(taken.payload, { manifest: "a1" });
    // A holder that let go stopped cleanly: it is not one that is gone.
    assert.equal(taker.tookOverFrom, undefined);
  });

  it("is taken at once by its own node after a restart, with a new fence", async () => {
    const store = new MemoryObjectStore();
    await headOf(store, "node-a", foreverMs).acquire();
    const again = await headOf(store, "node-a", foreverMs).acquire();
    assert.equal(again.fence, 2);
  });

  it("gives two processes racing for it different fences, and only the later one writes", async () => {
    const store = new MemoryObjectStore();
    const first = headOf(store, "node-a", 100);
    const second = headOf(store, "node-b", 100);
    const [a, b] = await Promise.all([first.acquire(), second.acquire()]);
    assert.notEqual(a.fence, b.fence);
    const [later, earlier] = a.fence > b.fence ? [first, second] : [second, first];
    await assert.rejects(earlier.advance({ manifest: "x" }), LostOwnershipError);
    assert.equal((await later.advance({ manifest: "y" })).generation, 1);
  });

  it("recognises its own write whose answer was lost, by reading the head back", async () => {
    const store = new UnreliableStore();
    const head = headOf(store, "node-a", foreverMs);
    await head.acquire();
    store.nextPut = "loses-answer";
    assert.equal((await head.advance({ manifest: "m1" })).generation, 1);
    assert.equal((await head.advance({ manifest: "m2" })).generation, 2);
  });

  it("learns that a write whose answer and read-back were both lost did land, and goes on", async () => {
    const store = new UnreliableStore();
    const head = headOf(store, "node-a", foreverMs);
    await head.acquire();
    store.nextPut = "loses-answer";
    store.failNextGet = true;
    await assert.rejects(head.advance({ manifest: "m1" }), /connection reset/);
    // The store holds generation 1; the next write, conditional on the older etag, gets a 412
    // that is this process's own earlier write, not a takeover.
    await assert.rejects(head.advance({ manifest: "m2" }), /did land; try again/);
    assert.equal((await head.advance({ manifest: "m2" })).generation, 2);
    assert.equal((await head.peek())?.holder, "node-a");
  });

  it("learns that a write which timed out landed after its read-back, and goes on", async () => {
    const store = new UnreliableStore();
    const head = headOf(store, "node-a", foreverMs);
    await head.acquire();
    store.nextPut = "lands-later";
    // The read-back finds generation 0 still: the write has not reached the store yet.
    await assert.rejects(head.advance({ manifest: "m1" }), /timed out/);
    await store.landLateWrite();
    assert.equal((await head.peek())?.generation, 1);
    // The 412 that follows is this process's own late write, not a takeover.
    await assert.rejects(head.advance({ manifest: "m2" }), (error: unknown) => {
      assert.ok(!(error instanceof LostOwnershipError), String(error));
      assert.match(String(error), /did land; try again/);
      return true;
    });
    assert.equal((await head.advance({ manifest: "m2" })).generation, 2);
  });

  it("stays the owner's after a write that failed before reaching the store", async () => {
    const store = new UnreliableStore();
    const head = headOf(store, "node-a", foreverMs);
    await head.acquire();
    store.nextPut = "fails";
    store.failNextGet = true;
    await assert.rejects(head.advance({ manifest: "m1" }), /unreachable/);
    assert.equal((await head.advance({ manifest: "m1" })).generation, 1);
  });

  it("refuses a head object it did not write", async () => {
    const store = new MemoryObjectStore();
    await store.put(key, Buffer.from(JSON.stringify({ holder: "x" })));
    await assert.rejects(
      headOf(store, "node-a", foreverMs).acquire(),
      /volumes\/v\/head in the object store is not a head Berth wrote/,
    );
  });
});
