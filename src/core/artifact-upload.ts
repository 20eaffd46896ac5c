import type { Readable } from "node:stream";
import { BerthError } from "./errors.ts";

/**
 * Where uploaded code goes: unpacked into the local artifact store as s3://bucket/prefix, or,
 * with an object store, checked by unpacking it and kept there as an object.
 */
export interface ArtifactUploader {
  /**
   * Takes a .tar.gz stream; throws if the location is taken, or the archive is too large as
   * sent or once unpacked (bytes or entries). Answers with what it held and the code location a
   * runtime names (codeConfiguration.code.s3), which need not be the location asked for.
   */
  unpack(
    location: { bucket: string; prefix: string },
    archive: Readable,
  ): Promise<{ files: number; bytes: number; s3: UploadedCode }>;
}

/** codeConfiguration.code.s3 for uploaded code. */
export interface UploadedCode {
  bucket: string;
  prefix: string;
  /** Set when the object store's bucket keeps versions. */
  versionId?: string;
}

const bucketPattern = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const prefixPattern = /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,199}$/;

/** Checks an upload's target; a prefix is one folder name, so uploads never nest or escape. */
export function readUploadLocation(
  bucket: string,
  prefix: string,
): {
  bucket: string;
  prefix: string;
} {
  const problems: { name: string; message: string }[] = [];
  if (!bucketPattern.test(bucket))
    problems.push({
      name: "bucket",
      message: "must be 3-63 lowercase letters, digits, '.' or '-'",
    });
  if (!prefixPattern.test(prefix))
    problems.push({
      name: "prefix",
      message: "must be 1-200 letters, digits, '.', '_' or '-', starting with a letter or digit",
    });
  if (problems.length > 0) {
    throw new BerthError(
      "ValidationException",
      `Invalid upload location: ${problems.map((problem) => `${problem.name} ${problem.message}`).join("; ")}`,
      { reason: "FieldValidationFailed", fieldList: problems },
    );
  }
  return { bucket, prefix };
}
