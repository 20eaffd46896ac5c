import { open } from "node:fs/promises";
import { NoRoomForVolumeError } from "../../core/session-storage.ts";
import { commandError, runCommand } from "./run-command.ts";

/**
 * An ext4 filesystem in an image file: making it, reserving its blocks, and checking it without
 * mounting it (read-only; nothing here changes a volume's data).
 */

/** Formats `image` as ext4 whose root folder belongs to uid:gid, empty (no lost+found). */
export async function formatExt4(
  image: string,
  owner: { uid: number; gid: number },
): Promise<void> {
  await runCommand("mkfs.ext4", [
    "-q",
    "-F",
    "-m",
    "0",
    "-E",
    `lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=${owner.uid}:${owner.gid}`,
    image,
  ]);
  // The agent's workspace starts empty: lost+found (root's, unreadable to the agent) would
  // show up in every listing and warn in every `git add -A`. e2fsck recreates it if needed.
  await runCommand("debugfs", ["-w", "-R", "rmdir lost+found", image]);
}

/**
 * Allocates every block of `image` on the host's disk (kept data stays as it is). A disk with no
 * room throws NoRoomForVolumeError, saying `noRoom` (by default: a volume's sessionStorageBytes).
 */
export async function reserveBlocks(
  image: string,
  sizeBytes: number,
  noRoom = `no room to reserve ${sizeBytes} bytes (sessionStorageBytes) for ${image}`,
): Promise<void> {
  try {
    await runCommand("fallocate", ["--length", String(sizeBytes), image]);
  } catch (error) {
    const reason = commandError(error);
    if (/no space left/i.test(reason)) throw new NoRoomForVolumeError(noRoom);
    throw new Error(`cannot reserve the blocks of ${image}: ${reason}`, { cause: error });
  }
}

/**
 * Why `image` cannot be handed to a driver as an ext4 block image, if it cannot: no ext4
 * superblock where the kernel looks for one, or a filesystem e2fsck -n finds damaged (a full
 * check only when the filesystem is marked as having errors: a clean one is trusted, so this
 * takes milliseconds, not a read of the whole image).
 */
export async function blockImageProblem(image: string): Promise<string | undefined> {
  if (!(await holdsExt4Superblock(image))) return "holds no ext4 filesystem (no superblock)";
  const damage = await filesystemDamage(image, { full: false });
  return damage === undefined ? undefined : `has a damaged filesystem: ${damage}`;
}

/**
 * What e2fsck -n (read-only) reports wrong with the image's filesystem, if anything. full: check
 * everything (-f), as a filesystem that failed to mount may be damaged yet marked clean.
 */
export async function filesystemDamage(
  image: string,
  { full }: { full: boolean },
): Promise<string | undefined> {
  // A journal not yet replayed (after a crash) makes a sound filesystem look inconsistent to a
  // read-only check, which cannot replay it: no verdict then (mounting replays it).
  if (await journalAwaitsReplay(image)) return undefined;
  try {
    await runCommand("e2fsck", [...(full ? ["-f"] : []), "-n", image]);
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

/**
 * ext4's superblock: 1 KiB into the image. Its magic number (0xEF53) at byte 0x38; its
 * incompatible-features word at 0x60, where bit 0x4 ("recover") says the journal awaits replay.
 */
const superblockOffset = 1024;
const superblockBytes = 1024;
const magicOffset = 0x38;
const ext4Magic = 0xef53;
const incompatibleFeaturesOffset = 0x60;
const journalRecoverFlag = 0x4;

async function holdsExt4Superblock(image: string): Promise<boolean> {
  return (await readSuperblock(image)).readUInt16LE(magicOffset) === ext4Magic;
}

async function journalAwaitsReplay(image: string): Promise<boolean> {
  const superblock = await readSuperblock(image);
  return (superblock.readUInt32LE(incompatibleFeaturesOffset) & journalRecoverFlag) !== 0;
}

/** The superblock's bytes; zeros past the end of an image too short to hold one. */
async function readSuperblock(image: string): Promise<Buffer> {
  const file = await open(image, "r");
  try {
    const superblock = Buffer.alloc(superblockBytes);
    await file.read(superblock, 0, superblockBytes, superblockOffset);
    return superblock;
  } finally {
    await file.close();
  }
}
