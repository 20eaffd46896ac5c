import { gunzipSync, gzipSync } from "node:zlib";

/**
 * One generation of a volume in the object store: where the bytes of each non-zero chunk of the
 * volume's image are, and their SHA-256. Chunks absent from the list are zeros.
 *
 * Chunks are stored zstd-compressed, many to an object (a pack, up to packBytes): a checkpoint
 * uploads one pack of what changed, and a restore downloads tens of packs, not thousands of
 * chunks (each request costs about a millisecond, whatever its size). A chunk that did not change
 * keeps its place in an older pack.
 *
 * Layout under Berth's prefix, per volume (so deleting a volume is deleting its prefix, and no
 * pack is shared with another volume's generations):
 *   volumes/<id>/head                    which generation is current, and who owns the volume
 *   volumes/<id>/generations/<g>-<fence> this manifest, gzipped JSON
 *   volumes/<id>/packs/<uuid>            compressed chunks, one after another
 */
export interface Manifest {
  format: 2;
  volumeId: string;
  generation: number;
  fence: number;
  sizeBytes: number;
  chunkBytes: number;
  /** Chunk index -> where its bytes are; zero chunks are left out. */
  chunks: Map<number, ChunkRef>;
  createdAt: string;
}

/** A chunk's bytes: SHA-256 (hex) of the uncompressed chunk, and its compressed bytes' place. */
export interface ChunkRef {
  hash: string;
  pack: string;
  offset: number;
  length: number;
}

/** The volume's chunks are this big: small enough that editing one file uploads kilobytes. */
export const chunkBytes = 64 * 1024;

/** A pack is closed and uploaded once it holds this many bytes (its last chunk may go past it). */
export const packBytes = 4 * 1024 * 1024;

/** The most a stored pack can hold: a full pack and one incompressible chunk past it. */
export const maxPackObjectBytes = packBytes + 2 * chunkBytes;

/**
 * The most a manifest may take, stored and unpacked: a fully written volume of 128 GiB (2
 * million chunks) fits. What the store gives back is not trusted to be small.
 */
export const maxManifestBytes = 128 * 1024 * 1024;
const maxManifestJsonBytes = 512 * 1024 * 1024;

/** The largest volume a manifest may describe (sessionStorageBytes' own limit). */
const maxVolumeBytes = 1024 ** 4;

export const volumeKeys = {
  prefix: (volumeId: string) => `volumes/${volumeId}/`,
  head: (volumeId: string) => `volumes/${volumeId}/head`,
  generation: (volumeId: string, generation: number, fence: number) =>
    `volumes/${volumeId}/generations/${String(generation).padStart(12, "0")}-${fence}`,
  generations: (volumeId: string) => `volumes/${volumeId}/generations/`,
  pack: (volumeId: string, pack: string) => `volumes/${volumeId}/packs/${pack}`,
  packs: (volumeId: string) => `volumes/${volumeId}/packs/`,
};

/** The manifest as stored: each pack named once, chunks as [index, hash, pack number, offset, length]. */
export function encodeManifest(manifest: Manifest): Buffer {
  const packs: string[] = [];
  const packNumbers = new Map<string, number>();
  const chunks = [...manifest.chunks]
    .sort(([a], [b]) => a - b)
    .map(([index, ref]) => {
      let number = packNumbers.get(ref.pack);
      if (number === undefined) {
        number = packs.push(ref.pack) - 1;
        packNumbers.set(ref.pack, number);
      }
      return [index, ref.hash, number, ref.offset, ref.length];
    });
  return gzipSync(JSON.stringify({ ...manifest, packs, chunks }));
}

const sha256Hex = /^[0-9a-f]{64}$/;
const packName = /^[0-9a-f-]{36}$/;

/** Reads a manifest back, checking every field: what the store gives back is not trusted. */
export function decodeManifest(body: Buffer, key: string): Manifest {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(
      gunzipSync(body, { maxOutputLength: maxManifestJsonBytes }).toString("utf8"),
    ) as Record<string, unknown>;
  } catch (error) {
    throw new Error(`manifest ${key} is not gzipped JSON`, { cause: error });
  }
  const number = (name: string): number => {
    const value = parsed[name];
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0)
      throw new Error(`manifest ${key} has no valid ${name}`);
    return value;
  };
  if (parsed["format"] !== 2) {
    throw new Error(
      `manifest ${key} is of format ${String(parsed["format"])}; this Berth reads format 2`,
    );
  }
  const sizeBytes = number("sizeBytes");
  if (sizeBytes > maxVolumeBytes) throw new Error(`manifest ${key} has no valid sizeBytes`);
  const size = number("chunkBytes");
  if (size !== chunkBytes) throw new Error(`manifest ${key} has no valid chunkBytes`);
  const packs = parsed["packs"];
  if (
    !Array.isArray(packs) ||
    !packs.every((pack) => typeof pack === "string" && packName.test(pack))
  )
    throw new Error(`manifest ${key} has no valid pack list`);
  const listed = parsed["chunks"];
  if (!Array.isArray(listed)) throw new Error(`manifest ${key} has no chunk list`);
  const chunks = new Map<number, ChunkRef>();
  const isCount = (value: unknown): value is number =>
    typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
  for (const entry of listed) {
    const [index, hash, pack, offset, length] = Array.isArray(entry) ? (entry as unknown[]) : [];
    if (
      !isCount(index) ||
      index * size >= sizeBytes ||
      typeof hash !== "string" ||
      !sha256Hex.test(hash) ||
      !isCount(pack) ||
      pack >= packs.length ||
      !isCount(offset) ||
      !isCount(length) ||
      length === 0
    ) {
      throw new Error(
        `manifest ${key} lists a chunk that is not (index, sha256, pack, offset, length) within the volume`,
      );
    }
    chunks.set(index, { hash, pack: packs[pack] as string, offset, length });
  }
  return {
    format: 2,
    volumeId: String(parsed["volumeId"]),
    generation: number("generation"),
    fence: number("fence"),
    sizeBytes,
    chunkBytes: size,
    chunks,
    createdAt: String(parsed["createdAt"]),
  };
}
