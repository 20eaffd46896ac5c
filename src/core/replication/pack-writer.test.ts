// The pack writer: a checkpoint's compressed chunks gathered into packs of up to packBytes, each
// uploaded as it fills. Against the in-memory store, with uploads that fail or wait on demand.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { setImmediate as nextTurn } from "node:timers/promises";
import { ForwardingObjectStore, MemoryObjectStore } from "../../adapters/memory/object-store.ts";
import type { WriteCondition } from "../object-store.ts";
import { packBytes, volumeKeys, type ChunkRef } from "./manifest.ts";
import { PackWriter } from "./pack-writer.ts";

const volumeId = "vol-1";

/** The memory store, whose pack uploads can fail, or wait until the test lets them finish. */
class PackStore extends ForwardingObjectStore {
  constructor() {
    super(new MemoryObjectStore(), "memory://packs");
  }

  failPuts = false;
  holdPuts = false;
  /** Uploads the test holds, oldest first: calling one lets it land. */
  readonly held: (() => void)[] = [];
  inFlight = 0;
  mostInFlight = 0;

  override async put(key: string, body: Uint8Array, condition?: WriteCondition) {
    this.inFlight += 1;
    this.mostInFlight = Math.max(this.mostInFlight, this.inFlight);
    try {
      if (this.holdPuts) await new Promise<void>((resolve) => this.held.push(resolve));
      if (this.failPuts) throw new Error(`object store: writing ${key} failed (test)`);
      return await this.inner.put(key, body, condition);
    } finally {
      this.inFlight -= 1;
    }
  }
  override delete(keys: readonly string[]) {
    return this.inner.delete(keys);
  }
}

function sha256(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Adds `chunk` under its own hash. */
function add(writer: PackWriter, chunk: Buffer): ChunkRef {
  return writer.add(sha256(chunk), chunk);
}

async function packOf(store: PackStore, ref: ChunkRef): Promise<Buffer> {
  const found = await store.inner.get(volumeKeys.pack(volumeId, ref.pack), 2 ** 30);
  return found?.body ?? assert.fail(`pack ${ref.pack} is not stored`);
}

/** Polls `condition` once per event-loop turn; fails after `turns` of them. */
async function untilTurn(condition: () => boolean, what: string, turns = 1000): Promise<void> {
  for (let turn = 0; !condition(); turn += 1) {
    if (turn >= turns) assert.fail(`${what}: not within ${turns} event-loop turns`);
    await nextTurn();
  }
}

describe("a pack writer", () => {
  it("gives each chunk a ref to exactly its bytes in its stored pack", async () => {
    const store = new PackStore();
    const writer = new PackWriter(store, volumeId);
    const chunks = [1, 70_000, 12, 4096, 65_600].map((size) => randomBytes(size));
    const refs = chunks.map((chunk) => add(writer, chunk));
    await writer.finish();

    assert.equal(new Set(refs.map((ref) => ref.pack)).size, 1, "one pack for a small checkpoint");
    for (const [index, ref] of refs.entries()) {
      const chunk = chunks[index] ?? assert.fail();
      assert.equal(ref.hash, sha256(chunk));
      assert.equal(ref.length, chunk.byteLength);
      const pack = await packOf(store, ref);
      assert.ok(pack.subarray(ref.offset, ref.offset + ref.length).equals(chunk), `chunk ${index}`);
    }
    const total = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
    assert.equal(writer.bytesUploaded, total);
    assert.equal(writer.packsUploaded, 1);
    assert.deepEqual(store.inner.keys(), [volumeKeys.pack(volumeId, refs[0]?.pack ?? "")]);
  });

  it("seals a pack once it holds packBytes, and uploads it before finish()", async () => {
    const store = new PackStore();
    const writer = new PackWriter(store, volumeId);
    const chunkSize = 64 * 1024;
    const chunks = Array.from({ length: packBytes / chunkSize + 1 }, () => randomBytes(chunkSize));
    const refs = chunks.map((chunk) => add(writer, chunk));
    const [first, last] = [refs[0], refs.at(-1)];
    assert.ok(first !== undefined && last !== undefined);

    // The full pack is on its way before finish(); the one chunk past it waits for finish().
    await untilTurn(() => store.inner.keys().length === 1, "the full pack uploaded");
    assert.equal((await packOf(store, first)).byteLength, packBytes);
    assert.ok(refs.slice(0, -1).every((ref) => ref.pack === first.pack));
    assert.notEqual(last.pack, first.pack);
    assert.equal(last.offset, 0);

    await writer.finish();
    assert.equal(store.inner.keys().length, 2);
    assert.ok((await packOf(store, last)).equals(chunks.at(-1) ?? assert.fail()));
    assert.equal(writer.packsUploaded, 2);
  });

  it("uploads nothing when no chunk was added", async () => {
    const store = new PackStore();
    const writer = new PackWriter(store, volumeId);
    await writer.finish();
    assert.deepEqual(store.inner.keys(), []);
    assert.equal(writer.packsUploaded, 0);
  });

  it("fails finish(), and the next room(), when a pack upload failed", async () => {
    const store = new PackStore();
    store.failPuts = true;
    const writer = new PackWriter(store, volumeId);
    add(writer, Buffer.alloc(packBytes, 1)); // sealed and uploading at once
    add(writer, randomBytes(100));
    await assert.rejects(writer.finish(), /writing volumes\/vol-1\/packs\/.* failed \(test\)/);
    await assert.rejects(writer.room(), /failed \(test\)/);
    assert.deepEqual(store.inner.keys(), []);
  });

  it("lets room() hold back a checkpoint while four packs are uploading", async () => {
    const store = new PackStore();
    store.holdPuts = true;
    const writer = new PackWriter(store, volumeId);
    const packCount = 6;
    let added = 0;
    // As a checkpoint adds: room() before each chunk; each chunk here fills a pack.
    const filling = (async () => {
      for (let index = 0; index < packCount; index += 1) {
        await writer.room();
        add(writer, Buffer.alloc(packBytes, index));
        added += 1;
      }
      await writer.finish();
    })();

    await untilTurn(() => store.held.length === 4, "four uploads started");
    // Held uploads never finish on their own: however long it waits, nothing more is added.
    for (let turn = 0; turn < 50; turn += 1) await nextTurn();
    assert.equal(added, 4);
    assert.equal(store.inFlight, 4);

    store.held.shift()?.();
    await untilTurn(() => added === 5, "a fifth pack once one landed");
    assert.equal(store.inFlight, 4);

    store.holdPuts = false;
    for (const release of store.held.splice(0)) release();
    await filling;
    assert.equal(store.mostInFlight, 4);
    assert.equal(store.inner.keys().length, packCount);
    assert.equal(writer.packsUploaded, packCount);
  });
});
