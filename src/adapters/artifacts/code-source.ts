/** Where a version's code is: codeConfiguration.code.s3 as the version recorded it. */
export interface CodeLocation {
  bucket: string;
  /** A folder or a file (an object key, in S3's terms). */
  prefix: string;
  versionId?: string | undefined;
}

/**
 * Where code artifacts come from: Berth's local artifact store (CodeFolders), or the object
 * store (ObjectStoreCode). Either turns a version's code location into a folder to run it from.
 */
export interface CodeSource {
  /** Where the artifact is looked for, for messages: a local path, or s3://bucket/key. */
  location(artifact: CodeLocation): string;
  /** Why a version fails when its artifact is not there: where it was looked for, what to put. */
  notFound(artifact: CodeLocation): string;
  /**
   * The folder to mount (sealed, no symbolic link out of it); undefined when the artifact does
   * not exist. Throws a BerthError a caller can pass on when the artifact cannot be used.
   */
  folder(artifact: CodeLocation): Promise<string | undefined>;
}
