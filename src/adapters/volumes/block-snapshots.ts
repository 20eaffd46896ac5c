import { nativeBinary } from "../host/native-binaries.ts";
import { commandError, runCommand } from "./run-command.ts";

/**
 * Point-in-time snapshots of a volume's image, and which of its chunks changed between two.
 *
 * The images live in a reflink pool (reflink-pool.ts): a snapshot is a clone sharing every block
 * with the image, taken while the volume is in use (crash-consistent: native/berth-snapshot.c
 * says why it is not frozen; writers wait only for the clone). From then on every write to the image goes to a new block (copy-on-write),
 * and the snapshot keeps the old one. So while the previous snapshot is kept, the chunks whose
 * block mapping is the same in it and in the next one hold the same bytes: no block either maps
 * can be freed and given to something else in between. Comparing the two maps (FIEMAP) finds
 * the changed chunks without reading the image.
 *
 * Everything here runs native/berth-snapshot as root, on paths in Berth's root-only data
 * directory: it opens nothing through a symbolic link and never replaces an existing file.
 */

/** One extent of a file's block map, in bytes. */
export interface Extent {
  logical: number;
  physical: number;
  length: number;
  /** Allocated but never written: reads as zeros. */
  unwritten: boolean;
}

/** FIEMAP_EXTENT_* flags (linux/fiemap.h). */
const extentUnwritten = 0x800;
/**
 * Flags saying the physical address does not identify the extent's blocks (not known yet,
 * delayed allocation, encoded, inline in metadata). An immutable clone mapped after a flush has
 * none; one that did would make equal addresses mean nothing.
 */
const extentAddressUnreliable = 0x2 | 0x4 | 0x8 | 0x200;

/**
 * Clones `source` into `target`, which must not exist. liveMount: where the image's filesystem
 * is mounted and in use: its free blocks are discarded and it is flushed first, and the clone is
 * crash-consistent (native/berth-snapshot.c says why it is not frozen). Returns how long the
 * clone itself took, the only time writers wait.
 */
export async function cloneImage(
  source: string,
  target: string,
  options: { liveMount?: string } = {},
): Promise<{ cloneMicros: number }> {
  const live = options.liveMount === undefined ? [] : ["--live", options.liveMount];
  const stdout = await snapshotCommand(
    ["clone", ...live, source, target],
    `cloning ${source} into ${target}`,
  );
  const { cloneMicros } = JSON.parse(stdout) as { cloneMicros: number };
  return { cloneMicros };
}

/** The block map of `file` (flushed first), in logical order. */
export async function imageExtents(file: string): Promise<Extent[]> {
  const stdout = await snapshotCommand(["extents", file], `mapping ${file}`);
  return stdout
    .split("\n")
    .filter((line) => line !== "")
    .map((line) => parseExtent(line, file));
}

function parseExtent(line: string, file: string): Extent {
  const [logical = NaN, physical = NaN, length = NaN, flags = NaN] = line.split(" ").map(Number);
  if (![logical, physical, length, flags].every(Number.isSafeInteger)) {
    throw new Error(`berth-snapshot printed an unreadable extent for ${file}: "${line}"`);
  }
  if ((flags & extentAddressUnreliable) !== 0) {
    throw new Error(
      `${file} has an extent at ${logical} whose blocks have no fixed address yet (flags ${flags})`,
    );
  }
  return { logical, physical, length, unwritten: (flags & extentUnwritten) !== 0 };
}

/** A large image's map can run to megabytes of text; execFile's default limit is 1 MiB. */
const maxOutputBytes = 512 * 1024 * 1024;

async function snapshotCommand(args: string[], doing: string): Promise<string> {
  try {
    const { stdout } = await runCommand(nativeBinary("berth-snapshot"), args, {
      maxBuffer: maxOutputBytes,
    });
    return stdout;
  } catch (error) {
    throw new Error(`${doing} failed: ${commandError(error)}`, { cause: error });
  }
}

/**
 * Indexes (ascending) of the `chunkBytes` chunks of a `sizeBytes` image whose mapping differs
 * anywhere between the snapshots `before` and `after`: another physical address, written in one
 * and unwritten in the other, or a hole in one only. How the extents are split does not matter,
 * only where each byte maps. With no `before` (the first snapshot), every chunk holding written
 * data.
 */
