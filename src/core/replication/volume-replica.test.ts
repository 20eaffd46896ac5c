// A volume's generations in the object store: checkpoints that upload only what changed (in
// packs), restores that verify every chunk, crash safety, fencing and garbage collection. Against
// the in-memory store and an image in memory (the real image, snapshots and S3 are
// test/replicated-volumes).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { ForwardingObjectStore, MemoryObjectStore } from "../../adapters/memory/object-store.ts";
import type { LogFields, Logger } from "../logger.ts";
import type { ObjectStore, WriteCondition } from "../object-store.ts";
import { LostOwnershipError } from "./fenced-head.ts";
import { chunkBytes, decodeManifest, volumeKeys, type Manifest } from "./manifest.ts";
import {
  ReplicaDataError,
  VolumeReplica,
  type BlockSink,
  type BlockSnapshot,
} from "./volume-replica.ts";

const volumeId = "vol-1";
const silent = { info: () => undefined, warn: () => undefined, error: () => undefined };
const foreverMs = 3_600_000;

/**
 * A volume image in memory. The chunks written since the last checkpoint that succeeded are what
 * a snapshot reports changed, as the real snapshots do against the last durable generation's.
 */
class MemoryImage {
  readonly bytes: Buffer;
  private readonly changed = new Set<number>();

  constructor(sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }

  write(offset: number, data: Buffer): void {
    data.copy(this.bytes, offset);
    const first = Math.floor(offset / chunkBytes);
    const last = Math.floor((offset + data.byteLength - 1) / chunkBytes);
    for (let index = first; index <= last; index += 1) this.changed.add(index);
  }

  snapshot(): BlockSnapshot {
    const frozen = Buffer.from(this.bytes);
    const changed = [...this.changed].sort((a, b) => a - b);
    return {
      sizeBytes: frozen.byteLength,
      changedChunks: (size) => {
        assert.equal(size, chunkBytes);
        return Promise.resolve(changed);
      },
      readChunk: (index, size) => {
        const chunk = Buffer.alloc(size);
        frozen.copy(chunk, 0, index * size, Math.min((index + 1) * size, frozen.byteLength));
        return Promise.resolve(chunk);
      },
    };
  }

  /** The last snapshot is durable: the next one is compared with it. */
  checkpointed(): void {
    this.changed.clear();
  }
}

/** Where a restore writes: a zeroed image of the manifest's size. */
class MemorySink implements BlockSink {
  bytes: Buffer;
  constructor(sizeBytes: number) {
    this.bytes = Buffer.alloc(sizeBytes);
  }
  writeChunks(firstIndex: number, size: number, chunks: Buffer): Promise<void> {
    const offset = firstIndex * size;
    chunks.copy(this.bytes, offset, 0, Math.min(chunks.byteLength, this.bytes.byteLength - offset));
    return Promise.resolve();
  }
}

/**
 * The memory store, whose writes of keys matching `failPuts` fail, whose next read of `failGetOf`
 * fails, and which counts pack writes and reads.
 */
class WatchedStore extends ForwardingObjectStore {
  constructor() {
    super(new MemoryObjectStore(), "memory://watched");
  }

  failPuts: RegExp | undefined;
  /** Writes matching failPuts that still succeed before they start failing. */
  failAfter = 0;
  failGetOf: string | undefined;
  packPuts = 0;
  packGets = 0;

  override get(key: string, maxBytes: number) {
    if (key === this.failGetOf) {
      this.failGetOf = undefined;
      return Promise.reject(new Error(`object store: reading ${key} failed (test)`));
    }
    if (key.includes("/packs/")) this.packGets += 1;
    return this.inner.get(key, maxBytes);
  }
  override put(key: string, body: Uint8Array, condition?: WriteCondition) {
    if (this.failPuts?.test(key) === true && this.failAfter-- <= 0) {
      return Promise.reject(new Error(`object store: writing ${key} failed (test)`));
    }
    if (key.includes("/packs/")) this.packPuts += 1;
    return this.inner.put(key, body, condition);
  }
  override delete(keys: readonly string[]) {
    return this.inner.delete(keys);
  }
}

