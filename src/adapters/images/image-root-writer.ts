import {
  chmodSync,
  chownSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join, relative } from "node:path";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { EntryBody, TarEntry } from "./tar-reader.ts";

/** Symlinks followed while resolving one path, as the kernel allows (ELOOP past it). */
const maxSymlinks = 40;
const whiteoutPrefix = ".wh.";
const opaqueMarker = ".wh..wh..opq";

/**
 * Applies an image's layers, in order, to one folder: the image's root as its processes will
 * see it. Follows the OCI layer rules: a `.wh.NAME` entry deletes NAME from the layers below, a
 * `.wh..wh..opq` entry empties its folder of what the layers below put there.
 *
 * Nothing is ever written outside the root. Entry paths with `..` are refused. A symlink met on
 * the way to an entry (`/bin` -> `usr/bin`, or `/etc` -> `/`) is followed as the image would
 * see it, within the root: an absolute target starts at the root, `..` stops there. The entry
 * itself is never followed: a file replaces a symlink, it does not write through it. Device
 * nodes and FIFOs are skipped (sandboxes get their own /dev); so are extended attributes,
 * file capabilities among them.
 */
export class ImageRootWriter {
  readonly root: string;
  private readonly maxBytes: number;
  private writtenBytes = 0;
  /** Paths (on the host) this layer created: its whiteouts apply to lower layers only. */
  private createdInLayer = new Set<string>();
  skipped: string[] = [];

  constructor(root: string, maxBytes: number) {
    this.root = root;
    this.maxBytes = maxBytes;
    mkdirSync(root, { mode: 0o755 });
  }

  startLayer(): void {
    this.createdInLayer = new Set();
  }

  get bytes(): number {
    return this.writtenBytes;
  }

  apply(entry: TarEntry): EntryBody | undefined {
    const parts = entryParts(entry.path);
    const name = parts.pop();
    if (name === undefined) {
      // "./": the root folder itself.
      if (entry.type === "directory") this.setOwnerAndMode(this.root, entry);
      return undefined;
    }
    const folder = this.resolveFolder(parts, entry.path);
    if (name === opaqueMarker) {
      this.emptyLowerContent(folder);
      return undefined;
    }
    if (name.startsWith(whiteoutPrefix)) {
      const hidden = join(folder, name.slice(whiteoutPrefix.length));
      if (!this.createdInLayer.has(hidden)) removeAny(hidden);
      return undefined;
    }
    const target = join(folder, name);
    switch (entry.type) {
      case "directory":
        this.writeDirectory(target, entry);
        break;
      case "file":
        this.createdInLayer.add(target);
        return this.writeFile(target, entry);
      case "symlink":
        removeAny(target);
        symlinkSync(entry.linkPath, target);
        lchownSync(target, entry.uid, entry.gid);
        lutimesSync(target, entry.mtime, entry.mtime);
        break;
      case "hardlink": {
        const source = this.resolveLinkSource(entry);
        if (source === target) break;
        removeAny(target);
        linkSync(source, target);
        break;
      }
      case "other":
        this.skipped.push(`${entry.path} (type ${entry.typeflag})`);
        return undefined;
    }
    this.createdInLayer.add(target);
    return undefined;
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

  /**
   * Makes sure the mount points a sandbox needs exist as what they must be, so bwrap never has
   * to create one (the sandbox's user may not own the root): folders /proc, /dev, /mnt,
   * /run/berth and the working directory; files /etc/hosts and /etc/resolv.conf (a symlink
   * there, common in images, would point the mount elsewhere); /tmp if the image has none.
   */
  prepareMountPoints(workingDir: string): void {
    const hadTmp = lstatSync(this.lookup("tmp"), { throwIfNoEntry: false }) !== undefined;
    for (const folder of ["proc", "dev", "mnt", "run/berth", "etc", "tmp", workingDir]) {
      const path = this.lookup(folder);
      if (lstatSync(path, { throwIfNoEntry: false })?.isDirectory() === true) continue;
      removeAny(path);
      mkdirSync(path, { mode: 0o755 });
    }
    if (!hadTmp) chmodSync(this.lookup("tmp"), 0o1777);
    for (const file of ["etc/hosts", "etc/resolv.conf"]) {
      const path = this.lookup(file);
      if (lstatSync(path, { throwIfNoEntry: false })?.isFile() === true) continue;
      removeAny(path);
      writeFileSync(path, "", { mode: 0o644 });
    }
  }

  /** Where `path` is on the host: its folders resolved within the root (and created), the last
   * component not followed. */
  private lookup(path: string): string {
    const parts = entryParts(path);
    const name = parts.pop();
    const folder = this.resolveFolder(parts, path);
    return name === undefined ? folder : join(folder, name);
  }

  private writeDirectory(target: string, entry: TarEntry): void {
    const existing = lstatSync(target, { throwIfNoEntry: false });
    if (existing?.isDirectory() !== true) {
      if (existing !== undefined) removeAny(target);
      mkdirSync(target);
    }
    this.setOwnerAndMode(target, entry);
  }

  private setOwnerAndMode(path: string, entry: TarEntry): void {
    chownSync(path, entry.uid, entry.gid);
    chmodSync(path, entry.mode & 0o7777);
  }

  private writeFile(target: string, entry: TarEntry): EntryBody {
    removeAny(target);
    const descriptor = openSync(
      target,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    return {
      write: (chunk) => {
        this.writtenBytes += chunk.length;
        if (this.writtenBytes > this.maxBytes) {
          closeSync(descriptor);
          throw new ArtifactProblem(
            `the image unpacks to more than ${this.maxBytes} bytes (the setting maxImageBytes)`,
          );
        }
        for (let offset = 0; offset < chunk.length;) offset += writeSync(descriptor, chunk, offset);
      },
      end: () => {
        // Owner first: changing it clears set-id bits that the mode then restores.
        fchownSync(descriptor, entry.uid, entry.gid);
        fchmodSync(descriptor, entry.mode & 0o7777);
        futimesSync(descriptor, entry.mtime, entry.mtime);
        closeSync(descriptor);
      },
    };
  }

  /** A hard link's source: resolved like any entry path, and never a folder. */
  private resolveLinkSource(entry: TarEntry): string {
    const parts = entryParts(entry.linkPath);
    const name = parts.pop() ?? "";
    const source = join(this.resolveFolder(parts, entry.linkPath, false), name);
    const found = lstatSync(source, { throwIfNoEntry: false });
    if (found === undefined || found.isDirectory()) {
      throw new ArtifactProblem(
        `layer entry ${entry.path} is a hard link to ${entry.linkPath}, which is not a file in the image`,
      );
    }
    return source;
  }

  /** Removes what lower layers put in `folder`, keeping what this layer already added. */
  private emptyLowerContent(folder: string): void {
    for (const child of readdirSync(folder)) {
      const path = join(folder, child);
      if (!this.createdInLayer.has(path)) removeAny(path);
    }
  }

  /**
   * The host folder for `parts`, walked from the root one component at a time. Symlinks on the
   * way are followed within the root; missing folders are created (as tar does) unless `create`
   * is false.
   */
  private resolveFolder(parts: string[], shown: string, create = true): string {
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
function entryParts(path: string): string[] {
  const parts = path.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) {
    throw new ArtifactProblem(`layer entry ${path} points outside the image (it contains "..")`);
  }
  return parts;
}

function removeAny(path: string): void {
  const found = lstatSync(path, { throwIfNoEntry: false });
  if (found === undefined) return;
  if (found.isDirectory()) rmSync(path, { recursive: true, force: true });
  else unlinkSync(path);
}
