import { createHash } from "node:crypto";
import { promisify } from "node:util";
import { constants as zlibConstants, zstdCompress, zstdDecompressSync } from "node:zlib";
import type { Logger } from "../logger.ts";
import { TooLargeObjectError, type ObjectStore, type StoredObject } from "../object-store.ts";
import { FencedHead, type HeadRecord } from "./fenced-head.ts";
import {
  chunkBytes,
  decodeManifest,
  maxManifestBytes,
  maxPackObjectBytes,
  encodeManifest,
  volumeKeys,
  type ChunkRef,
  type Manifest,
} from "./manifest.ts";
import { PackWriter } from "./pack-writer.ts";

const compress = promisify(zstdCompress);
/**
 * zstd's fastest level: checkpoints compete with the agent for the CPU while it writes, and a
 * chunk's bytes go up once (level 1 keeps most of level 3's ratio on workspace data).
 */
const fastest = { params: { [zlibConstants.ZSTD_c_compressionLevel]: 1 } };

/** Chunks read, hashed and compressed at once in a checkpoint. */
const transferConcurrency = 16;
/** Packs downloaded at once in a restore (each up to packBytes in memory: 64 MiB at most). */
const packDownloadsAtOnce = 16;

/** A point-in-time image of a volume, compared with the snapshot of the last durable generation. */
export interface BlockSnapshot {
  readonly sizeBytes: number;
  /** Chunk indexes that may differ from the base snapshot; every written chunk without a base. */
  changedChunks(chunkSize: number): Promise<number[]>;
  /** The chunk's bytes (zero-padded past the end of the image). */
  readChunk(index: number, chunkSize: number): Promise<Buffer>;
}

/** Where a restore writes the chunks of a generation: a new, all-zero image. */
export interface BlockSink {
  /** Writes consecutive chunks from `firstIndex` on (bytes: a whole number of chunks). */
  writeChunks(firstIndex: number, chunkSize: number, bytes: Buffer): Promise<void>;
}

/**
 * A generation in the object store (a volume's, or the metadata database's) could not be read
 * back whole: the stored data is what fails, not the store or the host.
 */
export class ReplicaDataError extends Error {
  override readonly name = "ReplicaDataError";
}

export interface CheckpointResult {
  /** False when nothing changed since the last generation: no new one was written. */
  written: boolean;
  generation: number;
  chunksUploaded: number;
  bytesUploaded: number;
}

/**
 * One volume's generations in the object store, as its single writer sees them: checkpoints
 * (new chunks in packs, then a manifest, then the head moves: a crash at any point leaves
 * the previous generation current and whole), restores, and garbage collection. Ownership is the
 * head's (FencedHead): a process that lost the volume fails its next write and never moves it.
 */
export class VolumeReplica {
  readonly volumeId: string;
  private readonly store: ObjectStore;
  private readonly head: FencedHead;
  private readonly log: Logger;
  /** The current generation's manifest, once read or written. */
  private manifest: Manifest | undefined;
  private previousManifestKey: string | undefined;

  constructor(options: {
    store: ObjectStore;
    volumeId: string;
    holder: string;
    leaseMs: number;
    log: Logger;
  }) {
    this.volumeId = options.volumeId;
    this.store = options.store;
    this.log = options.log;
    this.head = new FencedHead({
      store: options.store,
      key: volumeKeys.head(options.volumeId),
      holder: options.holder,
      leaseMs: options.leaseMs,
      what: `session storage volume ${options.volumeId}`,
    });
  }

  /** The head as last read or written. */
  get current(): HeadRecord | undefined {
    return this.head.record;
  }

  /** Reads the head without taking the volume. */
  peek(): Promise<HeadRecord | undefined> {
    return this.head.peek();
  }

