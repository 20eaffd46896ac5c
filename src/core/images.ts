import type { Readable } from "node:stream";

/** One container image in Berth's cache. */
export interface ImageSummary {
  digest: string;
  /** Names it was loaded under (`berth images load`); pulled images have none. */
  names: string[];
  /** Where it came from: the reference it was first pulled or loaded as. */
  source: string;
  /** Bytes of its unpacked files. */
  sizeBytes: number;
  lastUsedAt: string;
}

/** The operator's view of the image cache (Berth's own API; AWS has no such operations). */
export interface ImageCatalog {
  /** Loads an OCI image layout archive and names it `reference`. Throws ArtifactProblem for
   * an archive or reference that cannot be used. */
  load(archive: Readable, reference: string, signal: AbortSignal): Promise<ImageSummary>;
  list(): Promise<ImageSummary[]>;
  /** Drops a loaded name; the image goes at the next garbage collection unless used. */
  unname(reference: string): Promise<boolean>;
}
