import { chmod, mkdir, open, rename, rm, stat, statfs } from "node:fs/promises";
import { dirname, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { NoRoomForVolumeError } from "../../core/session-storage.ts";
import { isMountPoint } from "../host/mount-table.ts";
import { LoopDeviceTable } from "./loop-devices.ts";
import { commandError, runCommand } from "./run-command.ts";
import { syncFolder } from "./volume-files.ts";
import { reserveBlocks } from "./ext4-image.ts";

/**
 * The smallest pool made: mkfs.xfs refuses a filesystem under 300 MB (its log alone takes
 * 64 MiB), so a smaller initialBytes is raised to this.
 */
export const minimumPoolBytes = 320 * 1024 * 1024;

/** How much a pool grows at least when it must, as a fraction of its size. */
const growthFraction = 0.25;

/**
 * Growing is checked after each step (XFS keeps some of every new stretch for its own records,
 * and ignores a tail too small to be an allocation group): this many steps, then it gives up.
 */
const maxGrowthSteps = 4;

/** How long close() waits for volumes' loop devices to let go of the pool, and how often it looks. */
const closeTimeoutMs = 5000;
const closePollMs = 5;

/**
 * An XFS filesystem with reflink, where volume images live so that they can be cloned in
 * milliseconds (block-snapshots.ts). The host's disk is ext4, which cannot share blocks between
 * files: the pool is an image file on it (`<dir>/pool.xfs`), loop-mounted nosuid, nodev on the
 * root-only folder `<dir>/pool`, its loop device using direct I/O (the host's page cache would
 * hold every block a second time) and going away with the last unmount.
 *
 * Its blocks are reserved on the host (fallocate) when it is made and whenever it grows, like
 * every volume's: a disk filled by someone else must never fail the pool's writes, which would
 * reach a volume's ext4 as I/O errors.
 *
 * What a pool does not reserve is the room copy-on-write takes: a volume with a snapshot writes
 * every changed block to a new one, up to its whole size. Whoever keeps snapshots asks for that
 * room first (ensureFree).
 */
export class ReflinkPool {
  /** The mounted folder, root's alone. */
  readonly path: string;
  private readonly file: string;
  private readonly device: string;
  /** ensureFree calls, one at a time: two growing at once would each add their quarter. */
  private growing: Promise<void> = Promise.resolve();

  private constructor(file: string, path: string, device: string) {
    this.file = file;
    this.path = path;
    this.device = device;
  }

  /**
   * The pool in `dir`: made (initialBytes, at least minimumPoolBytes) if it does not exist,
   * attached and mounted if it is not. One left mounted by a server that crashed is used as it
   * is. Throws NoRoomForVolumeError when the host's disk cannot hold a new pool.
   */
  static async open(dir: string, options: { initialBytes: number }): Promise<ReflinkPool> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const file = join(dir, "pool.xfs");
    const path = join(dir, "pool");
    if (!(await exists(file))) {
      await makePoolFile(file, Math.max(options.initialBytes, minimumPoolBytes));
    }
    await mkdir(path, { recursive: true, mode: 0o700 });
    const device = isMountPoint(path)
      ? await mountedDevice(file, path)
      : await mountPool(file, path);
    await useDirectIo(device, file);
    // The mounted root is the filesystem's own (mkfs makes it 0755): root's alone, like the
    // folder under it.
    await chmod(path, 0o700);
    return new ReflinkPool(file, path, device);
  }

  /** Bytes free in the pool for anyone (root included: reserved blocks cannot take writes). */
  async freeBytes(): Promise<number> {
    const info = await statfs(this.path);
    return info.bavail * info.bsize;
  }

  /**
   * Grows the pool, if needed, until at least `bytes` are free in it: by what is missing, and
   * by a quarter of its size at least, so many small requests do not each grow it. Throws
   * NoRoomForVolumeError when the host's disk cannot hold the larger pool.
   */
  async ensureFree(bytes: number): Promise<void> {
    const grown = this.growing.then(() => this.growUntilFree(bytes));
    this.growing = grown.catch(() => undefined);
    return grown;
  }

  private async growUntilFree(bytes: number): Promise<void> {
    for (let step = 0; step < maxGrowthSteps; step += 1) {
      const missing = bytes - (await this.freeBytes());
      if (missing <= 0) return;
      const { size } = await stat(this.file);
      await this.grow(size + Math.max(missing, Math.ceil(size * growthFraction)));
    }
    if ((await this.freeBytes()) < bytes) {
      throw new Error(
        `the reflink pool ${this.file} still has less than ${bytes} bytes free after growing ${maxGrowthSteps} times`,
      );
    }
  }

  /** The file to `sizeBytes` (reserved), then the loop device, then the filesystem. */
  private async grow(sizeBytes: number): Promise<void> {
    await reserveBlocks(this.file, sizeBytes, poolNoRoom(this.file, sizeBytes));
    try {
      await runCommand("losetup", ["--set-capacity", this.device]);
      await runCommand("xfs_growfs", ["-d", this.path]);
    } catch (error) {
      throw new Error(`growing the reflink pool ${this.file} failed: ${commandError(error)}`, {
        cause: error,
      });
    }
  }

  /**
   * Unmounts the pool (its loop device goes with it). Its volumes must be detached first; the
   * loop device of one just unmounted lets go of its image a moment later (the kernel detaches
   * autoclear devices asynchronously), so a busy pool is tried again for a bounded time.
   */
  async close(): Promise<void> {
    const deadline = performance.now() + closeTimeoutMs;
    for (;;) {
      try {
        await runCommand("umount", [this.path]);
        return;
      } catch (error) {
        const reason = commandError(error);
        if (/busy/i.test(reason) && performance.now() < deadline) {
          await delay(closePollMs);
          continue;
        }
        throw new Error(`closing the reflink pool ${this.file} failed: ${reason}`, {
          cause: error,
        });
      }
    }
  }
}

