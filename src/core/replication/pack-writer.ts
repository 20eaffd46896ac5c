import { randomUUID } from "node:crypto";
import type { ObjectStore } from "../object-store.ts";
import { packBytes, volumeKeys, type ChunkRef } from "./manifest.ts";

/** Packs uploaded at once; a checkpoint that fills more waits for one to finish. */
const uploadsAtOnce = 4;

/**
 * Gathers a checkpoint's compressed chunks into packs (one object each, up to packBytes) and
 * uploads each as it fills. A chunk's place is known the moment it is added: packs are named by
 * a random id, not their content (each chunk carries its own hash).
 */
export class PackWriter {
  private readonly store: ObjectStore;
  private readonly volumeId: string;
  private current: { id: string; parts: Buffer[]; bytes: number } | undefined;
  private readonly uploads = new Set<Promise<void>>();
  private failure: Error | undefined;
  /** Bytes handed to the store so far (packs started). */
  bytesUploaded = 0;
  packsUploaded = 0;

  constructor(store: ObjectStore, volumeId: string) {
    this.store = store;
    this.volumeId = volumeId;
  }

  /** Adds a compressed chunk; where it will be once its pack is stored. */
  add(hash: string, packed: Buffer): ChunkRef {
    this.current ??= { id: randomUUID(), parts: [], bytes: 0 };
    const ref = {
      hash,
      pack: this.current.id,
      offset: this.current.bytes,
      length: packed.byteLength,
    };
    this.current.parts.push(packed);
    this.current.bytes += packed.byteLength;
    if (this.current.bytes >= packBytes) this.seal();
    return ref;
  }

  /** Waits while too many packs are uploading, so a big checkpoint holds few in memory. */
  async room(): Promise<void> {
    while (this.uploads.size >= uploadsAtOnce) await Promise.race(this.uploads);
    this.throwIfFailed();
  }

  /** Uploads the last pack and waits for every upload; throws the first that failed. */
  async finish(): Promise<void> {
    this.seal();
    await Promise.all(this.uploads);
    this.throwIfFailed();
  }

  private seal(): void {
    const pack = this.current;
    if (pack === undefined) return;
    this.current = undefined;
    const body = Buffer.concat(pack.parts);
    this.bytesUploaded += body.byteLength;
    this.packsUploaded += 1;
    const upload = this.store
      .put(volumeKeys.pack(this.volumeId, pack.id), body)
      .then(
        () => undefined,
        (error: unknown) => {
          this.failure ??= error instanceof Error ? error : new Error(String(error));
        },
      )
      .finally(() => this.uploads.delete(upload));
    this.uploads.add(upload);
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}
