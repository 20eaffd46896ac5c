import { createReadStream, createWriteStream } from "node:fs";
import { join, resolve, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import { BerthError } from "../../core/errors.ts";
import type { CodeLocation, CodeSource } from "./code-source.ts";
import { resolveBeneath, type Beneath } from "./resolve-beneath.ts";
import { sha256Of, type UnpackedArchives } from "./unpacked-archives.ts";

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
export class CodeFolders implements CodeSource {
  private readonly artifactsDir: string;
  private readonly archives: UnpackedArchives;
  private readonly unpacked = new Map<string, Promise<string>>();

  constructor(artifactsDir: string, archives: UnpackedArchives) {
    this.artifactsDir = artifactsDir;
    this.archives = archives;
  }

  /** `<artifacts>/<bucket>/<prefix>`, refusing anything that escapes the store (for messages). */
  location(artifact: CodeLocation): string {
    return insideRoot(this.artifactsDir, join(artifact.bucket, artifact.prefix));
  }

  notFound(artifact: CodeLocation): string {
    return `Code artifact s3://${artifact.bucket}/${artifact.prefix} not found: put it at ${this.location(artifact)} (a folder or a .zip)`;
  }

  /**
   * The folder to mount (no symbolic link below the store); undefined when the artifact does not
   * exist. Throws a ValidationException naming the field for a bucket or prefix that leaves the
   * store, and an Error for a file that is not a .zip.
   */
  async folder(artifact: CodeLocation): Promise<string | undefined> {
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

  /** Unpacks a .zip into the cache, unless the same bytes were unpacked before. */
  private async unpack(zipPath: string): Promise<string> {
    const cached = await this.archives.cached(await sha256Of(createReadStream(zipPath)));
    if (cached !== undefined) return cached;
    const tree = await this.archives.unpack(
      async (copy) => {
        await pipeline(createReadStream(zipPath), createWriteStream(copy, { flags: "wx" }));
        return true;
      },
      () => Promise.resolve("zip"),
      "The .zip",
    );
    if (tree === undefined) throw new Error(`${zipPath} could not be copied`);
    return tree;
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
