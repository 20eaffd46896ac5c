import { mkdirSync } from "node:fs";
import { mkdir, open, readdir, rm, rmdir, stat, statfs } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import type { SandboxIdentity, VolumeHandle } from "../../core/sandbox.ts";
import {
  agreedHandleKind,
  UnreadableVolumeError,
  type VolumeStore,
  type VolumeUsage,
} from "../../core/session-storage.ts";
import { isMountPoint, mountPointsUnder } from "../host/mount-table.ts";
import { blockImageProblem, filesystemDamage, formatExt4, reserveBlocks } from "./ext4-image.ts";
import { LoopDeviceTable } from "./loop-devices.ts";
import { commandError, runCommand } from "./run-command.ts";
import { isVolumeId, syncFolder, volumeFileName } from "./volume-files.ts";

/** Mounts an ext4 image file on a folder (loop device, nosuid, nodev). */
export type ImageMounter = (image: string, target: string) => Promise<void>;

const mountWithCommand: ImageMounter = async (image, target) => {
  try {
    await runCommand("mount", [
      "-t",
      "ext4",
      "-o",
      "loop,nosuid,nodev,errors=remount-ro",
      image,
      target,
    ]);
  } catch (error) {
    throw new Error(commandError(error));
  }
};

/** Unmounts a folder, lazily if it is busy. */
export type FolderUnmounter = (target: string) => Promise<void>;

const unmountWithCommand: FolderUnmounter = async (target) => {
  await runCommand("umount", [target]).catch(async () => runCommand("umount", ["--lazy", target]));
};

/** How long a detach waits for the kernel to release the image's loop device, and how often it looks. */
const releaseTimeoutMs = 5000;
const releasePollMs = 5;

/**
 * Session storage volumes as ext4 images on local disk. Each is a real filesystem (hard links,
 * FIFOs, sockets, xattrs, fallocate all work) with a hard size limit: writing past it gives
 * ENOSPC inside that volume only.
 *
 * Handed to a driver as a host directory (the image loop-mounted on a root-only folder here) or
 * as a block image (the image file, checked but not mounted: the driver attaches it itself, and
 * its usage is not measured here until it is mounted as a host directory again).
 *
 * Every image's blocks are reserved on the host's disk (fallocate) before it is attached, and
 * never given back while it exists (no `discard`): a sparse image would take blocks only as it
 * is written, so a disk filled by anyone else — another session filling its own volume — would
 * leave this one's writes nowhere to go, acknowledged, then lost when its journal aborts. A
 * volume that cannot be reserved is refused before its session starts, loudly.
 */
