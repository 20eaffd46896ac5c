import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * The folder a code artifact runs from. Artifacts live in `<artifacts>/<bucket>/<prefix>`, the
 * local mirror of the S3 location AgentCore reads: a folder is used as it is; a .zip is unpacked
 * once into a cache keyed by its SHA-256 and remembered by path, size and mtime, so session
 * starts never hash or unpack again.
 */
export class CodeFolders {
  private readonly artifactsDir: string;
  private readonly cacheDir: string;
  private readonly unpacked = new Map<string, Promise<string>>();

  constructor(artifactsDir: string, cacheDir: string) {
    this.artifactsDir = artifactsDir;
    this.cacheDir = cacheDir;
  }

  /** `<artifacts>/<bucket>/<prefix>`, refusing anything that escapes the store. */
  location(artifact: { bucket: string; prefix: string }): string {
    return insideRoot(this.artifactsDir, join(artifact.bucket, artifact.prefix));
  }

  /** The folder to mount; undefined when the artifact does not exist. Throws for a non-zip file. */
  async folder(artifact: { bucket: string; prefix: string }): Promise<string | undefined> {
    const location = this.location(artifact);
    const found = await stat(location).catch(() => undefined);
    if (found === undefined) return undefined;
    if (!found.isFile()) return location;
    if (!location.endsWith(".zip")) throw new Error(`${location} is a file but not a .zip`);
    const key = `${location}:${found.size}:${found.mtimeMs}`;
    let folder = this.unpacked.get(key);
    if (folder === undefined) {
      folder = this.unpack(location);
      this.unpacked.set(key, folder);
      folder.catch(() => this.unpacked.delete(key));
    }
    return folder;
  }

  private async unpack(zipPath: string): Promise<string> {
    const target = join(this.cacheDir, await sha256File(zipPath));
    if (await stat(target).catch(() => undefined)) return target;
    const staging = `${target}.${process.pid}.partial`;
    await rm(staging, { recursive: true, force: true });
    await mkdir(staging, { recursive: true });
    // unzip refuses entries that would land outside the target folder ("../" and absolute paths).
    await run("unzip", ["-q", "-o", zipPath, "-d", staging]);
    await run("chmod", ["-R", "a+rX", staging]);
    await rename(staging, target);
    return target;
  }
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

function sha256File(path: string): Promise<string> {
  return new Promise((done, fail) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("data", (chunk) => hash.update(chunk))
      .on("end", () => {
        done(hash.digest("hex"));
      })
      .on("error", fail);
  });
}
