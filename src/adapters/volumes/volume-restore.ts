import { open, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Manifest } from "../../core/replication/manifest.ts";
import { ReplicaDataError, type VolumeReplica } from "../../core/replication/volume-replica.ts";
import { cloneImage } from "./block-snapshots.ts";
import { reserveBlocks } from "./ext4-image.ts";
import { runCommand } from "./run-command.ts";
import type { ImageFiles } from "./volume-checkpoint.ts";
import { volumeFileName } from "./volume-files.ts";

/** Suffixes of images being made: what a crash mid-way leaves, removed at the next start. */
export const partialImageSuffixes = [".restoring", ".adopting"];

/**
 * Writes the object store's current generation into a new image (its blocks reserved), then
 * makes a clone of it the base snapshot. The image replaces the old one only once whole.
 */
export async function restoreImage(replica: VolumeReplica, files: ImageFiles): Promise<Manifest> {
  const manifest = await replica.currentManifest();
  if (manifest === undefined) {
    throw new ReplicaDataError(`volume ${replica.volumeId} has no generation in the object store`);
  }
  const partial = `${files.image}.restoring`;
  await rm(partial, { force: true });
  const file = await open(partial, "wx", 0o600);
  try {
    await file.truncate(manifest.sizeBytes);
    await reserveBlocks(partial, manifest.sizeBytes);
    await replica.restore({
      writeChunks: async (firstIndex, size, bytes) => {
        const offset = firstIndex * size;
        await file.write(bytes, 0, Math.min(bytes.byteLength, manifest.sizeBytes - offset), offset);
      },
    });
    await file.sync();
  } catch (error) {
    await file.close();
    await rm(partial, { force: true });
    throw error;
  }
  await file.close();
  await rename(partial, files.image);
  await rm(files.base, { force: true });
  await cloneImage(files.image, files.base);
  return manifest;
}

/**
 * Moves the image a volume had before the object store was set (on the data directory's disk,
 * outside the pool) into the pool, as `image`; false when there is none.
 */
export async function adoptLegacyImage(
  legacyImageDir: string,
  volumeId: string,
  image: string,
): Promise<boolean> {
  const legacy = join(legacyImageDir, `${volumeFileName(volumeId)}.img`);
  if ((await stat(legacy).catch(() => undefined)) === undefined) return false;
  const partial = `${image}.adopting`;
  await rm(partial, { force: true });
  await runCommand("cp", ["--sparse=always", legacy, partial]);
  await rename(partial, image);
  await rm(legacy);
  return true;
}