/** Log lines kept for the test to look at. */
class KeptLog implements Logger {
  readonly lines: { message: string; fields: LogFields }[] = [];
  info(message: string, fields: LogFields = {}): void {
    this.lines.push({ message, fields });
  }
  warn(message: string, fields: LogFields = {}): void {
    this.lines.push({ message, fields });
  }
  error(message: string, fields: LogFields = {}): void {
    this.lines.push({ message, fields });
  }
}

function replicaOf(
  store: ObjectStore,
  holder: string,
  leaseMs = foreverMs,
  log: Logger = silent,
): VolumeReplica {
  return new VolumeReplica({ store, volumeId, holder, leaseMs, log });
}

/** Checkpoints `image` through `replica`, marking it durable when that worked. */
async function checkpoint(replica: VolumeReplica, image: MemoryImage) {
  const result = await replica.checkpoint(image.snapshot());
  image.checkpointed();
  return result;
}

/** What a process that takes the volume next (its owner released it) restores. */
async function restoredElsewhere(store: ObjectStore, sizeBytes: number): Promise<Buffer> {
  const replica = replicaOf(store, "node-restorer");
  await replica.acquire();
  const sink = new MemorySink(sizeBytes);
  await replica.restore(sink);
  await replica.release();
  return sink.bytes;
}

function keysUnder(store: WatchedStore, prefix: string): string[] {
  return store.inner.keys().filter((key) => key.startsWith(prefix));
}

async function storedManifest(store: WatchedStore, generation: number, fence = 1) {
  const key = volumeKeys.generation(volumeId, generation, fence);
  const found = (await store.inner.get(key, 2 ** 30)) ?? assert.fail(`${key} is not stored`);
  return decodeManifest(found.body, key);
}

/** The keys of the packs `manifest` references. */
function packsOf(manifest: Manifest): Set<string> {
  return new Set([...manifest.chunks.values()].map((ref) => volumeKeys.pack(volumeId, ref.pack)));
}

/** Sixteen chunks and a partial seventeenth: the image's end is not a chunk boundary. */
const imageBytes = 16 * chunkBytes + 1000;