export class LoopVolumes implements VolumeStore {
  readonly handleKinds: VolumeStore["handleKinds"] = ["host-directory", "block-image"];
  /** Where the images are (root's alone). */
  readonly imageDir: string;
  private readonly mountDir: string;
  private readonly ownerId: number;
  private readonly mountImage: ImageMounter;
  private readonly unmount: FolderUnmounter;
  /**
   * Volumes this store is attaching or has attached, by handle kind. One ext4 attached twice
   * would be written through two superblocks: a second attach is refused until detach.
   */
  private readonly attached = new Map<string, VolumeHandle["kind"]>();
  private readonly loopDevices = new LoopDeviceTable();

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
    const image = this.imagePath(volumeId);
    const file = await open(image, "wx", 0o600);
    try {
      await file.truncate(sizeBytes);
      await reserveBlocks(image, sizeBytes);
      await formatExt4(image, owner ?? { uid: this.ownerId, gid: this.ownerId });
      await file.sync();
    } catch (error) {
      await rm(image, { force: true });
      throw error;
    } finally {
      await file.close();
    }
    await syncFolder(this.imageDir);
  }

  async attach(volumeId: string, kinds: readonly VolumeHandle["kind"][]): Promise<VolumeHandle> {
    const kind = agreedHandleKind(kinds, this.handleKinds);
    const image = this.imagePath(volumeId);
    // Claimed before the first await: two attaches at once must not both find it free.
    if (this.attached.has(volumeId)) throw new Error(`its image ${image} is already attached`);
    this.attached.set(volumeId, kind);
    try {
      await this.prepareImage(image);
      if (kind === "block-image") return await checkedBlockImage(volumeId, image);
      return { kind, volumeId, path: await this.mounted(volumeId, image) };
    } catch (error) {
      this.attached.delete(volumeId);
      throw error;
    }
  }

  /** Checks the image exists and is free, and reserves its blocks if some are not. */
  private async prepareImage(image: string): Promise<void> {
    const { size, blocks } = await stat(image).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      throw new UnreadableVolumeError(`its image ${image} is missing`);
    });
    // A loop device may still hold it: a previous detach the kernel has not let go of yet.
    const holders = await this.loopDevices.backing(image);
    if (holders.length > 0)
      throw new Error(`its image ${image} is still attached to ${holders.join(", ")}`);
    // Images made before blocks were reserved, or restored sparse, get theirs now (a process
    // to start only when some block is missing).
    if (blocks * 512 < size) await reserveBlocks(image, size);
  }

  /** Loop-mounts the image on its root-only folder; returns that folder. */
  private async mounted(volumeId: string, image: string): Promise<string> {
    const target = this.mountPath(volumeId);
    await mkdir(target, { recursive: true, mode: 0o700 });
    try {
      await this.mountImage(image, target);
    } catch (error) {
      await rmdir(target).catch(() => undefined);
      throw await mountFailure(image, error);
    }
    return target;
  }

  async detach(volumeId: string): Promise<number | undefined> {
    try {
      if (this.attached.get(volumeId) !== "block-image") return await this.unmounted(volumeId);
      // Its driver has flushed and unmounted it: only its loop device (if the driver used one)
      // is left to let go. Its usage is the driver's to know: not measured.
      await this.released(this.imagePath(volumeId));
      return undefined;
    } finally {
      this.attached.delete(volumeId);
    }
  }

  /** Flushes and unmounts the volume's folder; the bytes in use then (none if not mounted). */
  private async unmounted(volumeId: string): Promise<number | undefined> {
    const target = this.mountPath(volumeId);
    if (!isMountPoint(target)) return undefined;
    const usedBytes = await usedBytesOf(target);
    // syncfs first: the superblock may outlive this mount point (a sandbox's copy of it) and
    // must not hold unwritten data when the session is reported stopped. A failed sync still
    // unmounts (a volume left mounted would be attached twice next time), then is reported.
    const synced = await runCommand("sync", ["--file-system", target]).then(
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
    while ((await this.loopDevices.backing(image)).length > 0 && performance.now() < deadline) {
      await delay(releasePollMs);
    }
  }

  async remove(volumeId: string): Promise<void> {
    await this.detach(volumeId);
    await rm(this.imagePath(volumeId), { force: true });
  }

  async usage(volumeId: string): Promise<VolumeUsage> {
    const image = await stat(this.imagePath(volumeId)).catch(() => undefined);
    const allocatedBytes = image === undefined ? 0 : image.blocks * 512;
    if (this.attached.get(volumeId) === "block-image") {
      return { attached: true, usedBytes: undefined, allocatedBytes };
    }
    const target = this.mountPath(volumeId);
    const attached = isMountPoint(target);
    return {
      attached,
      usedBytes: attached ? await usedBytesOf(target) : undefined,
      allocatedBytes,
    };
  }

  async list(): Promise<string[]> {
    return (await readdir(this.imageDir))
      .filter((name) => name.endsWith(".img"))
      .map((name) => name.slice(0, -".img".length));
  }

  async recover(): Promise<void> {
    for (const mountPoint of mountPointsUnder(this.mountDir)) {
      // Through the same helper as every other unmount (lazily, if the volume is busy).
      await this.unmount(mountPoint).catch(() => undefined);
    }
    for (const name of await readdir(this.mountDir)) {
      await rmdir(join(this.mountDir, name)).catch(() => undefined);
      // Attachable again only once the kernel has let go of its loop device.
      if (isVolumeId(name)) await this.released(this.imagePath(name));
    }
  }

  /** The volume's image file (root's alone). */
  imagePath(volumeId: string): string {
    return join(this.imageDir, `${volumeFileName(volumeId)}.img`);
  }

  /** Where the volume is mounted on the host while attached as a host directory (root's alone). */
  mountPath(volumeId: string): string {
    return join(this.mountDir, volumeFileName(volumeId));
  }
}

/** The image as a block-image handle, once a read-only check finds ext4 in it. */
async function checkedBlockImage(volumeId: string, image: string): Promise<VolumeHandle> {
  const problem = await blockImageProblem(image);
  if (problem !== undefined) throw new UnreadableVolumeError(`its image ${image} ${problem}`);
  return { kind: "block-image", volumeId, path: image, filesystem: "ext4" };
}

/**
 * Whose fault a failed mount is. The volume's only when e2fsck, checking it read-only and in
 * full (a damaged filesystem may still be marked clean), finds its filesystem damaged; otherwise
 * the host failed (no loop device to be had, say) and the volume is as it was.
 */
async function mountFailure(image: string, error: unknown): Promise<unknown> {
  const damage = await filesystemDamage(image, { full: true });
  if (damage === undefined) return error;
  return new UnreadableVolumeError(
    `${error instanceof Error ? error.message : String(error)}; e2fsck finds its filesystem damaged: ${damage}`,
    { cause: error },
  );
}

async function usedBytesOf(directory: string): Promise<number> {
  const info = await statfs(directory);
  return (info.blocks - info.bfree) * info.bsize;
}
