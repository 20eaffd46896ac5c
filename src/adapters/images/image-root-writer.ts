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
import type { ImageRootNeeds } from "../../core/sandbox.ts";
import { entryParts, ImageRoot, removeAny } from "./image-root.ts";
import type { EntryBody, TarEntry } from "./tar-reader.ts";

const whiteoutPrefix = ".wh.";
const opaqueMarker = ".wh..wh..opq";

/**
 * Applies an image's layers, in order, to one folder: the image's root as its processes will
 * see it. Follows the OCI layer rules: a `.wh.NAME` entry deletes NAME from the layers below, a
 * `.wh..wh..opq` entry empties its folder of what the layers below put there.
 *
 * Nothing is ever written outside the root. Entry paths with `..` are refused, and so are
 * whiteouts of anything but a plain name (`.wh..` would be the folder itself, `.wh...` its
 * parent: at the top, the staging folder of every image being unpacked). A symlink met on
 * the way to an entry (`/bin` -> `usr/bin`, or `/etc` -> `/`) is followed as the image would
 * see it, within the root: an absolute target starts at the root, `..` stops there. The entry
 * itself is never followed: a file replaces a symlink, it does not write through it. Device
 * nodes and FIFOs are skipped (sandboxes get their own /dev); so are extended attributes,
 * file capabilities among them.
 */
export class ImageRootWriter extends ImageRoot {
  private readonly maxBytes: number;
  /** Bytes of the files written so far: the image's size. */
  private writtenBytes = 0;
  /** Bytes of the layers' tar metadata (PAX, long names): counted toward maxBytes too. */
  private metadataBytes = 0;
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

  /** Counts a layer's tar metadata toward the image's bound (see TarReaderOptions.onMetadata). */
  countMetadata(sizeBytes: number): void {
    this.metadataBytes += sizeBytes;
    this.requireWithinBound();
  }

  apply(entry: TarEntry): EntryBody | undefined {
    const parts = entryParts(entry.path);
    const name = parts.pop();
    if (name === undefined) {
      // "./": the root folder itself.
      if (entry.type === "directory") this.setOwnerAndMode(this.root, entry);
      return undefined;
    }
    if (name === opaqueMarker) {
      this.emptyLowerContent(this.resolveFolder(parts, entry.path));
      return undefined;
    }
    if (name.startsWith(whiteoutPrefix)) {
      this.applyWhiteout(parts, name.slice(whiteoutPrefix.length), entry);
      return undefined;
    }
    const target = join(this.resolveFolder(parts, entry.path), name);
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
   * Makes the finished root ready for sandboxes. Every root gets a /tmp (world-writable and
   * sticky when the image brought none). Then what the sandbox driver mounts over (`needs`, see
   * SandboxDriver.imageRootNeeds) is made to exist as what it must be, so the driver never has to
   * create a mount point in a root the sandbox's user may not own: a folder, or an empty file
   * where a file is bound (a symlink there, common for /etc/resolv.conf in images, would point
   * the mount elsewhere). (Working directories depend on the image's config, not its layers:
   * see ImageRoot.ensureFolder.)
   */
  prepareForSandboxes(needs: ImageRootNeeds): void {
    const hadTmp = lstatSync(this.lookup("tmp"), { throwIfNoEntry: false }) !== undefined;
    this.ensureFolder("tmp");
    if (!hadTmp) chmodSync(this.lookup("tmp"), 0o1777);
    for (const folder of needs.folders) this.ensureFolder(folder);
    for (const file of needs.files) this.ensureEmptyFile(file);
  }

  /** Makes `path` a plain file (an empty one, unless the image has a file there already). */
  private ensureEmptyFile(path: string): void {
    const target = this.lookup(path);
    if (lstatSync(target, { throwIfNoEntry: false })?.isFile() === true) return;
    removeAny(target);
    // Exclusive: never through a link that appeared meanwhile.
    writeFileSync(target, "", { mode: 0o644, flag: "wx" });
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
        this.requireWithinBound();
        for (let offset = 0; offset < chunk.length;) offset += writeSync(descriptor, chunk, offset);
      },
      end: () => {
        // Owner first: changing it clears set-id bits that the mode then restores.
        fchownSync(descriptor, entry.uid, entry.gid);
        fchmodSync(descriptor, entry.mode & 0o7777);
        futimesSync(descriptor, entry.mtime, entry.mtime);
      },
      close: () => {
        closeSync(descriptor);
      },
    };
  }

  private requireWithinBound(): void {
    if (this.writtenBytes + this.metadataBytes > this.maxBytes) {
      throw new ArtifactProblem(
        `the image unpacks to more than ${this.maxBytes} bytes (the setting maxImageBytes)`,
      );
    }
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

  /**
   * Deletes `hiddenName` of the folder `parts` from the layers below. The name must be one
   * entry's: "", "." and ".." would be the folder itself or its parent, so they are refused
   * rather than resolved.
   */
  private applyWhiteout(parts: string[], hiddenName: string, entry: TarEntry): void {
    if (hiddenName === "" || hiddenName === "." || hiddenName === "..") {
      throw new ArtifactProblem(
        `layer entry ${entry.path} is a whiteout of "${hiddenName}", which names no file (a whiteout must name one entry of its folder)`,
      );
    }
    const hidden = join(this.resolveFolder(parts, entry.path), hiddenName);
    if (!this.createdInLayer.has(hidden)) removeAny(hidden);
  }

  /** Removes what lower layers put in `folder`, keeping what this layer already added. */
  private emptyLowerContent(folder: string): void {
    for (const child of readdirSync(folder)) {
      const path = join(folder, child);
      if (!this.createdInLayer.has(path)) removeAny(path);
    }
  }
}