describe("a volume's replica in the object store", () => {
  it("stores the non-zero chunks of a first generation, and restores it byte for byte", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    image.write(0, randomBytes(100));
    image.write(5 * chunkBytes + 7, randomBytes(chunkBytes)); // spans chunks 5 and 6
    image.write(16 * chunkBytes, randomBytes(1000)); // the partial last chunk
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    const result = await checkpoint(replica, image);
    assert.equal(result.written, true);
    assert.equal(result.generation, 1);
    assert.equal(result.chunksUploaded, 4);
    const manifest = await replica.currentManifest();
    assert.deepEqual(
      [...(manifest?.chunks.keys() ?? [])].sort((a, b) => a - b),
      [0, 5, 6, 16],
    );
    // Four chunks are one pack, and the restore downloads it once.
    assert.deepEqual(keysUnder(store, volumeKeys.packs(volumeId)).length, 1);
    assert.equal(store.packPuts, 1);
    await replica.release();

    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));
    assert.equal(store.packGets, 1);
  });

  it("uploads only the chunks that changed, and each distinct content once", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    const same = randomBytes(chunkBytes);
    for (const index of [1, 2, 3]) image.write(index * chunkBytes, same);
    image.write(8 * chunkBytes, randomBytes(chunkBytes));
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    assert.equal((await checkpoint(replica, image)).chunksUploaded, 2);
    const first = await storedManifest(store, 1);
    assert.equal(packsOf(first).size, 1);

    image.write(8 * chunkBytes + 100, Buffer.from("one small edit"));
    const edit = await checkpoint(replica, image);
    assert.equal(edit.generation, 2);
    assert.equal(edit.chunksUploaded, 1);
    assert.ok(edit.bytesUploaded < 2 * chunkBytes, `${edit.bytesUploaded} bytes uploaded`);
    // The manifest agrees: only chunk 8 is somewhere new; the others keep their place.
    const second = await storedManifest(store, 2);
    for (const [index, ref] of second.chunks) {
      if (index === 8) assert.notEqual(ref.pack, first.chunks.get(8)?.pack);
      else assert.deepEqual(ref, first.chunks.get(index), `chunk ${index}`);
    }
    // A chunk made equal to one already stored is not uploaded again: no pack at all.
    image.write(4 * chunkBytes, same);
    assert.equal((await checkpoint(replica, image)).chunksUploaded, 0);
    assert.deepEqual((await storedManifest(store, 3)).chunks.get(4), first.chunks.get(1));
    assert.equal(store.packPuts, 2);
    await replica.release();
    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));
  });

  it("writes no generation when nothing changed", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    image.write(0, randomBytes(10));
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    await checkpoint(replica, image);
    const keys = store.inner.keys();
    const again = await checkpoint(replica, image);
    assert.deepEqual(again, { written: false, generation: 1, chunksUploaded: 0, bytesUploaded: 0 });
    assert.deepEqual(store.inner.keys(), keys);
  });

  it("drops from the manifest a chunk zeroed since, and restores zeros there", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    image.write(2 * chunkBytes, randomBytes(chunkBytes));
    image.write(3 * chunkBytes, randomBytes(chunkBytes));
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    await checkpoint(replica, image);
    image.write(2 * chunkBytes, Buffer.alloc(chunkBytes));
    await checkpoint(replica, image);
    assert.deepEqual([...((await replica.currentManifest())?.chunks.keys() ?? [])], [3]);
    await replica.release();
    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));
  });

  it("keeps the previous generation current and whole when the head cannot move", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    image.write(0, randomBytes(3 * chunkBytes));
    const crashing = replicaOf(store, "node-a");
    await crashing.acquire();
    await checkpoint(crashing, image);
    const firstGeneration = Buffer.from(image.bytes);

    // Chunks and manifest stored, then the process dies before the head moves.
    image.write(chunkBytes, randomBytes(2 * chunkBytes));
    store.failPuts = /\/head$/;
    await assert.rejects(crashing.checkpoint(image.snapshot()), /head failed/);
    assert.ok(store.inner.keys().includes(volumeKeys.generation(volumeId, 2, 1)));
    store.failPuts = undefined;

    const next = replicaOf(store, "node-b", 50);
    const head = await next.acquire();
    assert.equal(head.generation, 1);
    const sink = new MemorySink(imageBytes);
    await next.restore(sink);
    assert.ok(sink.bytes.equals(firstGeneration));
  });

  it("keeps the previous generation current when a pack upload fails midway", async () => {
    const store = new WatchedStore();
    // Room for 150 incompressible chunks: about 10 MB, three packs.
    const bigImageBytes = 160 * chunkBytes;
    const image = new MemoryImage(bigImageBytes);
    image.write(0, randomBytes(2 * chunkBytes));
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    await checkpoint(replica, image);
    const firstGeneration = Buffer.from(image.bytes);
    image.write(4 * chunkBytes, randomBytes(150 * chunkBytes));
    store.failPuts = /\/packs\//;
    store.failAfter = 1;
    await assert.rejects(replica.checkpoint(image.snapshot()), /packs.*failed/);
    store.failPuts = undefined;
    assert.equal(store.packPuts, 2, "one pack of the failed checkpoint was stored before");
    assert.equal((await replica.peek())?.generation, 1);
    assert.deepEqual(keysUnder(store, volumeKeys.generations(volumeId)), [
      volumeKeys.generation(volumeId, 1, 1),
    ]);
    await replica.release();
    assert.ok((await restoredElsewhere(store, bigImageBytes)).equals(firstGeneration));
  });

  it("refuses a pack that is missing, truncated or holds other bytes, and a damaged manifest", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    image.write(0, randomBytes(2 * chunkBytes));
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    await checkpoint(replica, image);
    await replica.release();
    // Both chunks are in one pack; the damage is in the second one's bytes.
    const manifest = await storedManifest(store, 1);
    const ref = manifest.chunks.get(1) ?? assert.fail("chunk 1 is stored");
    const packKey = volumeKeys.pack(volumeId, ref.pack);
    assert.deepEqual(packsOf(manifest), new Set([packKey]));
    const original = (await store.inner.get(packKey, 2 ** 30)) ?? assert.fail("the pack is stored");
    const damaged = (change: (pack: Buffer) => Buffer) => () =>
      store.inner.put(packKey, change(Buffer.from(original.body)));
    const middle = ref.offset + Math.floor(ref.length / 2);

    const cases: [string, () => Promise<unknown>, RegExp][] = [
      ["missing", () => store.inner.delete([packKey]), /is missing from memory:\/\/watched/],
      [
        // Random bytes are stored raw: a flipped byte still decompresses, to other bytes.
        "other bytes in one chunk's range",
        damaged((pack) => pack.fill(~(pack[middle] ?? 0) & 0xff, middle, middle + 1)),
        /does not hold the bytes its hash names \(corrupt\)/,
      ],
      [
        "not zstd in one chunk's range",
        damaged((pack) => pack.fill(0, ref.offset, ref.offset + 4)),
        /is not readable zstd/,
      ],
      [
        "truncated",
        damaged((pack) => pack.subarray(0, ref.offset + ref.length - 1)),
        /is shorter than its manifest says \(corrupt\)/,
      ],
    ];
    for (const [what, damage, message] of cases) {
      await damage();
      await assert.rejects(
        restoredElsewhere(store, imageBytes),
        (error: unknown) => error instanceof ReplicaDataError && message.test(error.message),
        what,
      );
      await store.inner.put(packKey, original.body);
    }
    // The same pack put back: the volume restores, so the pack alone was what failed.
    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));

    const manifestKey = volumeKeys.generation(volumeId, 1, 1);
    await store.inner.put(manifestKey, Buffer.from("not gzip"));
    await assert.rejects(restoredElsewhere(store, imageBytes), /is not gzipped JSON/);
  });

  it("never lets a process that lost the volume move its head", async () => {
    const store = new WatchedStore();
    const staleImage = new MemoryImage(imageBytes);
    staleImage.write(0, randomBytes(chunkBytes));
    const stale = replicaOf(store, "node-a");
    await stale.acquire();
    await checkpoint(stale, staleImage);

    const image = new MemoryImage(imageBytes);
    image.bytes.set(staleImage.bytes);
    const taker = replicaOf(store, "node-b", 50);
    await taker.acquire();
    const sink = new MemorySink(imageBytes);
    await taker.restore(sink);
    image.write(4 * chunkBytes, randomBytes(chunkBytes));
    await checkpoint(taker, image);

    staleImage.write(9 * chunkBytes, randomBytes(chunkBytes));
    await assert.rejects(stale.checkpoint(staleImage.snapshot()), LostOwnershipError);
    const head = await taker.peek();
    assert.deepEqual(
      { holder: head?.holder, fence: head?.fence, generation: head?.generation },
      { holder: "node-b", fence: 2, generation: 2 },
    );
    await taker.release();
    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));
  });

  it("collects old manifests and unreferenced packs, never one a kept generation references", async () => {
    const store = new WatchedStore();
    const log = new KeptLog();
    const image = new MemoryImage(imageBytes);
    const replica = replicaOf(store, "node-a", foreverMs, log);
    await replica.acquire();
    // Chunk 10 is written once: its pack stays live while the other chunks in it are rewritten.
    image.write(10 * chunkBytes, randomBytes(chunkBytes));
    for (let round = 0; round < 5; round += 1) {
      image.write(0, randomBytes(2 * chunkBytes));
      await checkpoint(replica, image);
    }
    const packCount = () => keysUnder(store, volumeKeys.packs(volumeId)).length;
    assert.equal(packCount(), 5);
    // Within the grace, no pack goes (manifests older than the previous one do, grace or not).
    assert.deepEqual(await replica.collectGarbage(foreverMs), { packsDeleted: 0 });
    assert.equal(packCount(), 5);
    const manifests = [
      volumeKeys.generation(volumeId, 4, 1),
      volumeKeys.generation(volumeId, 5, 1),
    ];
    assert.deepEqual(keysUnder(store, volumeKeys.generations(volumeId)), manifests);

    // The second and third generations' packs went out of use; the first's still holds chunk 10.
    assert.deepEqual(await replica.collectGarbage(0), { packsDeleted: 2 });
    assert.deepEqual(keysUnder(store, volumeKeys.generations(volumeId)), manifests);
    const referenced = new Set([
      ...packsOf(await storedManifest(store, 4)),
      ...packsOf(await storedManifest(store, 5)),
    ]);
    assert.equal(referenced.size, 3);
    assert.deepEqual(new Set(keysUnder(store, volumeKeys.packs(volumeId))), referenced);
    assert.deepEqual(
      log.lines.map((line) => [line.message, line.fields]),
      [["session storage packs collected", { volumeId, packs: 2, generations: 0 }]],
    );
    await replica.release();
    assert.ok((await restoredElsewhere(store, imageBytes)).equals(image.bytes));
  });

  it("deletes no pack of the previous generation when its manifest cannot be read", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    const replica = replicaOf(store, "node-a");
    await replica.acquire();
    for (let round = 0; round < 3; round += 1) {
      image.write(0, randomBytes(chunkBytes));
      await checkpoint(replica, image);
    }
    const previous = volumeKeys.generation(volumeId, 2, 1);
    const previousPacks = packsOf(await storedManifest(store, 2));
    store.failGetOf = previous;
    await assert.rejects(replica.collectGarbage(0), /reading .*000000000002-1 failed \(test\)/);
    const stored = new Set(keysUnder(store, volumeKeys.packs(volumeId)));
    for (const pack of previousPacks) assert.ok(stored.has(pack), `${pack} of ${previous} kept`);

    // Read the next time: kept all the same, and only the first generation's pack goes.
    assert.deepEqual(await replica.collectGarbage(0), { packsDeleted: 1 });
    assert.deepEqual(new Set(keysUnder(store, volumeKeys.packs(volumeId))).size, 2);
    assert.deepEqual(keysUnder(store, volumeKeys.generations(volumeId)), [
      previous,
      volumeKeys.generation(volumeId, 3, 1),
    ]);
  });

  it("removes every object of one volume, and nothing of another", async () => {
    const store = new WatchedStore();
    for (const id of [volumeId, "vol-2"]) {
      const image = new MemoryImage(imageBytes);
      image.write(0, randomBytes(chunkBytes));
      const replica = new VolumeReplica({
        store,
        volumeId: id,
        holder: "node-a",
        leaseMs: foreverMs,
        log: silent,
      });
      await replica.acquire();
      await checkpoint(replica, image);
      await replica.release();
    }
    const remover = new VolumeReplica({
      store,
      volumeId,
      holder: "node-b",
      leaseMs: foreverMs,
      log: silent,
    });
    await remover.acquire();
    await remover.removeAll();
    assert.deepEqual(keysUnder(store, volumeKeys.prefix(volumeId)), []);
    assert.ok(keysUnder(store, volumeKeys.prefix("vol-2")).length >= 3);
  });

  it("lets a process that lost the volume neither remove it nor collect the new owner's generations", async () => {
    const store = new WatchedStore();
    const image = new MemoryImage(imageBytes);
    const replicaOf = (holder: string) =>
      new VolumeReplica({ store, volumeId: "vol-3", holder, leaseMs: 1, log: silent });
    const stale = replicaOf("node-a");
    await stale.acquire();
    for (let round = 0; round < 3; round += 1) {
      image.write(round * chunkBytes, randomBytes(chunkBytes));
      await checkpoint(stale, image);
    }
    // node-a goes quiet past its (1 ms) lease; node-b takes the volume and writes on.
    const owner = replicaOf("node-b");
    await owner.acquire();
    for (let round = 3; round < 6; round += 1) {
      image.write(round * chunkBytes, randomBytes(chunkBytes));
      await checkpoint(owner, image);
    }
    const ownersGenerations = keysUnder(store, volumeKeys.generations("vol-3")).filter((key) =>
      key.endsWith("-2"),
    );
    assert.equal(ownersGenerations.length, 3);
    await assert.rejects(stale.removeAll(), LostOwnershipError);
    await stale.collectGarbage(0).catch(() => undefined);
    for (const key of ownersGenerations.slice(-2)) {
      assert.ok(keysUnder(store, volumeKeys.generations("vol-3")).includes(key), key);
    }
    assert.ok(keysUnder(store, volumeKeys.prefix("vol-3")).length > 0);
  });
});
