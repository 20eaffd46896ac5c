import { lstatSync, mkdirSync, readFileSync, readlinkSync, rmSync, unlinkSync } from "node:fs";
import { join, relative } from "node:path";
import { ArtifactProblem } from "../../core/preparation.ts";

/** Symlinks followed while resolving one path, as the kernel allows (ELOOP past it). */
const maxSymlinks = 40;

/**
 * An unpacked image's root folder, with paths resolved as the image's own processes would see
 * them: a symlink on the way is followed within the root (an absolute target starts at the
 * root, `..` stops there), never out of it.
 */
export class ImageRoot {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  /** A file inside the root, resolved as the image would see it, or undefined if missing. */
  readFile(path: string): string | undefined {
    try {
      return readFileSync(this.resolveAll(path), "utf8");
    } catch {
      return undefined;
    }
  }

  /** True when `path` names something executable in the image (following symlinks in it). */
  hasProgram(path: string): boolean {
    try {
      return (lstatSync(this.resolveAll(path)).mode & 0o111) !== 0;
    } catch {
      return false;
    }
  }

  /** Makes `path` a folder (replacing whatever else is there), creating folders on the way. */
  ensureFolder(path: string): void {
    const target = this.lookup(path);
    if (lstatSync(target, { throwIfNoEntry: false })?.isDirectory() === true) return;
    removeAny(target);
    mkdirSync(target, { mode: 0o755 });
  }

  /** Where `path` is on the host: its folders resolved within the root (and created), the last
   * component not followed. */
  protected lookup(path: string): string {
    const parts = entryParts(path);
    const name = parts.pop();
    const folder = this.resolveFolder(parts, path);
    return name === undefined ? folder : join(folder, name);
  }

  /**
   * The host folder for `parts`, walked from the root one component at a time. Symlinks on the
   * way are followed within the root; missing folders are created (as tar does) unless `create`
   * is false.
   */
  protected resolveFolder(parts: string[], shown: string, create = true): string {
    const resolved: string[] = [];
    const queue = [...parts];
    let followed = 0;
    while (queue.length > 0) {
      const part = queue.shift() ?? "";
      if (part === "" || part === ".") continue;
      if (part === "..") {
        resolved.pop(); // only symlink targets get here; at the root, .. is the root
        continue;
      }
      const path = join(this.root, ...resolved, part);
      const found = lstatSync(path, { throwIfNoEntry: false });
      if (found === undefined) {
        if (!create) throw new Error(`${shown}: no such folder`);
        mkdirSync(path, { mode: 0o755 });
      } else if (found.isSymbolicLink()) {
        followed += 1;
        if (followed > maxSymlinks)
          throw new ArtifactProblem(`layer entry ${shown}: too many levels of symlinks`);
        const target = readlinkSync(path);
        if (target.startsWith("/")) resolved.length = 0;
        queue.unshift(...target.split("/"));
        continue;
      } else if (!found.isDirectory()) {
        throw new ArtifactProblem(`layer entry ${shown}: ${part} is not a folder in the image`);
      }
      resolved.push(part);
    }
    return join(this.root, ...resolved);
  }

  /** Like lookup, but a symlink in the last place is followed too (within the root). */
  private resolveAll(path: string): string {
    let parts = entryParts(path);
    for (let followed = 0; ; followed++) {
      const name = parts.at(-1);
      if (name === undefined || name === "..") return this.resolveFolder(parts, path, false);
      const folder = this.resolveFolder(parts.slice(0, -1), path, false);
      const candidate = join(folder, name);
      if (!lstatSync(candidate).isSymbolicLink()) return candidate;
      if (followed >= maxSymlinks) throw new Error(`${path}: too many levels of symlinks`);
      const target = readlinkSync(candidate);
      const base = target.startsWith("/") ? [] : relative(this.root, folder).split("/");
      parts = [...base, ...target.split("/")].filter((part) => part !== "" && part !== ".");
    }
  }
}

/** An entry's path as components, refusing any that would climb out of the root. */
export function entryParts(path: string): string[] {
  const parts = path.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) {
    throw new ArtifactProblem(`layer entry ${path} points outside the image (it contains "..")`);
  }
  return parts;
}

export function removeAny(path: string): void {
  const found = lstatSync(path, { throwIfNoEntry: false });
  if (found === undefined) return;
  if (found.isDirectory()) rmSync(path, { recursive: true, force: true });
  else unlinkSync(path);
}
