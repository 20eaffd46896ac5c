import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  closeSync,
  linkSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { afterEach, beforeEach, describe, it } from "node:test";
import { mountPointsUnder } from "../../src/adapters/host/mount-table.ts";
import { DirectoryVolumes } from "../../src/adapters/volumes/directory-volumes.ts";
import { LoopDeviceTable } from "../../src/adapters/volumes/loop-devices.ts";
import { LoopVolumes } from "../../src/adapters/volumes/loop-volumes.ts";
import { ReflinkPool } from "../../src/adapters/volumes/reflink-pool.ts";
import { ReplicatedVolumes } from "../../src/adapters/volumes/replicated-volumes.ts";
import { MemoryObjectStore } from "../../src/adapters/memory/object-store.ts";
import type { VolumeHandle } from "../../src/core/sandbox.ts";
import { UnreadableVolumeError, type VolumeStore } from "../../src/core/session-storage.ts";

/**
 * One suite, written against the VolumeStore interface, run against every volume store: what
 * session storage relies on, whichever store an operator chooses. Loop volumes need root (loop
 * devices, mount) and skip without it; directory volumes run as any user.
 */

const allKinds: VolumeHandle["kind"][] = ["host-directory", "block-image"];
const volumeBytes = 32 * 2 ** 20;
const sandboxUser = 1000;
const isRoot = process.getuid?.() === 0;

interface StoreUnderTest {
  name: string;
  /** Why the suite cannot run here, or false. */
  skip: string | false;
  /** A store keeping its volumes under `root` (a fresh temporary folder). */
  open(root: string): VolumeStore | Promise<VolumeStore>;
}

/** The object store each replicated store under a root uses (a restarted one finds the same). */
const objectStores = new Map<string, MemoryObjectStore>();

async function openReplicated(root: string): Promise<VolumeStore> {
  const pool = await ReflinkPool.open(join(root, "replicated"), { initialBytes: 0 });
  let store = objectStores.get(root);
  if (store === undefined) objectStores.set(root, (store = new MemoryObjectStore()));
  return new ReplicatedVolumes({
    local: new LoopVolumes(join(pool.path, "volumes"), sandboxUser),
    pool,
    store,
    holder: "contract-node",
    // Long enough that no checkpoint runs unasked during a test: attach, detach and restore are
    // what the contract sees.
    settings: { checkpointMs: 60_000, durableWaitMs: 10_000 },
    log: { info: () => undefined, warn: () => undefined, error: () => undefined },
  });
}

const stores: StoreUnderTest[] = [
  {
    name: "loop volumes",
    skip:
      process.platform === "linux" && isRoot
        ? false
        : "loop volumes need root on Linux (loop devices, mount): run as root to test them",
    open: (root) => new LoopVolumes(root, sandboxUser),
  },
  {
    name: "replicated volumes (loop volumes on a reflink pool, kept in an object store)",
    skip:
      process.platform === "linux" && isRoot
        ? false
        : "replicated volumes need root on Linux (loop devices, mount, XFS): run as root to test them",
    open: openReplicated,
  },
  {
    name: "directory volumes",
    skip: false,
    open: (root) => new DirectoryVolumes(root, sandboxUser),
  },
];

/** A fresh store on a temporary folder for each test; unmounted and removed after it. */
function useStore(store: StoreUnderTest): { volumes: () => VolumeStore; root: () => string } {
  let root: string | undefined;
  let volumes: VolumeStore | undefined;
  beforeEach(async () => {
    root = mkdtempSync(join(tmpdir(), "berth-volume-store-"));
    volumes = await store.open(root);
  });
  afterEach(async () => {
    await volumes?.recover();
    // A store with a disk of its own (a pool) lets go of it; a test may have closed it already.
    await volumes?.close?.().catch(() => undefined);
    if (root !== undefined) rmSync(root, { recursive: true, force: true });
  });
  return {
    volumes: () => volumes ?? assert.fail("made in beforeEach"),
    root: () => root ?? assert.fail("made in beforeEach"),
  };
}

