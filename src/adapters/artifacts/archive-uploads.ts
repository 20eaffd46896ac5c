import { spawn } from "node:child_process";
import { once } from "node:events";
import { chownSync, existsSync, mkdirSync } from "node:fs";
import { mkdtemp, readdir, rename, rm } from "node:fs/promises";
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
      // Sessions read code as their own uids: everything readable, every folder enterable (the
      // staging folder itself included). A 0600 entry point would otherwise start no agent.
      const chmod = asUnpacker(["chmod", "-R", "a+rX", staging]);
      chmod.stdin.end();
      const made = await outcome(chmod);
      if (made.code !== 0) throw new Error(`chmod of the upload failed: ${made.stderr}`);
      const files = await countFiles(staging);
      if (existsSync(target)) throw taken(location);
      await rename(staging, target);
      return { files, bytes };
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      throw error;
    }
  }

  private async untar(archive: Readable, directory: string): Promise<number> {
    const tar = asUnpacker([
      "tar",
      "-xzf",
      "-",
      "-C",
      directory,
      "--no-same-owner",
      "--no-same-permissions",
    ]);
    const exited = outcome(tar);
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
    const { code, stderr } = await exited;
    if (code !== 0) {
      throw new BerthError(
        "ValidationException",
        `The upload is not a readable .tar.gz: ${stderr || `tar exited with ${String(code)}`}`,
        { reason: "CannotParse" },
      );
    }
    return bytes;
  }
}

/** Starts a command as the unprivileged unpacking user, stdin and stderr piped. */
function asUnpacker(command: string[]) {
  return spawn(
    "setpriv",
    [`--reuid=${unpackUid}`, `--regid=${unpackUid}`, "--clear-groups", ...command],
    { stdio: ["pipe", "ignore", "pipe"], env: { PATH: "/usr/bin:/bin" } },
  );
}

/** Its exit code and what it said on stderr. */
async function outcome(child: ReturnType<typeof asUnpacker>) {
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const [code] = (await once(child, "close")) as [number | null]; // close: stderr fully read
  return { code, stderr: stderr.trim() };
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