export function changedChunks(
  before: Extent[] | undefined,
  after: Extent[],
  chunkBytes: number,
  sizeBytes: number,
): number[] {
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0) {
    throw new RangeError(`chunkBytes must be a positive integer (got ${chunkBytes})`);
  }
  const afterExtents = before === undefined ? after.filter((extent) => !extent.unwritten) : after;
  const chunks: number[] = [];
  for (const [start, end] of differingRanges(
    mappedRuns(before ?? [], sizeBytes),
    mappedRuns(afterExtents, sizeBytes),
  )) {
    const first = Math.floor(start / chunkBytes);
    const last = Math.floor((end - 1) / chunkBytes);
    // Ranges come in ascending order: only the previous one can share a chunk with this one.
    for (let chunk = Math.max(first, (chunks.at(-1) ?? -1) + 1); chunk <= last; chunk += 1) {
      chunks.push(chunk);
    }
  }
  return chunks;
}

/** A stretch of a file mapped to contiguous blocks: [start, end) at `physical` onwards. */
interface Run {
  start: number;
  end: number;
  physical: number;
  unwritten: boolean;
}

/**
 * The extents within [0, sizeBytes), sorted, with neighbours that continue each other on disk
 * joined: two maps of the same mapping give the same runs however the kernel split them.
 */
function mappedRuns(extents: Extent[], sizeBytes: number): Run[] {
  const runs: Run[] = [];
  for (const extent of [...extents].sort((a, b) => a.logical - b.logical)) {
    const start = Math.max(extent.logical, runs.at(-1)?.end ?? 0);
    const end = Math.min(extent.logical + extent.length, sizeBytes);
    if (end <= start) continue;
    const physical = extent.physical + (start - extent.logical);
    const previous = runs.at(-1);
    if (
      previous?.end === start &&
      previous.unwritten === extent.unwritten &&
      previous.physical + (previous.end - previous.start) === physical
    ) {
      previous.end = end;
    } else {
      runs.push({ start, end, physical, unwritten: extent.unwritten });
    }
  }
  return runs;
}

/**
 * The byte ranges, ascending, where two sets of runs map differently. Walks both at once from
 * one boundary (a run's start or end in either) to the next: between two boundaries each side
 * is a hole or one contiguous run, so comparing where the range starts compares all of it.
 */
function* differingRanges(before: Run[], after: Run[]): Generator<[number, number]> {
  let position = 0;
  let beforeIndex = 0;
  let afterIndex = 0;
  for (;;) {
    while ((before[beforeIndex]?.end ?? Infinity) <= position) beforeIndex += 1;
    while ((after[afterIndex]?.end ?? Infinity) <= position) afterIndex += 1;
    const beforeRun = before[beforeIndex];
    const afterRun = after[afterIndex];
    if (beforeRun === undefined && afterRun === undefined) return;
    const next = Math.min(nextBoundary(beforeRun, position), nextBoundary(afterRun, position));
    const beforeMapped = covering(beforeRun, position);
    const afterMapped = covering(afterRun, position);
    if (
      (beforeMapped !== undefined || afterMapped !== undefined) &&
      !sameMapping(beforeMapped, afterMapped, position)
    ) {
      yield [position, next];
    }
    position = next;
  }
}

/** `run` if it maps `position`; undefined if `position` falls before it (a hole). */
function covering(run: Run | undefined, position: number): Run | undefined {
  return run !== undefined && run.start <= position ? run : undefined;
}

/** Where the mapping may next change: the end of the run covering `position`, or the next start. */
function nextBoundary(run: Run | undefined, position: number): number {
  if (run === undefined) return Infinity;
  return run.start <= position ? run.end : run.start;
}

function sameMapping(a: Run | undefined, b: Run | undefined, position: number): boolean {
  if (a === undefined || b === undefined) return a === b;
  return (
    a.unwritten === b.unwritten &&
    a.physical + (position - a.start) === b.physical + (position - b.start)
  );
}
