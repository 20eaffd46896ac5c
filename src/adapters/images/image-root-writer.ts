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
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { ArtifactProblem } from "../../core/preparation.ts";
import { entryParts, ImageRoot, removeAny } from "./image-root.ts";
import type { EntryBody, TarEntry } from "./tar-reader.ts";

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
export class ImageRootWriter extends ImageRoot {
  private readonly maxBytes: number;
  private writtenBytes = 0;
  /** Paths (on the host) this layer created: its whiteouts apply to lower layers only. */
  private createdInLayer = new Set<string>();

  constructor(root: string, maxBytes: number) {
    mkdirSync(root, { mode: 0o755 });
    super(root);
    this.maxBytes = maxBytes;
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
      case "other": // devices, FIFOs: see the class comment
        return undefined;
    }
    this.createdInLayer.add(target);
    return undefined;
  }

  /**
   * Makes sure the mount points a sandbox needs exist as what they must be, so bwrap never has
   * to create one (the sandbox's user may not own the root): folders /proc, /dev, /mnt and
   * /run/berth; files /etc/hosts and /etc/resolv.conf (a symlink there, common in images, would
   * point the mount elsewhere); /tmp if the image has none. (Working directories depend on the
   * image's config, not its layers: see ImageRoot.ensureFolder.)
   */
  prepareMountPoints(): void {
    const hadTmp = lstatSync(this.lookup("tmp"), { throwIfNoEntry: false }) !== undefined;
    for (const folder of ["proc", "dev", "mnt", "run/berth", "etc", "tmp"])
      this.ensureFolder(folder);
    if (!hadTmp) chmodSync(this.lookup("tmp"), 0o1777);
    for (const file of ["etc/hosts", "etc/resolv.conf"]) {
      const path = this.lookup(file);
      if (lstatSync(path, { throwIfNoEntry: false })?.isFile() === true) continue;
      removeAny(path);
      writeFileSync(path, "", { mode: 0o644 });
    }
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
}