/** Attaches as a host directory, the kind every store gives; returns its folder. */
async function attachFolder(volumes: VolumeStore, volumeId: string): Promise<string> {
  const handle = await volumes.attach(volumeId, ["host-directory"]);
  assert.equal(handle.kind, "host-directory");
  assert.equal(handle.volumeId, volumeId);
  assert.equal(statSync(handle.path).isDirectory(), true);
  return handle.path;
}

/** Every entry under `folder`, by relative path: type, mode, links, size, content or target. */
function describeTree(folder: string, prefix = ""): string[] {
  return readdirSync(join(folder, prefix))
    .sort()
    .flatMap((name) => {
      const path = join(prefix, name);
      const info = lstatSync(join(folder, path));
      const mode = (info.mode & 0o7777).toString(8);
      const common = `${path} mode=${mode} links=${String(info.nlink)}`;
      if (info.isSymbolicLink()) return [`${common} -> ${readlinkSync(join(folder, path))}`];
      if (info.isFIFO()) return [`${common} fifo`];
      if (info.isDirectory()) return [`${common} folder`, ...describeTree(folder, path)];
      const content = readFileSync(join(folder, path)).toString("base64").slice(0, 64);
      return [`${common} size=${String(info.size)} ${content}`];
    });
}

/** Writes one of each kind of entry session storage must keep, with modes set explicitly. */
function writeEveryKindOfEntry(folder: string): void {
  writeFileSync(join(folder, "file"), "one\n");
  chmodSync(join(folder, "file"), 0o640);
  linkSync(join(folder, "file"), join(folder, "hard"));
  symlinkSync("file", join(folder, "soft"));
  symlinkSync("/etc/passwd", join(folder, "outside"));
  execFileSync("mkfifo", ["-m", "600", join(folder, "fifo")]);
  mkdirSync(join(folder, "nested", "deeper"), { recursive: true });
  chmodSync(join(folder, "nested"), 0o750);
  writeFileSync(join(folder, "nested", "deeper", "random"), randomBytes(100_000));
  chmodSync(join(folder, "nested", "deeper", "random"), 0o600);
}