  /**
   * Takes ownership (waiting out a dead owner's lease, unless it is one of `goneHolders`: known
   * dead); the current generation's head.
   */
  acquire(options: { goneHolders?: ReadonlySet<string> } = {}): Promise<HeadRecord> {
    // Another process may have written generations since: nothing known of them is kept.
    this.manifest = undefined;
    this.previousManifestKey = undefined;
    return this.head.acquire(options);
  }

  /** The current generation's manifest key, as the head last read or written says. */
  get currentManifestKey(): string | undefined {
    return manifestKeyOf(this.head.record);
  }

  /** Proof of life for a volume with nothing new to write. */
  async renew(): Promise<void> {
    await this.head.renew();
  }

  /** Lets another process take the volume at once. */
  async release(): Promise<void> {
    await this.head.release();
  }

  /** The current generation's manifest (read from the store once); undefined before the first. */
  async currentManifest(): Promise<Manifest | undefined> {
    const key = manifestKeyOf(this.head.record);
    if (key === undefined) return undefined;
    if (this.manifest === undefined) this.manifest = await this.readManifest(key);
    return this.manifest;
  }

  /**
   * Stores what changed in `snapshot` as the next generation: its new chunks in packs, then the
   * manifest, then the head. Chunks the current generation already holds (by hash) are not
   * uploaded again; all-zero chunks are never stored.
   */
  async checkpoint(snapshot: BlockSnapshot): Promise<CheckpointResult> {
    const head = this.requireHead();
    const base = await this.currentManifest();
    const changed = await snapshot.changedChunks(chunkBytes);
    if (base !== undefined && changed.length === 0) {
      return { written: false, generation: head.generation, chunksUploaded: 0, bytesUploaded: 0 };
    }
    const chunks = new Map(base?.chunks ?? []);
    const stored = new Map<string, ChunkRef>();
    for (const ref of chunks.values()) stored.set(ref.hash, ref);
    const packs = new PackWriter(this.store, this.volumeId);
    let chunksUploaded = 0;
    await forEachAtOnce(changed, transferConcurrency, async (index) => {
      await packs.room();
      const bytes = await snapshot.readChunk(index, chunkBytes);
      if (isZero(bytes)) {
        chunks.delete(index);
        return;
      }
      const hash = sha256(bytes);
      const known = stored.get(hash);
      if (known !== undefined) {
        chunks.set(index, known);
        return;
      }
      const packed = await compress(bytes, fastest);
      // Another chunk with the same bytes may have been packed while this one compressed.
      const ref = stored.get(hash) ?? packs.add(hash, packed);
      if (!stored.has(hash)) chunksUploaded += 1;
      stored.set(hash, ref);
      chunks.set(index, ref);
    });
    await packs.finish();
    const manifest: Manifest = {
      format: 2,
      volumeId: this.volumeId,
      generation: head.generation + 1,
      fence: head.fence,
      sizeBytes: snapshot.sizeBytes,
      chunkBytes,
      chunks,
      createdAt: new Date().toISOString(),
    };
    const key = volumeKeys.generation(this.volumeId, manifest.generation, manifest.fence);
    const encoded = encodeManifest(manifest);
    await this.store.put(key, encoded);
    // The head moves last: until it does, the previous generation is the current one.
    await this.head.advance({ manifest: key });
    this.previousManifestKey = manifestKeyOf(head);
    this.manifest = manifest;
    return {
      written: true,
      generation: manifest.generation,
      chunksUploaded,
      bytesUploaded: packs.bytesUploaded + encoded.byteLength,
    };
  }

