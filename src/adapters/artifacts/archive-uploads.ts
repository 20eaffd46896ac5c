import { spawn } from "node:child_process";
import { once } from "node:events";
import { chownSync, existsSync, mkdirSync } from "node:fs";
import { chmod, mkdtemp, readdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ArtifactUploader } from "../../core/artifact-upload.ts";
import { BerthError } from "../../core/errors.ts";

/** The unprivileged user that unpacks uploads: it cannot create device nodes or set owners. */
const unpackUid = 65534;

/**
 * Uploaded code (a .tar.gz, as `berth runtimes create --code DIR` sends it), unpacked into
 * `<artifacts>/<bucket>/<prefix>`. tar runs as nobody, so an archive cannot create device nodes,
 * setuid files or files owned by anyone else; GNU tar already refuses members outside the target
 * (`..`, absolute paths). An existing location is never replaced: versions that use it would
 * change under their sessions.
 */
export class ArchiveUploads implements ArtifactUploader {
  private readonly artifactsDir: string;
  private readonly maxBytes: number;

  constructor(artifactsDir: string, maxBytes: number) {
    this.artifactsDir = artifactsDir;
    this.maxBytes = maxBytes;
  }

  async unpack(
    location: { bucket: string; prefix: string },
    archive: Readable,
  ): Promise<{ files: number; bytes: number }> {
    const bucketDir = join(this.artifactsDir, location.bucket);
    const target = join(bucketDir, location.prefix);
    if (existsSync(target)) throw taken(location);
    mkdirSync(bucketDir, { recursive: true, mode: 0o755 });
    const staging = await mkdtemp(join(bucketDir, ".upload-"));
    try {
      chownSync(staging, unpackUid, unpackUid);
      const bytes = await this.untar(archive, staging);
      await asUnpacker("chmod", ["-R", "a+rX", staging]);
      const files = await countFiles(staging);
      if (existsSync(target)) throw taken(location);
      await chmod(staging, 0o755); // sandboxes read code as their own uids
      await rename(staging, target);
      return { files, bytes };
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  private async untar(archive: Readable, directory: string): Promise<number> {
    const tar = spawn(
      "setpriv",
      [
        `--reuid=${unpackUid}`,
        `--regid=${unpackUid}`,
        "--clear-groups",
        "tar",
        "-xzf",
        "-",
        "-C",
        directory,
        "--no-same-owner",
        "--no-same-permissions",
      ],
      { stdio: ["pipe", "ignore", "pipe"], env: { PATH: "/usr/bin:/bin" } },
    );
    let stderr = "";
    tar.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    const exited = once(tar, "exit") as Promise<[number | null]>;
    let bytes = 0;
    const limit = this.maxBytes;
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        bytes += chunk.length;
        if (bytes > limit) {
          done(
            new BerthError(
              "ValidationException",
              `The upload is larger than ${limit} bytes (maxArtifactBytes)`,
              { reason: "FieldValidationFailed" },
            ),
          );
          return;
        }
        done(null, chunk);
      },
    });
    try {
      await pipeline(archive, counter, tar.stdin);
    } catch (error) {
      tar.kill("SIGKILL");
      if (BerthError.isInstance(error)) throw error;
      // tar stopped reading: its own message (below) says why.
    }
    const [code] = await exited;
    if (code !== 0) {
      throw new BerthError(
        "ValidationException",
        `The upload is not a readable .tar.gz: ${stderr.trim() || `tar exited with ${String(code)}`}`,
        { reason: "CannotParse" },
      );
    }
    return bytes;
  }
}

/**
 * Code is read by each session's own uid: make it readable (and folders enterable) by all, as
 * the user that unpacked it. An archive made from a 0600 file would otherwise start no agent.
 */
async function asUnpacker(command: string, args: string[]): Promise<void> {
  const child = spawn(
    "setpriv",
    [`--reuid=${unpackUid}`, `--regid=${unpackUid}`, "--clear-groups", command, ...args],
    { stdio: "ignore", env: { PATH: "/usr/bin:/bin" } },
  );
  const [code] = (await once(child, "exit")) as [number | null];
  if (code !== 0) throw new Error(`${command} ${args.join(" ")} failed (${String(code)})`);
}

function taken(location: { bucket: string; prefix: string }): BerthError {
  return new BerthError(
    "ConflictException",
    `s3://${location.bucket}/${location.prefix} already exists; upload to a new prefix (runtime versions keep using the code they were created with)`,
  );
}

async function countFiles(directory: string): Promise<number> {
  let count = 0;
  for (const entry of await readdir(directory, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) count += 1;
  }
  return count;
}