for (const store of stores) {
  describe(`volume store contract: ${store.name}`, { skip: store.skip }, () => {
    const { volumes, root } = useStore(store);

    it("keeps files, modes, hard links, symlinks and FIFOs across detach and attach", async () => {
      await volumes().create("kept", volumeBytes);
      const folder = await attachFolder(volumes(), "kept");
      assert.deepEqual(readdirSync(folder), [], "a new volume is empty");
      writeEveryKindOfEntry(folder);
      const written = describeTree(folder);
      const usedBytes = await volumes().detach("kept");
      assert.ok(usedBytes !== undefined && usedBytes >= 100_000, `detach measured ${usedBytes}`);
      const again = await attachFolder(volumes(), "kept");
      assert.deepEqual(describeTree(again), written);
      assert.equal(statSync(join(again, "hard")).ino, statSync(join(again, "file")).ino);
      await volumes().detach("kept");
    });

    it("reports usage while attached and after detach", async () => {
      await volumes().create("measured", volumeBytes);
      const folder = await attachFolder(volumes(), "measured");
      await writeFile(join(folder, "data"), randomBytes(2 ** 20));
      const attached = await volumes().usage("measured");
      assert.equal(attached.attached, true);
      assert.ok(attached.usedBytes !== undefined && attached.usedBytes >= 2 ** 20);
      assert.ok(attached.allocatedBytes >= attached.usedBytes, "what it takes on disk");
      await volumes().detach("measured");
      const detached = await volumes().usage("measured");
      assert.equal(detached.attached, false);
      assert.ok(detached.allocatedBytes >= 2 ** 20);
    });

    it("lists its volumes; a removed one is gone, and attaching it is unreadable", async () => {
      await volumes().create("first", volumeBytes);
      await volumes().create("second", volumeBytes);
      assert.deepEqual((await volumes().list()).sort(), ["first", "second"]);
      await volumes().remove("first");
      assert.deepEqual(await volumes().list(), ["second"]);
      await assert.rejects(volumes().attach("first", ["host-directory"]), UnreadableVolumeError);
    });

    it("removes a volume still attached, letting go of it", async () => {
      await volumes().create("attached", volumeBytes);
      const folder = await attachFolder(volumes(), "attached");
      writeFileSync(join(folder, "a"), "a");
      await volumes().remove("attached");
      assert.deepEqual(await volumes().list(), []);
      assert.equal((await volumes().usage("attached")).attached, false);
    });

    it("answers UnreadableVolumeError for a volume that does not exist, for every kind it gives", async () => {
      for (const kind of volumes().handleKinds) {
        await assert.rejects(volumes().attach("never-made", [kind]), (error: Error) => {
          assert.ok(error instanceof UnreadableVolumeError, `${kind}: ${String(error)}`);
          assert.match(error.message, /missing/);
          return true;
        });
      }
    });

    it("refuses clearly a handle kind it cannot give, and stays attachable", async () => {
      await volumes().create("unwanted", volumeBytes);
      const cannotGive = allKinds.filter((kind) => !volumes().handleKinds.includes(kind));
      await assert.rejects(volumes().attach("unwanted", cannotGive), (error: Error) => {
        assert.equal(error instanceof UnreadableVolumeError, false, "the volume is fine");
        for (const kind of volumes().handleKinds) assert.match(error.message, new RegExp(kind));
        return true;
      });
      await attachFolder(volumes(), "unwanted");
      await volumes().detach("unwanted");
    });

    it("refuses a second attach before detach (one sandbox per volume), not as unreadable", async () => {
      await volumes().create("once", volumeBytes);
      await attachFolder(volumes(), "once");
      const twice = await Promise.allSettled([
        volumes().attach("once", ["host-directory"]),
        volumes().attach("once", ["host-directory"]),
      ]);
      for (const result of twice) {
        assert.equal(result.status, "rejected");
        assert.match(String(result.reason), /already attached/);
        assert.equal(result.reason instanceof UnreadableVolumeError, false);
      }
      await volumes().detach("once");
      await attachFolder(volumes(), "once");
      await volumes().detach("once");
    });

    it("gives a new volume's root folder to its owner (to the user running it, without root)", async () => {
      const owner = { uid: 4242, gid: 4343 };
      await volumes().create("owned", volumeBytes, owner);
      await volumes().create("default-owner", volumeBytes);
      const expect = (given: { uid: number; gid: number }) =>
        isRoot ? given : { uid: process.getuid?.(), gid: process.getgid?.() };
      for (const [volumeId, owned] of [
        ["owned", owner],
        ["default-owner", { uid: sandboxUser, gid: sandboxUser }],
      ] as const) {
        const info = statSync(await attachFolder(volumes(), volumeId));
        assert.deepEqual({ uid: info.uid, gid: info.gid }, expect(owned), volumeId);
        await volumes().detach(volumeId);
      }
    });

    it("recovers after a server that did not detach: the volume attaches again, as left", async () => {
      await volumes().create("left", volumeBytes);
      const folder = await attachFolder(volumes(), "left");
      writeFileSync(join(folder, "before-the-crash"), "kept");
      // A new process on the same folder knows nothing of what the last one attached.
      const restarted = await store.open(root());
      await restarted.recover();
      assert.deepEqual(await restarted.list(), ["left"]);
      const again = await attachFolder(restarted, "left");
      assert.equal(readFileSync(join(again, "before-the-crash"), "utf8"), "kept");
      await restarted.detach("left");
    });
  });
}

