import { existsSync, mkdirSync } from "node:fs";
import { rename } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { ArtifactUploader, UploadedCode } from "../../core/artifact-upload.ts";
import { BerthError } from "../../core/errors.ts";
import { ByteLimit } from "../host/byte-limit.ts";
import { untarGz, type UnpackLimits } from "./bounded-unpack.ts";
import { sealTree } from "./sealed-tree.ts";
import { UnpackWorkspace } from "./unpack-workspace.ts";

/**
 * Uploaded code (a .tar.gz, as `berth runtimes create --code DIR` sends it), unpacked into
 * `<artifacts>/<bucket>/<prefix>`. tar runs as nobody in a private workspace, so an archive
 * cannot create device nodes, setuid files or files owned by anyone else, and stops at the
 * unpacked limits; the result is then sealed (root's, read-only for others) and moved into
 * place. An existing location is never replaced: versions that use it would change under their
 * sessions.
 */
export class ArchiveUploads implements ArtifactUploader {
  private readonly artifactsDir: string;
  private readonly limits: UnpackLimits & { maxBytes: number };

  constructor(artifactsDir: string, limits: UnpackLimits & { maxBytes: number }) {
    this.artifactsDir = artifactsDir;
    this.limits = limits;
    UnpackWorkspace.clearLeftovers(artifactsDir);
  }

  async unpack(
    location: { bucket: string; prefix: string },
    archive: Readable,
  ): Promise<{ files: number; bytes: number; s3: UploadedCode }> {
    const bucketDir = join(this.artifactsDir, location.bucket);
    const target = join(bucketDir, location.prefix);
    if (existsSync(target)) throw taken(location);
    mkdirSync(bucketDir, { recursive: true, mode: 0o755 });
    const workspace = await UnpackWorkspace.create(this.artifactsDir);
    try {
      const compressed = new ByteLimit(this.limits.maxBytes, () => tooLarge(this.limits.maxBytes));
      await untarGz(archive, workspace.tree, this.limits, "The upload", [compressed]);
      const files = await sealTree(workspace.tree);
      if (existsSync(target)) throw taken(location);
      await rename(workspace.tree, target);
      return { files, bytes: compressed.bytes, s3: { ...location } };
    } finally {
      await workspace.remove();
    }
  }
}

/** An upload past maxArtifactBytes. */
export function tooLarge(maxBytes: number): BerthError {
  return new BerthError(
    "ValidationException",
    `The upload is larger than ${maxBytes} bytes (maxArtifactBytes)`,
    { reason: "FieldValidationFailed" },
  );
}

/** An upload to a location that holds code already. */
export function taken(location: { bucket: string; prefix: string }): BerthError {
  return new BerthError(
    "ConflictException",
    `s3://${location.bucket}/${location.prefix} already exists; upload to a new prefix (runtime versions keep using the code they were created with)`,
  );
}
