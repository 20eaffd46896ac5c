import { open, rename, rm, stat } from "node:fs/promises";
import type {
  BlockSnapshot,
  CheckpointResult,
  VolumeReplica,
} from "../../core/replication/volume-replica.ts";
import { changedChunks, cloneImage, imageExtents } from "./block-snapshots.ts";

/**
 * The local image is not based on the object store's current generation (another machine wrote
 * newer ones): uploading what changed in it would mix two histories into one corrupt image.
 */
export class StaleLocalCopyError extends Error {
  override readonly name = "StaleLocalCopyError";
}

/** A volume's image in the pool and its two snapshot files. */
export interface ImageFiles {
  image: string;
  /** The clone the last durable generation was taken from: what the next one is compared with. */
  base: string;
  /** The clone a checkpoint in progress reads from. */
  next: string;
}

export interface ImageCheckpoint extends CheckpointResult {
  /** The manifest the image is now based on. */
  manifestKey: string | undefined;
  /** Clone to head moved. */
  ms: number;
}

/**
 * One checkpoint of a volume's image: clone it (live, when `liveMount` is where it is mounted
 * and in use), find the chunks that differ from the base snapshot, store them as the next
 * generation, and keep the clone as the new base. `basedOn`: the manifest this machine's image
 * started from. Against a store with no generation yet every written chunk is uploaded (a new
 * bucket or prefix gets the whole volume, not what changed since some other store's generation).
 */
export async function checkpointImage(options: {
  files: ImageFiles;
  replica: VolumeReplica;
  basedOn: string | undefined;
  liveMount: string | undefined;
}): Promise<ImageCheckpoint> {
  const { files, replica } = options;
  const started = performance.now();
  const current = replica.currentManifestKey;
  if (current !== undefined && current !== options.basedOn) {
    throw new StaleLocalCopyError(
      `this machine's copy of volume ${replica.volumeId} is not based on the object store's current generation (${current}, written by another Berth process); it is not uploaded, and the next attach restores the store's`,
    );
  }
  await rm(files.next, { force: true });
  await cloneImage(
    files.image,
    files.next,
    options.liveMount === undefined ? {} : { liveMount: options.liveMount },
  );
  try {
    const compareWith = current === undefined ? undefined : await existing(files.base);
    const snapshot = await snapshotOf(files.next, compareWith);
    const result = await replica.checkpoint(snapshot.blocks).finally(() => snapshot.close());
    // The clone is what the current generation is now: the base of the next comparison.
    await rename(files.next, files.base);
    // Nothing new to write: the head is still rewritten, proof that its owner is alive.
    if (!result.written) await replica.renew();
    return {
      ...result,
      manifestKey: replica.currentManifestKey,
      ms: Math.round(performance.now() - started),
    };
  } finally {
    await rm(files.next, { force: true });
  }
}

async function existing(path: string): Promise<string | undefined> {
  return (await stat(path).catch(() => undefined)) === undefined ? undefined : path;
}

/** A clone as a BlockSnapshot, compared with `base` (undefined: every written chunk changed). */
async function snapshotOf(
  clone: string,
  base: string | undefined,
): Promise<{ blocks: BlockSnapshot; close: () => Promise<void> }> {
  const file = await open(clone, "r");
  try {
    const sizeBytes = (await file.stat()).size;
    const after = await imageExtents(clone);
    const before = base === undefined ? undefined : await imageExtents(base);
    return {
      blocks: {
        sizeBytes,
        changedChunks: (size) => Promise.resolve(changedChunks(before, after, size, sizeBytes)),
        readChunk: async (index, size) => {
          const bytes = Buffer.alloc(size);
          await file.read(bytes, 0, size, index * size);
          return bytes;
        },
      },
      close: () => file.close(),
    };
  } catch (error) {
    await file.close();
    throw error;
  }
}