/**
 * Makes the pool file: reserved, then formatted, under a temporary name renamed into place once
 * complete, so a crash midway never leaves a `pool.xfs` that holds no filesystem.
 */
async function makePoolFile(file: string, sizeBytes: number): Promise<void> {
  const partial = `${file}.new`;
  await rm(partial, { force: true });
  const handle = await open(partial, "wx", 0o600);
  try {
    await reserveBlocks(partial, sizeBytes, poolNoRoom(partial, sizeBytes));
    // -K: nothing to discard in a file just reserved (a discard would give its blocks back).
    await runCommand("mkfs.xfs", ["-q", "-K", "-m", "reflink=1", partial]);
    await handle.sync();
  } catch (error) {
    await rm(partial, { force: true });
    throw error instanceof NoRoomForVolumeError
      ? error
      : new Error(`making the reflink pool ${file} failed: ${commandError(error)}`, {
          cause: error,
        });
  } finally {
    await handle.close();
  }
  await rename(partial, file);
  await syncFolder(dirname(file));
}

/** Loop-mounts the pool file on `path`; returns the loop device. */
async function mountPool(file: string, path: string): Promise<string> {
  try {
    // `-o loop` attaches it with autoclear: the device goes with the last unmount, also when a
    // test or a crashed server's successor unmounts it without close().
    await runCommand("mount", ["-t", "xfs", "-o", "loop,nosuid,nodev", file, path]);
  } catch (error) {
    throw new Error(`mounting the reflink pool ${file} failed: ${commandError(error)}`, {
      cause: error,
    });
  }
  return mountedDevice(file, path);
}

/**
 * Switches the pool's loop device to direct I/O: the host's page cache would otherwise hold
 * every block the pool's own page cache already holds. Done at every open (it is idempotent),
 * so a server that crashed between mounting and this step leaves nothing undone.
 */
async function useDirectIo(device: string, file: string): Promise<void> {
  try {
    await runCommand("losetup", ["--direct-io=on", device]);
  } catch (error) {
    throw new Error(
      `cannot switch ${device} (the reflink pool ${file}) to direct I/O: ${commandError(error)}`,
      { cause: error },
    );
  }
}

/**
 * The loop device the pool is mounted from: the one attached to the pool file whose device
 * number is the mounted filesystem's. Anything else mounted there is refused.
 */
async function mountedDevice(file: string, path: string): Promise<string> {
  const mounted = (await stat(path)).dev;
  for (const device of await new LoopDeviceTable().backing(file)) {
    if ((await stat(device)).rdev === mounted) return device;
  }
  throw new Error(`${path} is mounted, but not from the reflink pool ${file}`);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (error: unknown) => {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw error;
    },
  );
}

function poolNoRoom(file: string, sizeBytes: number): string {
  return `no room on the host's disk for the reflink pool ${file} at ${sizeBytes} bytes`;
}
