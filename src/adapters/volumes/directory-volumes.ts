import { mkdirSync } from "node:fs";
import { lchown, lstat, mkdir, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { SandboxIdentity, VolumeHandle } from "../../core/sandbox.ts";
import {
  agreedHandleKind,
  NoRoomForVolumeError,
  UnreadableVolumeError,
  type VolumeStore,
  type VolumeUsage,
} from "../../core/session-storage.ts";
import { runCommand } from "./run-command.ts";
import { isVolumeId, syncFolder, volumeFileName } from "./volume-files.ts";

/** How long measuring one volume may take before its usage is reported as unknown. */
const measureTimeoutMs = 10_000;

/**
 * Session storage volumes as plain folders under one root: for tests, and for hosts without loop
 * devices (or without root). Runs as any user on Linux and macOS.
 *
 * No size limit is enforced: a volume grows until the host's disk is full, and a full disk is
 * every volume's. A volume holds whatever the host's filesystem supports (hard links, FIFOs and
 * modes on any Unix one). New volumes belong to their owner when Berth runs as root; otherwise
 * to the user running it, the only user it can give files to. Nothing is flushed at detach:
 * what an agent fsynced is on disk, the rest as the host's filesystem keeps it.
 *
 * Usage is measured by `du` (disk blocks, each hard-linked file once), which walks the folder
 * without following symbolic links or leaving its filesystem, bounded in time: a sandbox cannot
 * make Berth, possibly root, read through a link it planted.
 */
export class DirectoryVolumes implements VolumeStore {
  readonly handleKinds: VolumeStore["handleKinds"] = ["host-directory"];
  private readonly root: string;
  private readonly ownerId: number | undefined;
  /** Volumes handed to a sandbox and not yet detached. */
  private readonly attached = new Set<string>();

  /** ownerId: the uid and gid of a new volume without an owner of its own (when run as root). */
  constructor(root: string, ownerId?: number) {
    this.root = root;
    this.ownerId = ownerId;
    mkdirSync(root, { recursive: true, mode: 0o700 });
  }

  async create(volumeId: string, _sizeBytes: number, owner?: SandboxIdentity): Promise<void> {
    const folder = this.folderOf(volumeId);
    await mkdir(folder, { mode: 0o755 }).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== "ENOSPC") throw error;
      throw new NoRoomForVolumeError(`no room on the host's disk for the folder ${folder}`);
    });
    try {
      const identity = owner ?? this.defaultOwner();
      // lchown: a folder made just now in a root-only folder, and never through a link anyway.
      if (runsAsRoot() && identity !== undefined) await lchown(folder, identity.uid, identity.gid);
      // The volume must be on disk before its record is written (see SessionStorage).
      await syncFolder(this.root);
    } catch (error) {
      await rm(folder, { recursive: true, force: true });
      throw error;
    }
  }

  async attach(volumeId: string, kinds: readonly VolumeHandle["kind"][]): Promise<VolumeHandle> {
    agreedHandleKind(kinds, this.handleKinds); // throws unless kinds include host-directory
    const folder = this.folderOf(volumeId);
    // Claimed before the first await, as a loop volume is: one sandbox per volume at a time.
    if (this.attached.has(volumeId)) throw new Error(`its folder ${folder} is already attached`);
    this.attached.add(volumeId);
    try {
      await requireFolder(folder);
      return { kind: "host-directory", volumeId, path: folder };
    } catch (error) {
      this.attached.delete(volumeId);
      throw error;
    }
  }

  async detach(volumeId: string): Promise<number | undefined> {
    try {
      return await measure(this.folderOf(volumeId));
    } finally {
      this.attached.delete(volumeId);
    }
  }

  /** Call once no sandbox runs on it: rm removes a link a sandbox made, never what it names. */
  async remove(volumeId: string): Promise<void> {
    this.attached.delete(volumeId);
    await rm(this.folderOf(volumeId), { recursive: true, force: true });
  }

  async usage(volumeId: string): Promise<VolumeUsage> {
    const usedBytes = await measure(this.folderOf(volumeId));
    // A folder takes on the host's disk what it holds: nothing is reserved.
    return { attached: this.attached.has(volumeId), usedBytes, allocatedBytes: usedBytes ?? 0 };
  }

  async list(): Promise<string[]> {
    const entries = await readdir(this.root, { withFileTypes: true });
    return entries
      .filter((entry) => entry.isDirectory() && isVolumeId(entry.name))
      .map((entry) => entry.name);
  }

  /** Nothing to do: nothing is mounted, and a folder outlives the server as it was. */
  async recover(): Promise<void> {}

  private defaultOwner(): SandboxIdentity | undefined {
    return this.ownerId === undefined ? undefined : { uid: this.ownerId, gid: this.ownerId };
  }

  private folderOf(volumeId: string): string {
    return join(this.root, volumeFileName(volumeId));
  }
}

/** Throws UnreadableVolumeError unless `folder` is a folder (not missing, not a link). */
async function requireFolder(folder: string): Promise<void> {
  const found = await lstat(folder).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    throw new UnreadableVolumeError(`its folder ${folder} is missing`);
  });
  if (!found.isDirectory()) throw new UnreadableVolumeError(`${folder} is not a folder`);
}

function runsAsRoot(): boolean {
  return process.getuid?.() === 0;
}

/**
 * Bytes the folder's tree takes on disk, per `du -skPx` (POSIX; GNU and BSD): symbolic links
 * not followed, other filesystems not entered, hard links counted once. Undefined when the
 * folder is gone or du takes too long; at least what du could read when some entry was
 * unreadable or vanished while it walked (a running sandbox changes its files).
 */
async function measure(folder: string): Promise<number | undefined> {
  const output = await runCommand("du", ["-s", "-k", "-P", "-x", folder], {
    timeout: measureTimeoutMs,
  }).then(
    ({ stdout }) => stdout,
    (error: unknown) => ((error as { killed?: boolean }).killed ? "" : stdOutOf(error)),
  );
  const kibibytes = /^(\d+)\s/.exec(output)?.[1];
  return kibibytes === undefined ? undefined : Number(kibibytes) * 1024;
}

function stdOutOf(error: unknown): string {
  const stdout = (error as { stdout?: unknown }).stdout;
  return typeof stdout === "string" ? stdout : "";
}
