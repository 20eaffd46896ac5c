import type { Dirent } from "node:fs";
import { chmod, lchown, lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { berthIsRoot } from "./unpack-workspace.ts";

/**
 * Makes an unpacked tree root's and read-only for everyone else: folders 0755, files 0755 when
 * any execute bit was set and 0644 otherwise, so no setuid, setgid or sticky bit, no group or
 * world write; symbolic links only change owner. Sessions read the code as their own uids, and
 * the unpacking user can no longer change it. Returns the number of regular files.
 *
 * The walk goes top down, a level at a time, and seals each folder before listing it: from then
 * on only root can add, remove or swap its entries, so every path it touches afterwards goes
 * through folders no one else controls, and a file seen as regular is still that file when its
 * mode is set.
 */
export async function sealTree(tree: string): Promise<number> {
  let files = 0;
  let folders = [tree];
  while (folders.length > 0) {
    const next: string[][] = await Promise.all(
      folders.map(async (folder) => {
        await sealFolder(folder);
        const entries = await readdir(folder, { withFileTypes: true });
        const found = await Promise.all(entries.map((entry) => sealEntry(folder, entry)));
        files += found.filter((kind) => kind === "file").length;
        return entries
          .filter((entry) => entry.isDirectory())
          .map((entry) => join(folder, entry.name));
      }),
    );
    folders = next.flat();
  }
  return files;
}

async function sealFolder(folder: string): Promise<void> {
  await chmod(folder, 0o755);
  await makeRoots(folder);
}

/** Root's, when Berth is root; unprivileged, everything is Berth's own already. */
async function makeRoots(path: string): Promise<void> {
  if (berthIsRoot) await lchown(path, 0, 0);
}

/** Seals one entry of a sealed folder, except folders (sealed before they are listed). */
async function sealEntry(folder: string, entry: Dirent): Promise<"file" | "other"> {
  const path = join(folder, entry.name);
  if (entry.isDirectory()) return "other";
  if (entry.isSymbolicLink()) {
    await makeRoots(path);
    return "other";
  }
  // Mode first: a setuid bit is dropped while the file still belongs to the unpacker.
  const executable = ((await lstat(path)).mode & 0o111) !== 0;
  await chmod(path, executable ? 0o755 : 0o644);
  await makeRoots(path);
  return entry.isFile() ? "file" : "other";
}
