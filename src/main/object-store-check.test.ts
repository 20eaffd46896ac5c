// The start-up check of the object store, against the in-memory store and stores that ignore
// one conditional write or the other. The S3 failures (unreachable, no bucket, a versioned RGW
// bucket) are tested against Ceph RGW in test/metadata-replica.test.ts.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ForwardingObjectStore, MemoryObjectStore } from "../adapters/memory/object-store.ts";
import type { WriteCondition } from "../core/object-store.ts";
import { checkConditionalWrites, ObjectStoreCheckError } from "./object-store-check.ts";

/** The memory store, dropping the conditions named in `ignored` as a store would ignore them. */
class IgnoringStore extends ForwardingObjectStore {
  private readonly ignored: "ifNoneMatch" | "ifMatch";

  constructor(ignored: "ifNoneMatch" | "ifMatch") {
    super(new MemoryObjectStore(), "s3://bucket/berth/");
    this.ignored = ignored;
  }

  override put(key: string, body: Uint8Array, condition?: WriteCondition) {
    const ignore = condition !== undefined && this.ignored in condition;
    return this.inner.put(key, body, ignore ? undefined : condition);
  }

  override delete(keys: readonly string[]) {
    return this.inner.delete(keys);
  }
}

describe("the object store check at start", () => {
  it("passes a store that honours conditional writes, and leaves nothing behind", async () => {
    const store = new MemoryObjectStore();
    await checkConditionalWrites(store, "memory");
    assert.deepEqual(store.keys(), []);
  });

  for (const [ignored, header] of [
    ["ifNoneMatch", "If-None-Match"],
    ["ifMatch", "If-Match"],
  ] as const) {
    it(`refuses a store that ignores ${header}, in one line, and deletes its probe`, async () => {
      const store = new IgnoringStore(ignored);
      await assert.rejects(checkConditionalWrites(store, "http://127.0.0.1:7480"), {
        name: "ObjectStoreCheckError",
        message: `s3://bucket/berth/ at http://127.0.0.1:7480 does not honour conditional writes (${header}); Berth needs them to keep one writer per volume (Ceph RGW ignores them in versioned buckets): give it a bucket where they hold`,
      });
      assert.deepEqual(store.inner.keys(), []);
    });
  }

  it("says a store it cannot write to is unusable, in one line", async () => {
    const store = new MemoryObjectStore();
    store.failing = true;
    await assert.rejects(checkConditionalWrites(store, "memory"), (error: unknown) => {
      assert.ok(error instanceof ObjectStoreCheckError);
      assert.doesNotMatch(error.message, /\n/);
      assert.match(error.message, /failed a test write to memory:\/\/ \(object store: unreachable/);
      return true;
    });
  });
});
