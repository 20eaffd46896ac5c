import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { BerthError } from "../../core/errors.ts";
import { unzipFile, type UnpackLimits } from "./bounded-unpack.ts";
import { resolveBeneath, type Beneath } from "./resolve-beneath.ts";
import { sealTree } from "./sealed-tree.ts";
import { UnpackWorkspace } from "./unpack-workspace.ts";

const s3Field = "agentRuntimeArtifact.codeConfiguration.code.s3";

/**
 * The folder a code artifact runs from. Artifacts live in `<artifacts>/<bucket>/<prefix>`, the
 * local mirror of the S3 location AgentCore reads: a folder is used as it is; a .zip is unpacked
 * once into a cache keyed by its SHA-256 and remembered by path, size and mtime, so session
 * starts never hash or unpack again.
 *
 * The bucket is looked up in the store and the prefix in the bucket without ever leaving them:
 * uploaded code may hold a symbolic link such as `hostroot -> /`, and a prefix through it must
 * not make the host's root the session's /app (see resolveBeneath).
 */
export class CodeFolders {
  private readonly artifactsDir: string;
  private readonly cacheDir: string;
  private readonly limits: UnpackLimits;
  private readonly unpacked = new Map<string, Promise<string>>();

  constructor(artifactsDir: string, cacheDir: string, limits: UnpackLimits) {
    this.artifactsDir = artifactsDir;
    this.cacheDir = cacheDir;
    this.limits = limits;
    UnpackWorkspace.clearLeftovers(cacheDir);
  }

  /** `<artifacts>/<bucket>/<prefix>`, refusing anything that escapes the store (for messages). */
  location(artifact: { bucket: string; prefix: string }): string {
    return insideRoot(this.artifactsDir, join(artifact.bucket, artifact.prefix));
  }

  /**
   * The folder to mount (no symbolic link below the store); undefined when the artifact does not
   * exist. Throws a ValidationException naming the field for a bucket or prefix that leaves the
   * store, and an Error for a file that is not a .zip.
   */
  async folder(artifact: { bucket: string; prefix: string }): Promise<string | undefined> {
    const bucket = await resolveBeneath(this.artifactsDir, artifact.bucket);
    refuseEscape(bucket, `${s3Field}.bucket`, "the artifact store");
    if (bucket.kind !== "found" || !bucket.stats.isDirectory()) return undefined;
    const found = await resolveBeneath(bucket.path, artifact.prefix);
    refuseEscape(found, `${s3Field}.prefix`, "its bucket");
    if (found.kind !== "found") return undefined;
    if (found.stats.isDirectory()) return found.path;
    if (!found.stats.isFile() || !found.path.endsWith(".zip"))
      throw new Error(`${found.path} is neither a folder nor a .zip`);
    const key = `${found.path}:${found.stats.size}:${found.stats.mtimeMs}`;
    let folder = this.unpacked.get(key);
    if (folder === undefined) {
      folder = this.unpack(found.path);
      this.unpacked.set(key, folder);
      folder.catch(() => this.unpacked.delete(key));
    }
    return folder;
  }

  /**
   * Unpacks a .zip into the cache as the unprivileged unpacking user, within the limits. The
   * unpacking reads a private copy, keyed by the hash of the very bytes unpacked.
   */
  private async unpack(zipPath: string): Promise<string> {
    const cached = join(this.cacheDir, await sha256(createReadStream(zipPath)));
    if (await stat(cached).catch(() => undefined)) return cached;
    await mkdir(this.cacheDir, { recursive: true, mode: 0o755 });
    const workspace = await UnpackWorkspace.create(this.cacheDir);
    try {
      const copy = join(workspace.dir, "archive.zip");
      await pipeline(createReadStream(zipPath), createWriteStream(copy, { mode: 0o644 }));
      const target = join(this.cacheDir, await sha256(createReadStream(copy)));
      if (await stat(target).catch(() => undefined)) return target;
      await unzipFile(copy, workspace.tree, this.limits, "The .zip");
      await sealTree(workspace.tree);
      // The same .zip under another name may have been unpacked meanwhile: it is the same code.
      await rename(workspace.tree, target).catch(async (error: unknown) => {
        if (!(await stat(target).catch(() => undefined))) throw error;
      });
      return target;
    } finally {
      await workspace.remove();
    }
  }
}

/** Throws a ValidationException naming `field` when the lookup left `place`. */
function refuseEscape(found: Beneath, field: string, place: string): void {
  if (found.kind !== "leaves" && found.kind !== "loop") return;
  const why =
    found.kind === "loop"
      ? "goes through too many symbolic links"
      : found.via === undefined
        ? `leaves ${place}`
        : `goes through a symbolic link out of ${place} (${found.via})`;
  throw new BerthError(
    "ValidationException",
    `${field} ${why}: name the code's own folder or .zip`,
    {
      reason: "FieldValidationFailed",
      fieldList: [{ name: field, message: why }],
    },
  );
}

/** Resolves `relative` under `root`, refusing anything (`..`, absolute paths) that escapes it. */
export function insideRoot(root: string, relative: string): string {
  const base = resolve(root);
  const target = resolve(base, relative);
  if (target !== base && !target.startsWith(base + sep)) {
    throw new Error(`${relative} leaves ${base}`);
  }
  return target;
}

async function sha256(stream: Readable): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return hash.digest("hex");
}
