import { execFile } from "node:child_process";
import {
  closeSync,
  existsSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
} from "node:fs";
import { open, readdir, rm, rmdir, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import type { SandboxIdentity } from "../../core/sandbox.ts";
import {
  NoRoomForVolumeError,
  UnreadableVolumeError,
  type VolumeStore,
  type VolumeUsage,
} from "../../core/session-storage.ts";
import { isMountPoint, mountPointsUnder } from "../host/mount-table.ts";

const run = promisify(execFile);

/** Mounts an ext4 image file on a folder (loop device, nosuid, nodev). */
export type ImageMounter = (image: string, target: string) => Promise<void>;

const mountWithCommand: ImageMounter = async (image, target) => {
  try {
    await run("mount", ["-t", "ext4", "-o", "loop,nosuid,nodev,errors=remount-ro", image, target]);
  } catch (error) {
    throw new Error(commandError(error));
  }
};

/** Unmounts a folder, lazily if it is busy. */
export type FolderUnmounter = (target: string) => Promise<void>;

const unmountWithCommand: FolderUnmounter = async (target) => {
  await run("umount", [target]).catch(async () => run("umount", ["--lazy", target]));
};

/** How long a detach waits for the kernel to release the image's loop device, and how often it looks. */
const releaseTimeoutMs = 5000;
const releasePollMs = 5;

/**
 * Session storage volumes as ext4 images on local disk, loop-mounted while a session runs. Each
 * is a real filesystem (hard links, FIFOs, sockets, xattrs, fallocate all work) with a hard size
 * limit: writing past it gives ENOSPC inside that volume only.
 *
 * Every image's blocks are reserved on the host's disk (fallocate) before it is mounted, and
 * never given back while it exists (no `discard`): a sparse image would take blocks only as it
 * is written, so a disk filled by anyone else — another session filling its own volume — would
 * leave this one's writes nowhere to go, acknowledged, then lost when its journal aborts. A
 * volume that cannot be reserved is refused before its session starts, loudly.
 */
export class LoopVolumes implements VolumeStore {
  private readonly imageDir: string;
  private readonly mountDir: string;
  private readonly ownerId: number;
  private readonly mountImage: ImageMounter;
  private readonly unmount: FolderUnmounter;

  /**
   * ownerId: the uid and gid files are stored with (the sandbox's own user, via idmapping).
   * mountImage, unmount: how to loop-mount an image and unmount it; by default the `mount` and
   * `umount` commands (Berth passes its root helper's, which start no process).
   */
  constructor(
    root: string,
    ownerId: number,
    tools: { mountImage?: ImageMounter; unmount?: FolderUnmounter } = {},
  ) {
    this.imageDir = join(root, "images");
    this.mountDir = join(root, "mounts");
    this.ownerId = ownerId;
    this.mountImage = tools.mountImage ?? mountWithCommand;
    this.unmount = tools.unmount ?? unmountWithCommand;
    mkdirSync(this.imageDir, { recursive: true, mode: 0o700 });
    mkdirSync(this.mountDir, { recursive: true, mode: 0o700 });
  }

  async create(volumeId: string, sizeBytes: number, owner?: SandboxIdentity): Promise<void> {
    const { uid, gid } = owner ?? { uid: this.ownerId, gid: this.ownerId };
    const image = this.imagePath(volumeId);
    const descriptor = openSync(image, "wx", 0o600);
    try {
      ftruncateSync(descriptor, sizeBytes);
      await reserveBlocks(image, sizeBytes);
      await run("mkfs.ext4", [
        "-q",
        "-F",
        "-m",
        "0",
        "-E",
        `lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=${uid}:${gid}`,
        image,
      ]);
      // The agent's workspace starts empty: lost+found (root's, unreadable to the agent) would
      // show up in every listing and warn in every `git add -A`. e2fsck recreates it if needed.
      await run("debugfs", ["-w", "-R", "rmdir lost+found", image]);
      fsyncSync(descriptor);
    } catch (error) {
      await rm(image, { force: true });
      throw error;
    } finally {
      closeSync(descriptor);
    }
    syncDirectory(this.imageDir);
  }

  async attach(volumeId: string): Promise<string> {
    const image = this.imagePath(volumeId);
    if (!existsSync(image)) throw new UnreadableVolumeError(`its image ${image} is missing`);
    // Mounted twice, one ext4 would be written through two superblocks: never attach an image
    // a loop device still holds (a previous detach that has not let go yet).
    const holders = loopDevicesBacking(image);
    if (holders.length > 0)
      throw new Error(`its image ${image} is still attached to ${holders.join(", ")}`);
    // Images made before blocks were reserved, or restored sparse, get theirs now (a process
    // to start only when some block is missing).
    const { size, blocks } = await stat(image);
    if (blocks * 512 < size) await reserveBlocks(image, size);
    const target = this.mountPath(volumeId);
    mkdirSync(target, { recursive: true, mode: 0o700 });
    try {
      await this.mountImage(image, target);
    } catch (error) {
      await rmdir(target).catch(() => undefined);
      throw await mountFailure(image, error);
    }
    return target;
  }

  async detach(volumeId: string): Promise<number | undefined> {
    const target = this.mountPath(volumeId);
    if (!isMountPoint(target)) return undefined;
    const usedBytes = await usedBytesOf(target);
    // syncfs first: the superblock may outlive this mount point (a sandbox's copy of it) and
    // must not hold unwritten data when the session is reported stopped. A failed sync still
    // unmounts (a volume left mounted would be attached twice next time), then is reported.
    const synced = await run("sync", ["--file-system", target]).then(
      () => undefined,
      (error: unknown) => new Error(`flushing ${target} failed: ${commandError(error)}`),
    );
    await this.unmount(target);
    await rmdir(target).catch(() => undefined);
    await this.released(this.imagePath(volumeId));
    if (synced !== undefined) throw synced;
    return usedBytes;
  }

  /**
   * Waits (bounded) until no loop device holds the image. The sandbox's copy of the mount goes
   * with its mount namespace, which the kernel tears down a moment after the sandbox's last
   * process has died, and only then does the loop device let go: a session started again at once
   * would otherwise find its storage still attached.
   */
  private async released(image: string): Promise<void> {
    const deadline = performance.now() + releaseTimeoutMs;
    while (loopDevicesBacking(image).length > 0 && performance.now() < deadline) {
      await delay(releasePollMs);
    }
  }

  async remove(volumeId: string): Promise<void> {
    await this.detach(volumeId);
    await rm(this.imagePath(volumeId), { force: true });
  }

  async usage(volumeId: string): Promise<VolumeUsage> {
    const image = await stat(this.imagePath(volumeId)).catch(() => undefined);
    const target = this.mountPath(volumeId);
    const attached = isMountPoint(target);
    return {
      attached,
      usedBytes: attached ? await usedBytesOf(target) : undefined,
      allocatedBytes: image === undefined ? 0 : image.blocks * 512,
    };
  }

  async list(): Promise<string[]> {
    return (await readdir(this.imageDir))
      .filter((name) => name.endsWith(".img"))
      .map((name) => name.slice(0, -".img".length));
  }

  async recover(): Promise<void> {
    for (const mountPoint of mountPointsUnder(this.mountDir)) {
      await run("umount", ["--lazy", mountPoint]).catch(() => undefined);
    }
    for (const name of await readdir(this.mountDir)) {
      await rmdir(join(this.mountDir, name)).catch(() => undefined);
    }
  }

  private imagePath(volumeId: string): string {
    return join(this.imageDir, `${safeName(volumeId)}.img`);
  }

  private mountPath(volumeId: string): string {
    return join(this.mountDir, safeName(volumeId));
  }
}

/** Allocates every block of `image` on the host's disk (kept data stays as it is). */
async function reserveBlocks(image: string, sizeBytes: number): Promise<void> {
  try {
    await run("fallocate", ["--length", String(sizeBytes), image]);
  } catch (error) {
    const reason = commandError(error);
    if (/no space left/i.test(reason)) {
      throw new NoRoomForVolumeError(
        `no room to reserve ${sizeBytes} bytes (sessionStorageBytes) for ${image}`,
      );
    }
    throw new Error(`cannot reserve the blocks of ${image}: ${reason}`);
  }
}

/**
 * Whose fault a failed mount is. The volume's only when e2fsck, checking it read-only (-n) and in
 * full (-f: a damaged filesystem may still be marked clean), finds its filesystem damaged;
 * otherwise the host failed (no loop device to be had, say) and the volume is as it was.
 */
async function mountFailure(image: string, error: unknown): Promise<unknown> {
  const damage = await filesystemDamage(image);
  if (damage === undefined) return error;
  return new UnreadableVolumeError(
    `${error instanceof Error ? error.message : String(error)}; e2fsck finds its filesystem damaged: ${damage}`,
    { cause: error },
  );
}

/** What e2fsck -fn reports wrong with the image's filesystem, if anything. */
async function filesystemDamage(image: string): Promise<string | undefined> {
  // A journal not yet replayed (after a crash) makes a sound filesystem look inconsistent to a
  // read-only check, which cannot replay it: no verdict then.
  if (await journalAwaitsReplay(image)) return undefined;
  try {
    await run("e2fsck", ["-f", "-n", image]);
    return undefined;
  } catch (error) {
    // Exit status 4: errors it would fix; 8: it could not open the filesystem at all. Anything
    // else (e2fsck missing, killed) says nothing about the volume.
    const status = (error as { code?: unknown }).code;
    if (typeof status !== "number" || (status & (4 | 8)) === 0) return undefined;
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    const lines = `${stdout ?? ""}\n${stderr ?? ""}`.split("\n").map((line) => line.trim());
    // The first problem it names, past its version banner and the names of its passes.
    const problem = lines.find((line) => line !== "" && !/^(e2fsck \d|Pass \d)/.test(line));
    return problem ?? `exit status ${status}`;
  }
}

/** ext4's superblock: 1 KiB in; its incompatible-features word at byte 0x60, bit 0x4 "recover". */
const superblockOffset = 1024;
const incompatibleFeaturesOffset = 0x60;
const journalRecoverFlag = 0x4;

/** Whether the image's superblock says its journal holds changes not yet replayed. */
async function journalAwaitsReplay(image: string): Promise<boolean> {
  const file = await open(image, "r");
  try {
    const word = Buffer.alloc(4);
    await file.read(word, 0, 4, superblockOffset + incompatibleFeaturesOffset);
    return (word.readUInt32LE(0) & journalRecoverFlag) !== 0;
  } finally {
    await file.close();
  }
}

function safeName(volumeId: string): string {
  if (!/^[a-zA-Z0-9-]+$/.test(volumeId)) throw new Error(`bad volume id ${volumeId}`);
  return volumeId;
}

async function usedBytesOf(directory: string): Promise<number> {
  const info = await statfs(directory);
  return (info.blocks - info.bfree) * info.bsize;
}

function syncDirectory(directory: string): void {
  const descriptor = openSync(directory, "r");
  try {
    fsyncSync(descriptor);
  } finally {
    closeSync(descriptor);
  }
}

/**
 * Loop devices whose backing file is `image` (the kernel lists them under /sys/block by the
 * file's real path); none when the image is gone.
 */
function loopDevicesBacking(image: string): string[] {
  if (!existsSync(image)) return [];
  const backingFile = realpathSync(image);
  return readdirSync("/sys/block")
    .filter((name) => name.startsWith("loop"))
    .filter((name) => {
      try {
        return readFileSync(`/sys/block/${name}/loop/backing_file`, "utf8").trim() === backingFile;
      } catch {
        return false; // not attached
      }
    })
    .map((name) => `/dev/${name}`);
}

function commandError(error: unknown): string {
  const stderr = (error as { stderr?: unknown }).stderr;
  const text = typeof stderr === "string" ? stderr.trim() : "";
  return text || (error as Error).message;
}