  /**
   * Writes the current generation into `sink`: every pack downloaded (in parallel), every chunk
   * checked against its hash. A pack missing, or a chunk not what its hash says, throws
   * ReplicaDataError: never a partial or empty volume in place of the data.
   */
  async restore(sink: BlockSink): Promise<Manifest> {
    const manifest = await this.currentManifest();
    if (manifest === undefined) {
      throw new ReplicaDataError(`volume ${this.volumeId} has no generation in the object store`);
    }
    const byPack = new Map<string, [number, ChunkRef][]>();
    for (const [index, ref] of manifest.chunks) {
      const entries = byPack.get(ref.pack) ?? [];
      entries.push([index, ref]);
      byPack.set(ref.pack, entries);
    }
    await forEachAtOnce([...byPack], packDownloadsAtOnce, async ([pack, entries]) => {
      const key = volumeKeys.pack(this.volumeId, pack);
      const found = await this.getData(key, maxPackObjectBytes);
      if (found === undefined) {
        throw new ReplicaDataError(
          `pack ${key} of generation ${manifest.generation} is missing from ${this.store.location}`,
        );
      }
      // Chunks of consecutive indexes (most of a pack: a checkpoint packs them in order) go to
      // the image in one write.
      let run: { first: number; chunks: Buffer[] } | undefined;
      const flush = async (): Promise<void> => {
        if (run === undefined) return;
        await sink.writeChunks(run.first, manifest.chunkBytes, Buffer.concat(run.chunks));
        run = undefined;
      };
      for (const [index, ref] of entries.sort(([a], [b]) => a - b)) {
        const bytes = unpackChunk(found.body, ref, key, manifest.chunkBytes);
        if (run !== undefined && run.first + run.chunks.length !== index) await flush();
        run ??= { first: index, chunks: [] };
        run.chunks.push(bytes);
      }
      await flush();
    });
    return manifest;
  }

  /**
   * Deletes generations older than the previous one, and packs neither the current nor the
   * previous generation references. Only the owner collects, between its own checkpoints, so no
   * generation in progress can reference a pack it deletes; packs younger than `graceMs` are
   * kept all the same (a stale owner's last upload, say, costs nothing to keep a while).
   */
  async collectGarbage(graceMs: number): Promise<{ packsDeleted: number }> {
    const head = this.requireHead();
    const current = manifestKeyOf(head);
    if (current === undefined) return { packsDeleted: 0 };
    const keep = new Set([current, this.previousManifestKey].filter((key) => key !== undefined));
    const live = new Set<string>();
    for (const key of keep) {
      const manifest =
        key === current
          ? await this.currentManifest()
          : await this.readManifest(key).catch(namesNoPack);
      for (const ref of manifest?.chunks.values() ?? []) live.add(ref.pack);
    }
    // Not kept, and written by an earlier owner (what it left is garbage once it lost the
    // volume), or by this one before the generations kept. Never a later owner's: one that took
    // the volume while this process still believed it held it.
    const oldestKept = Math.min(...[...keep].map((key) => generationOf(key)?.generation ?? 0));
    const stale: string[] = [];
    for await (const object of this.store.list(volumeKeys.generations(this.volumeId))) {
      const written = generationOf(object.key);
      if (keep.has(object.key) || written === undefined) continue;
      const earlierOwner = written.fence < head.fence;
      const ownOlder = written.fence === head.fence && written.generation < oldestKept;
      if (earlierOwner || ownOlder) stale.push(object.key);
    }
    const before = Date.now() - graceMs;
    const unreferenced: string[] = [];
    const packsPrefix = volumeKeys.packs(this.volumeId);
    for await (const object of this.store.list(packsPrefix)) {
      const pack = object.key.slice(packsPrefix.length);
      if (!live.has(pack) && object.lastModified.getTime() < before) unreferenced.push(object.key);
    }
    // Proof this process still owns the volume, just before deleting: another can take it only
    // after a whole lease without a head write, far longer than these deletes take. (A process
    // that lost it fails here, and deletes nothing a newer owner's generations reference.)
    await this.head.renew();
    // Manifests first: a pack is never gone while a kept manifest names it.
    await this.store.delete(stale);
    await this.store.delete(unreferenced);
    if (unreferenced.length > 0) {
      this.log.info("session storage packs collected", {
        volumeId: this.volumeId,
        packs: unreferenced.length,
        generations: stale.length,
      });
    }
    return { packsDeleted: unreferenced.length };
  }

