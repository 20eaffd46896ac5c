// Point-in-time snapshots of a session volume (a loop-mounted ext4 image) in a reflink pool, and
// the chunks that changed between two: against the real kernel (XFS reflink, FITRIM, FIEMAP, and
// a mount replaying the journal of a snapshot taken while the volume was written), as root.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import {
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { open, rm, stat, type FileHandle } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, before, describe, it } from "node:test";
import { isMountPoint } from "../src/adapters/host/mount-table.ts";
import {
  changedChunks,
  cloneImage,
  imageExtents,
  type Extent,
} from "../src/adapters/volumes/block-snapshots.ts";
import { formatExt4, reserveBlocks } from "../src/adapters/volumes/ext4-image.ts";
import { LoopDeviceTable } from "../src/adapters/volumes/loop-devices.ts";
import { ReflinkPool } from "../src/adapters/volumes/reflink-pool.ts";
import { runCommand } from "../src/adapters/volumes/run-command.ts";
import { waitFor } from "./support/agents.ts";
import { hostSuite, removeDir } from "./support/berth.ts";

const chunkBytes = 64 * 1024;
/**
 * 512 MiB, the smallest size mkfs.ext4 formats with 4 KiB blocks (Berth's default volume is
 * 1 GiB): smaller ones get 1 KiB blocks, whose free stretches do not line up with the pool's
 * 4 KiB blocks, so a discard leaves their edges mapped (zeroed) instead of making holes.
 */
const volumeBytes = 512 * 1024 * 1024;
const mebibyte = 1024 * 1024;
const zeroChunk = Buffer.alloc(chunkBytes);

/** A volume as Berth makes one: a reserved image file formatted ext4, loop-mounted on `mount`. */
async function mountedVolume(image: string, mount: string): Promise<void> {
  const file = await open(image, "wx", 0o600);
  await file.truncate(volumeBytes);
  await file.close();
  await reserveBlocks(image, volumeBytes);
  await formatExt4(image, { uid: 0, gid: 0 });
  await runCommand("mkdir", ["-m", "700", mount]);
  // noinit_itable: no background zeroing of inode tables, which would write zeros over blocks
  // a snapshot maps as holes (a changed mapping, yet equal bytes) at moments no test controls.
  await runCommand("mount", ["-t", "ext4", "-o", "loop,nosuid,nodev,noinit_itable", image, mount]);
}

async function readChunk(file: FileHandle, index: number): Promise<Buffer> {
  const chunk = Buffer.alloc(chunkBytes);
  const { bytesRead } = await file.read(chunk, 0, chunkBytes, index * chunkBytes);
  return chunk.subarray(0, bytesRead);
}

