import {
  accessSync,
  chmodSync,
  constants,
  copyFileSync,
  mkdirSync,
  renameSync,
  statSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";

/**
 * Sandboxes run under unprivileged uids, so every host path they mount must be reachable by
 * "others". These checks turn a confusing failure inside bwrap into a clear one at start.
 */
export function requireTraversableByOthers(path: string, why: string): void {
  for (let folder = path; ; folder = dirname(folder)) {
    if ((statSync(folder).mode & 0o001) === 0) {
      throw new Error(
        `${folder} is not traversable by other users (mode ${(statSync(folder).mode & 0o777).toString(8)}), but sandbox users must reach ${path} (${why}). Choose a location outside private folders such as /root, e.g. --data-dir /var/lib/berth.`,
      );
    }
    if (dirname(folder) === folder) return;
  }
}

/**
 * Returns a path to a program (an interpreter, berth-bridge) that sandbox users can read: the
 * binary itself when they can, else a copy kept in `stagingDir` (e.g. when Berth is checked out
 * under /root).
 */
export function binaryForSandboxes(binary: string, stagingDir: string): string {
  try {
    requireTraversableByOthers(dirname(binary), "a program sandboxes run");
    if ((statSync(binary).mode & 0o005) === 0o005) return binary;
  } catch {
    // fall through to a staged copy
  }
  const stats = statSync(binary);
  mkdirSync(stagingDir, { recursive: true, mode: 0o755 });
  const staged = join(stagingDir, `${basename(binary)}-${stats.size}-${Math.round(stats.mtimeMs)}`);
  try {
    accessSync(staged, constants.R_OK);
  } catch {
    copyFileSync(binary, `${staged}.partial`);
    chmodSync(`${staged}.partial`, 0o755);
    renameSync(`${staged}.partial`, staged);
  }
  return staged;
}