  /**
   * Deletes every object of the volume (its storage was deleted). Only its owner may: acquire
   * first. A process that lost the volume gets LostOwnershipError and deletes nothing.
   */
  async removeAll(): Promise<void> {
    await this.head.renew();
    const keys: string[] = [];
    for await (const object of this.store.list(volumeKeys.prefix(this.volumeId))) {
      keys.push(object.key);
    }
    // The head last: a removal cut short leaves a volume that still says who owns it.
    const head = volumeKeys.head(this.volumeId);
    await this.store.delete(keys.filter((key) => key !== head));
    await this.store.delete([head]);
  }

  /** The head this process holds; LostOwnershipError once another process took it over. */
  private requireHead(): HeadRecord {
    return this.head.owned();
  }

  /** An object of the volume's data; one larger than it can be is the data's fault. */
  private async getData(key: string, maxBytes: number): Promise<StoredObject | undefined> {
    return this.store.get(key, maxBytes).catch((error: unknown) => {
      if (!(error instanceof TooLargeObjectError)) throw error;
      throw new ReplicaDataError(`${error.message} (corrupt)`, { cause: error });
    });
  }

  private async readManifest(key: string): Promise<Manifest> {
    const found = await this.getData(key, maxManifestBytes);
    if (found === undefined) {
      throw new ReplicaDataError(`manifest ${key} is missing from ${this.store.location}`);
    }
    try {
      return decodeManifest(found.body, key);
    } catch (error) {
      throw new ReplicaDataError(error instanceof Error ? error.message : String(error), {
        cause: error,
      });
    }
  }
}

/**
 * A kept manifest that is gone or unreadable protects no pack; one the store failed to give back
 * (unreachable, a 5xx) may still name live packs, so the collection stops there.
 */
function namesNoPack(error: unknown): undefined {
  if (error instanceof ReplicaDataError) return undefined;
  throw error;
}

/** The generation and fence a manifest's key names (volumeKeys.generation). */
function generationOf(key: string): { generation: number; fence: number } | undefined {
  const match = /\/(\d+)-(\d+)$/.exec(key);
  return match === null ? undefined : { generation: Number(match[1]), fence: Number(match[2]) };
}

function manifestKeyOf(head: HeadRecord | undefined): string | undefined {
  const key = head?.payload["manifest"];
  return typeof key === "string" ? key : undefined;
}

const zeroChunk = Buffer.alloc(chunkBytes);

function isZero(bytes: Buffer): boolean {
  return bytes.byteLength === zeroChunk.byteLength
    ? bytes.equals(zeroChunk)
    : bytes.every((byte) => byte === 0);
}

function sha256(bytes: Buffer): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Runs `work` on every item, `atOnce` at a time; the first failure rejects. */
async function forEachAtOnce<T>(
  items: readonly T[],
  atOnce: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const item = items[next++] as T;
      try {
        await work(item);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(atOnce, items.length) }, worker));
}

/**
 * One chunk's bytes out of its pack, checked against its hash. Synchronous: a 64 KiB chunk
 * takes tens of microseconds, less than a trip to the thread pool (which the image's writes use).
 */
function unpackChunk(pack: Buffer, ref: ChunkRef, key: string, size: number): Buffer {
  if (ref.offset + ref.length > pack.byteLength) {
    throw new ReplicaDataError(`pack ${key} is shorter than its manifest says (corrupt)`);
  }
  let bytes: Buffer;
  try {
    bytes = zstdDecompressSync(pack.subarray(ref.offset, ref.offset + ref.length), {
      maxOutputLength: size,
    });
  } catch (error) {
    throw new ReplicaDataError(`a chunk in pack ${key} is not readable zstd (corrupt)`, {
      cause: error,
    });
  }
  if (bytes.byteLength !== size || sha256(bytes) !== ref.hash) {
    throw new ReplicaDataError(
      `a chunk in pack ${key} does not hold the bytes its hash names (corrupt)`,
    );
  }
  return bytes;
}
