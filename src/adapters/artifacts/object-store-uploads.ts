import { createReadStream, createWriteStream } from "node:fs";
import { join } from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ArtifactUploader, UploadedCode } from "../../core/artifact-upload.ts";
import { BerthError } from "../../core/errors.ts";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  type ArtifactObjects,
  type BucketObject,
} from "../../core/object-store.ts";
import { taken, tooLarge } from "./archive-uploads.ts";
import { ByteLimit } from "../host/byte-limit.ts";
import { untarGz, type UnpackLimits } from "./bounded-unpack.ts";
import { sha256Of, type UnpackedArchives } from "./unpacked-archives.ts";

/**
 * Uploaded code (a .tar.gz, as `berth runtimes create --code DIR` sends it) kept in the object
 * store, as `<prefix>code/<upload bucket>/<upload prefix>.tar.gz` in Berth's bucket, so that it
 * outlives this machine (neither name holds a "/", so two locations never share a key). It is checked first exactly as local uploads are (unpacked as nobody, within the
 * limits); the unpacked tree is kept in the code cache, so the version that names the object
 * next finds it unpacked. An object already there is never replaced: versions that use it would
 * change under their sessions.
 */
export class ObjectStoreUploads implements ArtifactUploader {
  private readonly objects: ArtifactObjects;
  private readonly archives: UnpackedArchives;
  private readonly limits: UnpackLimits & { maxBytes: number };

  constructor(
    objects: ArtifactObjects,
    archives: UnpackedArchives,
    limits: UnpackLimits & { maxBytes: number },
  ) {
    this.objects = objects;
    this.archives = archives;
    this.limits = limits;
  }

  async unpack(
    location: { bucket: string; prefix: string },
    archive: Readable,
  ): Promise<{ files: number; bytes: number; s3: UploadedCode }> {
    const { bucket, keyPrefix } = this.objects.uploadLocation;
    const object: BucketObject = {
      bucket,
      key: `${keyPrefix}${location.bucket}/${location.prefix}.tar.gz`,
    };
    const workspace = await this.archives.workspace();
    try {
      const copy = join(workspace.dir, "archive.tar.gz");
      const bytes = await this.receive(archive, copy);
      await untarGz(createReadStream(copy), workspace.tree, this.limits, "The upload");
      // Kept first: it is only a cache, keyed by content, whether the object is stored or not.
      const { files } = await this.archives.keep(
        workspace.tree,
        await sha256Of(createReadStream(copy)),
      );
      const { versionId } = await this.store(object, copy, location);
      return {
        files,
        bytes,
        s3: { bucket, prefix: object.key, ...(versionId === undefined ? {} : { versionId }) },
      };
    } finally {
      await workspace.remove();
    }
  }

  /** Writes the request body to `copy`, within maxBytes; returns how many bytes came. */
  private async receive(archive: Readable, copy: string): Promise<number> {
    const limit = new ByteLimit(this.limits.maxBytes, () => tooLarge(this.limits.maxBytes));
    // Piped in, not part of the pipeline: a failure must not destroy the request body (and with
    // it the connection the answer goes back on); the wire layer discards what is left of it.
    const entry = new PassThrough();
    archive.pipe(entry);
    archive.once("error", (error) => entry.destroy(error));
    try {
      await pipeline(entry, limit, createWriteStream(copy, { flags: "wx", mode: 0o600 }));
      return limit.bytes;
    } finally {
      archive.unpipe(entry);
    }
  }

  /**
   * Puts the archive at `object`, unless something is there already: then the conflict names
   * the `requested` location, the one the caller knows.
   */
  private async store(
    object: BucketObject,
    copy: string,
    requested: { bucket: string; prefix: string },
  ): Promise<{ versionId: string | undefined }> {
    try {
      return await this.objects.upload(object, copy, { ifAbsent: true });
    } catch (error) {
      if (error instanceof PreconditionFailedError) throw taken(requested);
      if (error instanceof ObjectStoreUnavailableError) {
        throw new BerthError(
          "InternalServerException",
          `The upload was checked but not stored: ${error.message}; retry once the object store answers`,
          { cause: error },
        );
      }
      throw error;
    }
  }
}