/** The indexes of the chunks whose bytes differ between two images of the volume's size. */
async function differingChunks(first: string, second: string): Promise<number[]> {
  const [a, b] = await Promise.all([open(first, "r"), open(second, "r")]);
  try {
    const differing: number[] = [];
    for (let index = 0; index < volumeBytes / chunkBytes; index += 1) {
      const [chunkA, chunkB] = await Promise.all([readChunk(a, index), readChunk(b, index)]);
      if (!chunkA.equals(chunkB)) differing.push(index);
    }
    return differing;
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

/** Which of the chunks `indexes` of `image` read as all zeros. */
async function zeroChunks(image: string, indexes: number[]): Promise<number[]> {
  const file = await open(image, "r");
  try {
    const zeros: number[] = [];
    for (const index of indexes) {
      if ((await readChunk(file, index)).equals(zeroChunk)) zeros.push(index);
    }
    return zeros;
  } finally {
    await file.close();
  }
}

/** The chunks lying wholly inside the extents (of a file in the volume: image offsets). */
function chunksWhollyIn(extents: Extent[]): number[] {
  const chunks: number[] = [];
  for (const { physical, length } of extents) {
    const first = Math.ceil(physical / chunkBytes);
    const end = Math.floor((physical + length) / chunkBytes);
    for (let chunk = first; chunk < end; chunk += 1) chunks.push(chunk);
  }
  return chunks;
}

async function sha256(path: string): Promise<string> {
  const hash = createHash("sha256");
  const file = await open(path, "r");
  try {
    for await (const chunk of file.createReadStream()) hash.update(chunk as Buffer);
  } finally {
    await file.close();
  }
  return hash.digest("hex");
}

/** Whether ext4 marked the image's journal as holding transactions to replay (mounted, crashed). */
async function journalAwaitsReplay(image: string): Promise<boolean> {
  const { stdout } = await runCommand("dumpe2fs", ["-h", image]);
  return /^Filesystem features:.*\bneeds_recovery\b/m.test(stdout);
}

/**
 * Lines of `e2fsck -fn` output that say nothing is wrong: its banner, its passes, its summary,
 * and the free block and inode counts (ext4 keeps them loosely while mounted and recomputes them
 * at every mount, so a filesystem taken mid-use may carry stale ones without being damaged).
 */
const harmlessCheckLine =
  /^$|^e2fsck \d|^Pass \d|^Fix\? no$|^Free (blocks|inodes) count wrong|files \(.*non-contiguous\)|WARNING: Filesystem still has errors/;

/** What a full read-only e2fsck finds wrong in `image`, one line each: [] when it is sound. */
async function checkProblems(image: string): Promise<string[]> {
  const { status, output } = await runCommand("e2fsck", ["-f", "-n", image]).then(
    ({ stdout }) => ({ status: 0, output: stdout }),
    (error: unknown) => {
      const { code, stdout, stderr } = error as {
        code?: unknown;
        stdout?: string;
        stderr?: string;
      };
      return { status: code, output: `${stdout ?? ""}\n${stderr ?? ""}` };
    },
  );
  const problems = output
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => !harmlessCheckLine.test(line));
  // 4: errors left unfixed (the free counts alone among them, when nothing else was printed).
  if (status !== 0 && status !== 4) problems.push(`e2fsck exit status ${String(status)}`);
  return problems;
}

describe("block snapshots in a reflink pool", hostSuite, () => {
  let dir = "";
  let pool: ReflinkPool | undefined;
  let image = "";
  let volume = "";
  const inPool = (name: string): string => join(thePool().path, name);
  const thePool = (): ReflinkPool => pool ?? assert.fail("the pool opens in before()");

  /**
   * Mounts a copy of `snapshot` as a restored volume is mounted, which replays its journal;
   * runs `look` on its files, unmounts it, and returns what a full check of the copy then finds
   * wrong (checkProblems). The snapshot itself is left as it is.
   */
  async function replayAndCheck(
    snapshot: string,
    look: (mount: string) => void,
  ): Promise<string[]> {
    const copy = `${snapshot}.replayed`;
    const mount = join(dir, `replayed-${basename(snapshot)}`);
    await cloneImage(snapshot, copy);
    try {
      mkdirSync(mount, { mode: 0o700 });
      await runCommand("mount", ["-t", "ext4", "-o", "loop,nosuid,nodev,noexec", copy, mount]);
      try {
        look(mount);
      } finally {
        await runCommand("umount", [mount]);
      }
      assert.equal(await journalAwaitsReplay(copy), false, "mounting replayed the journal");
      return await checkProblems(copy);
    } finally {
      await rm(copy, { force: true });
    }
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "berth-block-snapshots-"));
    pool = await ReflinkPool.open(dir, { initialBytes: 1024 * mebibyte });
    image = inPool("volume.img");
    volume = join(dir, "volume");
    await mountedVolume(image, volume);
    for (let index = 0; index < 4; index += 1) {
      writeFileSync(join(volume, `data-${index}.bin`), randomBytes(8 * mebibyte));
    }
    writeFileSync(join(volume, "notes.txt"), "first version of a small file\n");
  });
  after(async () => {
    if (isMountPoint(volume)) await runCommand("umount", [volume]);
    if (pool !== undefined && isMountPoint(pool.path)) await pool.close();
    if (dir !== "") removeDir(dir);
  });

  it("mounts the pool root-only, and reuses it when opened again while mounted", async () => {
    assert.equal((await stat(thePool().path)).mode & 0o777, 0o700);
    const again = await ReflinkPool.open(dir, { initialBytes: 1024 * mebibyte });
    assert.equal(again.path, thePool().path);
    const devices = await new LoopDeviceTable().backing(join(dir, "pool.xfs"));
    assert.equal(devices.length, 1);
    // Direct I/O: the host's page cache does not hold the pool's blocks a second time.
    const device = (devices[0] ?? "").replace("/dev/", "");
    assert.equal(readFileSync(`/sys/block/${device}/loop/dio`, "utf8").trim(), "1");
  });

  it("finds the few chunks one small edit changed, and only those", async () => {
    const first = await cloneImage(image, inPool("first.img"), { liveMount: volume });
    // In place: the first six bytes, "first " becoming "SECOND".
    writeFileSync(join(volume, "notes.txt"), "SECOND", { flag: "r+" });
    const second = await cloneImage(image, inPool("second.img"), { liveMount: volume });
    assert.ok(Number.isSafeInteger(first.cloneMicros) && first.cloneMicros >= 0);
    assert.ok(Number.isSafeInteger(second.cloneMicros) && second.cloneMicros >= 0);

    const changed = changedChunks(
      await imageExtents(inPool("first.img")),
      await imageExtents(inPool("second.img")),
      chunkBytes,
      volumeBytes,
    );
    assert.ok(changed.length > 0 && changed.length < 16, `changed chunks: ${changed.join(", ")}`);
    // The edited file's data block is one of them (ext4's blocks are the image's bytes).
    const [notesData] = await imageExtents(join(volume, "notes.txt"));
    assert.ok(notesData);
    assert.ok(changed.includes(Math.floor(notesData.physical / chunkBytes)));
    // Chunks found unchanged hold the same bytes; those found changed, other bytes.
    assert.deepEqual(await differingChunks(inPool("first.img"), inPool("second.img")), changed);
  });

  it("takes snapshots that, their journal replayed, are sound and hold what was written", async () => {
    const notes: string[] = [];
    for (const snapshot of ["first.img", "second.img"]) {
      // Taken from a mounted filesystem: what a power cut would leave, journal included.
      assert.equal(await journalAwaitsReplay(inPool(snapshot)), true);
      const problems = await replayAndCheck(inPool(snapshot), (mount) => {
        notes.push(readFileSync(join(mount, "notes.txt"), "utf8"));
      });
      assert.deepEqual(problems, [], `${snapshot}: ${problems.join("; ")}`);
    }
    assert.deepEqual(notes, ["first version of a small file\n", "SECONDversion of a small file\n"]);
  });

  it("keeps a snapshot as it was whatever is written to the volume after it", async () => {
    const snapshot = inPool("second.img");
    const [hashBefore, extentsBefore] = [await sha256(snapshot), await imageExtents(snapshot)];
    writeFileSync(join(volume, "data-0.bin"), randomBytes(8 * mebibyte), { flag: "r+" });
    writeFileSync(join(volume, "notes.txt"), "third version\n");
    writeFileSync(join(volume, "new.bin"), randomBytes(4 * mebibyte));
    await runCommand("sync", ["--file-system", volume]);
    // The same mapping (split differently, maybe: blocks it no longer shares are listed apart).
    assert.deepEqual(
      changedChunks(extentsBefore, await imageExtents(snapshot), chunkBytes, volumeBytes),
      [],
    );
    assert.equal(await sha256(snapshot), hashBefore);
    assert.equal(readFileSync(join(volume, "notes.txt"), "utf8"), "third version\n");
  });

  it("gives, for a first snapshot, every chunk holding written data", async () => {
    const extents = await imageExtents(inPool("first.img"));
    const chunks = changedChunks(undefined, extents, chunkBytes, volumeBytes);
    // The 32 MiB of files at least, far from the whole (unwritten) volume.
    assert.ok(chunks.length >= (32 * mebibyte) / chunkBytes, `${chunks.length} chunks`);
    assert.ok(chunks.length < volumeBytes / chunkBytes / 2, `${chunks.length} chunks`);
  });

  it("leaves holes where a file deleted just before a live snapshot was: nothing to upload", async () => {
    const large = join(volume, "large.bin");
    writeFileSync(large, randomBytes(16 * mebibyte));
    await cloneImage(image, inPool("with-large.img"), { liveMount: volume });
    const largeChunks = chunksWhollyIn(await imageExtents(large));
    assert.ok(largeChunks.length >= 200, `${largeChunks.length} chunks wholly the file's`);
    const withLarge = await imageExtents(inPool("with-large.img"));
    const dataWithLarge = new Set(changedChunks(undefined, withLarge, chunkBytes, volumeBytes));
    assert.deepEqual(
      largeChunks.filter((chunk) => !dataWithLarge.has(chunk)),
      [],
      "the snapshot holding the file maps its chunks",
    );
    assert.deepEqual(await zeroChunks(inPool("with-large.img"), largeChunks), []);

    // Deleted, and the next snapshot taken at once: no commit of the deletion in between but
    // the snapshot's own.
    rmSync(large);
    await cloneImage(image, inPool("without-large.img"), { liveMount: volume });
    const withoutLarge = await imageExtents(inPool("without-large.img"));
    // A first checkpoint would not even read them: they are holes.
    const dataWithoutLarge = new Set(
      changedChunks(undefined, withoutLarge, chunkBytes, volumeBytes),
    );
    assert.deepEqual(
      largeChunks.filter((chunk) => dataWithoutLarge.has(chunk)),
      [],
      "the deleted file's chunks are holes in the next snapshot",
    );
    // A checkpoint after the one holding the file reads them (their mapping changed) and finds
    // zeros, which it leaves out of the manifest and never uploads.
    const changed = new Set(changedChunks(withLarge, withoutLarge, chunkBytes, volumeBytes));
    assert.deepEqual(
      largeChunks.filter((chunk) => !changed.has(chunk)),
      [],
    );
    assert.deepEqual(await zeroChunks(inPool("without-large.img"), largeChunks), largeChunks);
  });

  it("takes live snapshots amid creations, deletions and renames that are sound once replayed", async () => {
    // Every file the writer leaves holds its own name (a pending `.new` one, the name it will
    // take), so a file with anything else in it is one the snapshot tore. Blobs come and go to
    // make the discards race with allocations. Bounded, in case the stop file is never seen.
    const churn = join(volume, "churn");
    mkdirSync(churn);
    const script = [
      'cd "$1"',
      "i=0",
      'while [ ! -e stop ] && [ "$i" -lt 20000 ]; do',
      "  i=$((i + 1)); a=$((i % 50)); b=$(((i + 7) % 50))",
      '  echo "churn-$((i % 200))" > "churn-$((i % 200))"',
      '  echo "renamed-$a" > "renamed-$a.new" && mv "renamed-$a.new" "renamed-$a"',
      '  rm -f "gone-$a"; echo "gone-$b" > "gone-$b"',
      '  mkdir -p "tree-$((a % 10))" && echo "leaf" > "tree-$((a % 10))/leaf"',
      '  rm -rf "moved-$((a % 10))" && mv "tree-$((a % 10))" "moved-$((a % 10))"',
      '  if [ $((i % 5)) -eq 0 ]; then head -c 300000 /dev/urandom > "blob-$((i % 3))"; fi',
      '  echo "$i" > progress',
      "done",
    ].join("\n");
    const writer = runCommand("sh", ["-c", script, "churn", churn]);
    let iterations = 0;
    const writerPast = (target: number): Promise<true> =>
      waitFor(`the writer past iteration ${target}`, () => {
        try {
          iterations = Math.max(iterations, Number(readFileSync(join(churn, "progress"), "utf8")));
        } catch {
          // Not written yet.
        }
        return iterations >= target || undefined;
      });
    const snapshots: string[] = [];
    try {
      for (let index = 0; index < 3; index += 1) {
        // Each one taken once the writer is demonstrably at work since the previous one.
        await writerPast(iterations + 10);
        const snapshot = inPool(`amid-writes-${index}.img`);
        await cloneImage(image, snapshot, { liveMount: volume });
        snapshots.push(snapshot);
      }
    } finally {
      writeFileSync(join(churn, "stop"), "");
      await writer;
    }

    for (const snapshot of snapshots) {
      const torn: string[] = [];
      let files = 0;
      const problems = await replayAndCheck(snapshot, (mount) => {
        for (const entry of readdirSync(join(mount, "churn"), {
          encoding: "utf8",
          recursive: true,
        })) {
          const name = basename(entry);
          if (!/^(churn|renamed|gone|leaf)/.test(name)) continue;
          files += 1;
          const content = readFileSync(join(mount, "churn", entry), "utf8");
          // Empty: created, its data not yet written back (delayed allocation) when taken.
          if (content !== "" && content !== `${name.replace(/\.new$/, "")}\n`) torn.push(entry);
        }
      });
      assert.deepEqual(problems, [], `${basename(snapshot)}: ${problems.join("; ")}`);
      assert.ok(files > 0, `${basename(snapshot)} holds the writer's files`);
      assert.deepEqual(torn, [], `${basename(snapshot)}: files holding another's bytes`);
    }
  });

  it("refuses to clone into an existing file, or through a symbolic link, live or not", async () => {
    symlinkSync(image, inPool("link-source.img"));
    for (const [mode, options] of [
      ["plain", {}],
      ["live", { liveMount: volume }],
    ] as const) {
      writeFileSync(inPool(`taken-${mode}.img`), "keep me");
      await assert.rejects(
        cloneImage(image, inPool(`taken-${mode}.img`), options),
        /taken-\w+\.img: File exists/,
      );
      assert.equal(readFileSync(inPool(`taken-${mode}.img`), "utf8"), "keep me");

      symlinkSync(inPool(`elsewhere-${mode}.img`), inPool(`link-target-${mode}.img`));
      await assert.rejects(
        cloneImage(image, inPool(`link-target-${mode}.img`), options),
        /File exists/,
      );
      await assert.rejects(stat(inPool(`elsewhere-${mode}.img`)), { code: "ENOENT" });

      await assert.rejects(
        cloneImage(inPool("link-source.img"), inPool(`from-link-${mode}.img`), options),
        /symbolic links/,
      );
      await assert.rejects(stat(inPool(`from-link-${mode}.img`)), { code: "ENOENT" });
    }
    symlinkSync(volume, join(dir, "link-volume"));
    await assert.rejects(
      cloneImage(image, inPool("live-through-link.img"), { liveMount: join(dir, "link-volume") }),
      /link-volume: Not a directory/,
    );
    await assert.rejects(stat(inPool("live-through-link.img")), { code: "ENOENT" });
    writeFileSync(join(volume, "after-refusals.txt"), "still writable\n");
  });

  it("grows the pool, reserved on the host, when asked for more room than it has", async () => {
    const poolFile = join(dir, "pool.xfs");
    const sizeBefore = (await stat(poolFile)).size;
    const freeBefore = await thePool().freeBytes();
    await thePool().ensureFree(freeBefore - mebibyte);
    assert.equal((await stat(poolFile)).size, sizeBefore);

    await thePool().ensureFree(freeBefore + 64 * mebibyte);
    const { size, blocks } = await stat(poolFile);
    assert.ok(size >= sizeBefore * 1.25, `grew from ${sizeBefore} to ${size} bytes`);
    assert.ok(blocks * 512 >= size, "every block of the larger pool is reserved");
    assert.ok((await thePool().freeBytes()) >= freeBefore + 64 * mebibyte);
  });

  it("closes: the pool unmounted, its loop device gone with it", async () => {
    await runCommand("umount", [volume]);
    await thePool().close();
    assert.equal(isMountPoint(thePool().path), false);
    const poolFile = join(dir, "pool.xfs");
    const table = new LoopDeviceTable();
    // The kernel lets go of an autoclear device as the filesystem's last user closes it.
    const deadline = performance.now() + 5000;
    while ((await table.backing(poolFile)).length > 0 && performance.now() < deadline) {
      await delay(5);
    }
    assert.deepEqual(await table.backing(poolFile), []);
  });
});