describe("loop volumes: block images and limits", { skip: stores[0]?.skip ?? false }, () => {
  const { volumes, root } = useStore(stores[0] ?? assert.fail("loop volumes listed first"));
  const image = (volumeId: string) => join(root(), "images", `${volumeId}.img`);

  it("hands a sound volume to a driver as a checked block image, unmounted, in the driver's order", async () => {
    await volumes().create("block", volumeBytes);
    writeFileSync(join(await attachFolder(volumes(), "block"), "written"), "as a folder");
    await volumes().detach("block");
    const handle = await volumes().attach("block", ["block-image", "host-directory"]);
    assert.deepEqual(handle, {
      kind: "block-image",
      volumeId: "block",
      path: image("block"),
      filesystem: "ext4",
    });
    assert.deepEqual(mountPointsUnder(root()), [], "the store mounted nothing");
    assert.equal((await volumes().usage("block")).attached, true);
    await assert.rejects(volumes().attach("block", ["host-directory"]), /already attached/);
    // What a driver that attaches block images does with it.
    const driverMount = mkdtempSync(join(tmpdir(), "berth-driver-mount-"));
    try {
      execFileSync("mount", ["-t", "ext4", "-o", "loop", handle.path, driverMount]);
      assert.equal(readFileSync(join(driverMount, "written"), "utf8"), "as a folder");
      writeFileSync(join(driverMount, "by-the-driver"), "kept");
      execFileSync("umount", [driverMount]);
    } finally {
      rmSync(driverMount, { recursive: true, force: true });
    }
    assert.equal(await volumes().detach("block"), undefined, "not measured: the driver had it");
    const folder = await volumes().attach("block", ["host-directory", "block-image"]);
    assert.equal(folder.kind, "host-directory", "the driver's first choice");
    assert.equal(readFileSync(join(folder.path, "by-the-driver"), "utf8"), "kept");
    await volumes().detach("block");
  });

  it("answers UnreadableVolumeError for an image with a damaged filesystem, as either kind", async () => {
    await volumes().create("damaged", volumeBytes);
    // Zero the ext4 superblock (1 KiB in) and its first backups.
    const descriptor = openSync(image("damaged"), "r+");
    for (const offset of [1024, 8193 * 1024, 32768 * 1024])
      writeSync(descriptor, Buffer.alloc(1024), 0, 1024, offset);
    closeSync(descriptor);
    for (const kind of allKinds) {
      // Twice: a failed attach leaves the volume free to try again.
      for (let attempt = 1; attempt <= 2; attempt += 1) {
        await assert.rejects(volumes().attach("damaged", [kind]), (error: Error) => {
          assert.ok(error instanceof UnreadableVolumeError, `${kind}: ${String(error)}`);
          return true;
        });
      }
    }
    assert.deepEqual(mountPointsUnder(root()), []);
  });

  it("gives ENOSPC past its size, inside that volume only", async () => {
    await volumes().create("small", 16 * 2 ** 20);
    await volumes().create("neighbour", 16 * 2 ** 20);
    const folder = await attachFolder(volumes(), "small");
    const neighbour = await attachFolder(volumes(), "neighbour");
    await assert.rejects(writeFile(join(folder, "big"), Buffer.alloc(32 * 2 ** 20)), {
      code: "ENOSPC",
    });
    await writeFile(join(neighbour, "fine"), Buffer.alloc(8 * 2 ** 20));
    await volumes().detach("small");
    await volumes().detach("neighbour");
  });

  it("refuses, as the host's fault, an image a loop device still holds", async () => {
    await volumes().create("held", volumeBytes);
    const device = execFileSync("losetup", ["--find", "--show", image("held")], {
      encoding: "utf8",
    }).trim();
    try {
      await assert.rejects(volumes().attach("held", ["host-directory"]), (error: Error) => {
        assert.equal(error instanceof UnreadableVolumeError, false, "the data is fine");
        assert.match(error.message, /still attached to \/dev\/loop\d+/);
        return true;
      });
    } finally {
      execFileSync("losetup", ["--detach", device]);
    }
    await until("the loop device lets go", async () =>
      (await new LoopDeviceTable().backing(image("held"))).length === 0 ? true : undefined,
    );
    await attachFolder(volumes(), "held");
    await volumes().detach("held");
  });
});

/** Polls `check` (bounded) until it returns a value. */
async function until<T>(what: string, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = performance.now() + 10_000;
  while (performance.now() < deadline) {
    const value = await check();
    if (value !== undefined) return value;
    await delay(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}
