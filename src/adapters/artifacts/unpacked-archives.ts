import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { chmod, mkdir, open, rename, stat } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { untarGz, unzipFile, type UnpackLimits } from "./bounded-unpack.ts";
import { sealTree } from "./sealed-tree.ts";
import { UnpackWorkspace } from "./unpack-workspace.ts";

export type ArchiveFormat = "zip" | "tar.gz";

/**
 * Code trees unpacked from archives, each in `<cache>/<SHA-256 of the archive>`: the same bytes
 * under any name or location unpack once. Archives are unpacked from a private copy (so the
 * hash, the checks and the unpacking all see the same bytes) as the unprivileged unpacking user,
 * within the limits, and the tree is sealed (root's, read-only for others) before it is kept.
 */
export class UnpackedArchives {
  readonly dir: string;
  private readonly limits: UnpackLimits;

  /** Call once per cache folder, at start: it clears what unpacks a crash cut short left there. */
  constructor(dir: string, limits: UnpackLimits) {
    this.dir = dir;
    this.limits = limits;
    UnpackWorkspace.clearLeftovers(dir);
  }

  /** The tree of the archive with this hash, if it was unpacked before. */
  async cached(sha256: string): Promise<string | undefined> {
    const tree = join(this.dir, sha256);
    return (await stat(tree).catch(() => undefined)) === undefined ? undefined : tree;
  }

  /**
   * Unpacks the archive `fetch` writes to the path it is given (a file it creates in a private
   * workspace); `formatOf` says how to read it, or throws to refuse it. Returns the tree, or
   * undefined when `fetch` found nothing to write. `what` names the archive in messages.
   */
  async unpack(
    fetch: (copy: string) => Promise<boolean>,
    formatOf: (copy: string) => Promise<ArchiveFormat>,
    what: string,
  ): Promise<string | undefined> {
    const workspace = await this.workspace();
    try {
      const copy = join(workspace.dir, "archive");
      if (!(await fetch(copy))) return undefined;
      // The unpacking user reads it by name (unzip), through root's 0711 workspace.
      await chmod(copy, 0o644);
      const hash = await sha256Of(createReadStream(copy));
      const cached = await this.cached(hash);
      if (cached !== undefined) return cached;
      if ((await formatOf(copy)) === "zip")
        await unzipFile(copy, workspace.tree, this.limits, what);
      else await untarGz(createReadStream(copy), workspace.tree, this.limits, what);
      return (await this.keep(workspace.tree, hash)).tree;
    } finally {
      await workspace.remove();
    }
  }

  /** A private place to unpack in, on the cache's filesystem (see keep). */
  async workspace(): Promise<UnpackWorkspace> {
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    return UnpackWorkspace.create(this.dir);
  }

  /**
   * Seals a tree unpacked in one of this cache's workspaces and keeps it as the archive's;
   * returns where, and how many regular files it holds.
   */
  async keep(tree: string, sha256: string): Promise<{ tree: string; files: number }> {
    const files = await sealTree(tree);
    const target = join(this.dir, sha256);
    // The same archive under another name may have been unpacked meanwhile: it is the same code.
    await rename(tree, target).catch(async (error: unknown) => {
      if ((await this.cached(sha256)) === undefined) throw error;
    });
    return { tree: target, files };
  }
}

/** What the first bytes of a file say it is: a .zip, a gzip stream (read as a .tar.gz), or neither. */
export async function sniffArchiveFormat(file: string): Promise<ArchiveFormat | undefined> {
  const handle = await open(file, "r");
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(4), 0, 4, 0);
    const magic = buffer.subarray(0, bytesRead);
    // PK\3\4 starts a .zip's first entry; PK\5\6 is the end record of an empty one.
    if (magic[0] === 0x50 && magic[1] === 0x4b && (magic[2] === 3 || magic[2] === 5)) return "zip";
    if (magic[0] === 0x1f && magic[1] === 0x8b) return "tar.gz";
    return undefined;
  } finally {
    await handle.close();
  }
}

export async function sha256Of(stream: Readable): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest("hex");
}
