import type { CodeLocation, CodeSource } from "./code-source.ts";

/**
 * Code from Berth's local artifact store when it holds the artifact (`<artifacts>/<bucket>/
 * <prefix>`), else from the object store. Local first: a version made before the object store
 * was set names a local bucket ("agents") that may well exist on AWS as someone else's; asked
 * there, it would be refused (403) or, worse, run a stranger's code, and Berth would send its
 * requests to a bucket it has nothing to do with.
 */
export class CodeWithFallback implements CodeSource {
  private readonly local: CodeSource;
  private readonly objectStore: CodeSource;

  constructor(local: CodeSource, objectStore: CodeSource) {
    this.local = local;
    this.objectStore = objectStore;
  }

  location(artifact: CodeLocation): string {
    return this.objectStore.location(artifact);
  }

  notFound(artifact: CodeLocation): string {
    const local = this.localPlace(artifact);
    if (local === undefined) return this.objectStore.notFound(artifact);
    return `Code artifact ${this.location(artifact)} not found in the local artifact store (${local}), looked in first, nor in the object store: put the code's .zip in the object store (or name the object and version that hold it)`;
  }

  /**
   * The local artifact when it is there, its failure included: a local artifact that cannot be
   * used is reported, not looked for in a bucket that may be a stranger's.
   */
  async folder(artifact: CodeLocation): Promise<string | undefined> {
    const local =
      this.localPlace(artifact) === undefined ? undefined : await this.local.folder(artifact);
    return local ?? this.objectStore.folder(artifact);
  }

  /**
   * Where the local store would hold the artifact; undefined for a location that leaves it (an
   * S3 key may hold `..`): such code can only be in the object store.
   */
  private localPlace(artifact: CodeLocation): string | undefined {
    try {
      return this.local.location(artifact);
    } catch {
      return undefined;
    }
  }
}
