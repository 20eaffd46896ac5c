import { createHash, randomUUID } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { rm } from "node:fs/promises";
import { PassThrough, Transform, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip, createZstdDecompress } from "node:zlib";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { ImageRootNeeds } from "../../core/sandbox.ts";
import {
  launchOf,
  requireHostPlatform,
  type ImageConfigDocument,
  type ImageLaunch,
} from "./image-config.ts";
import { ImageRoot } from "./image-root.ts";
import { verifyDigest, type Descriptor, type ImageManifest } from "./manifests.ts";
import { RootUnpacker } from "./root-unpacker.ts";

/** Where an image's blobs come from: a registry, or a local OCI layout. */
export interface BlobSource {
  /** The image as the user named it, for messages. */
  readonly shown: string;
  /** A blob's bytes as they come; the store verifies them. */
  open(descriptor: Descriptor, signal: AbortSignal): Promise<Readable>;
}

/** One image in the store: a platform manifest and the unpacked root it runs on. */
export interface ImageRecord {
  /** The manifest's digest: the image's identity, what versions pin. */
  digest: string;
  /** The unpacked root's key: a hash of the layers' uncompressed digests, shared by images
   * with the same layers. */
  rootKey: string;
  launch: ImageLaunch;
  sizeBytes: number;
  /** Where it came from (registry references, or "loaded"). */
  source: string;
}

export interface ImageStoreOptions {
  /** Largest unpacked image accepted (file contents and tar metadata). */
  maxImageBytes: number;
  /** Largest config, and largest PAX or long-name member of a layer: both are held whole. */
  maxImageMetadataBytes: number;
  /** What the sandbox driver mounts over in a root (SandboxDriver.imageRootNeeds): every root
   * unpacked here is made to hold it. */
  rootNeeds: ImageRootNeeds;
}

const layerMediaTypes: Record<string, "gzip" | "zstd" | "none"> = {
  "application/vnd.oci.image.layer.v1.tar": "none",
  "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
  "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
};

/**
 * The image cache, content-addressed, under one root-only folder:
 *   roots/<key>/          unpacked image roots, shared by every image with the same layers
 *   roots/<key>.json      a root's size
 *   images/<hex>.json     one record per manifest digest (its launch settings, its root key)
 *   names/<hex>.json      references loaded from local files (`berth images load`)
 *   staging/              unpacking in progress, and roots being removed; cleared at start
 * A root is renamed into place only once every layer is unpacked and verified, and a record is
 * written only after its root: whatever a crash leaves is either complete or in staging. An
 * image whose record exists costs nothing to pull again. A root leaves `roots/` in one rename
 * before its files are removed, so nothing ever finds a root half removed.
 */
export class ImageStore {
  private readonly dir: string;
  private readonly options: ImageStoreOptions;
  /** Roots being unpacked, so two versions pulling the same image share the work. */
  private readonly unpacking = new Map<string, Promise<number>>();
  /**
   * Roots an install is using, from before it looks for the root until its record is written
   * (with how many installs): garbage collection leaves them alone, since no record names them yet.
   */
  private readonly claimedRoots = new Map<string, number>();

  constructor(dir: string, options: ImageStoreOptions) {
    this.dir = dir;
    this.options = options;
    for (const folder of ["roots", "images", "names"])
      mkdirSync(join(dir, folder), { recursive: true, mode: 0o700 });
    rmSync(join(dir, "staging"), { recursive: true, force: true });
    mkdirSync(join(dir, "staging"), { mode: 0o700 });
  }

  /** The record for a manifest digest, if the image is here and complete. */
  record(digest: string): ImageRecord | undefined {
    const path = this.recordPath(digest);
    try {
      const record = JSON.parse(readFileSync(path, "utf8")) as ImageRecord;
      return existsSync(this.rootPath(record)) ? record : undefined;
    } catch {
      return undefined;
    }
  }

  rootPath(record: ImageRecord): string {
    return join(this.dir, "roots", record.rootKey);
  }

  /** Marks an image as used now (garbage collection spares recently used images). */
  touch(digest: string): void {
    const now = new Date();
    try {
      utimesSync(this.recordPath(digest), now, now);
    } catch {
      // removed meanwhile: the next pull brings it back
    }
  }

  /**
   * Adds an image from `source`: verifies its config, unpacks and verifies every layer (unless
   * an image with the same layers is here already) and records it.
   */
  async install(
    digest: string,
    manifest: ImageManifest,
    source: BlobSource,
    signal: AbortSignal,
  ): Promise<ImageRecord> {
    const existing = this.record(digest);
    if (existing !== undefined) {
      this.touch(digest);
      return existing;
    }
    const configBytes = await readAll(
      await source.open(manifest.config, signal),
      manifest.config.size,
      this.options.maxImageMetadataBytes,
      `The config of ${source.shown}`,
    );
    verifyDigest(configBytes, manifest.config.digest, `the config of ${source.shown}`);
    const config = JSON.parse(configBytes.toString("utf8")) as ImageConfigDocument;
    requireHostPlatform(config, source.shown);
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length) {
      throw new ArtifactProblem(
        `${source.shown} is inconsistent: its manifest has ${manifest.layers.length} layers, its config ${diffIds.length}`,
      );
    }
    const rootKey = createHash("sha256").update(diffIds.join("\n")).digest("hex");
    const releaseRoot = this.claimRoot(rootKey);
    try {
      const sizeBytes = await this.unpackedRoot(rootKey, manifest.layers, diffIds, source, signal);
      // The launch comes from this image's config: images with the same layers share a root but
      // may differ in Entrypoint, Env, WorkingDir or User.
      const root = new ImageRoot(join(this.dir, "roots", rootKey));
      const launch = launchOf(config, root, source.shown);
      root.ensureFolder(launch.workingDir);
      const record: ImageRecord = { digest, rootKey, launch, sizeBytes, source: source.shown };
      writeAtomically(this.recordPath(digest), JSON.stringify(record, null, 2));
      return record;
    } finally {
      releaseRoot();
    }
  }

  /** Names a loaded image (`reference` -> digest) until it is deleted. */
  name(reference: string, digest: string): void {
    writeAtomically(this.namePath(reference), JSON.stringify({ reference, digest }));
  }

  /** The digest a loaded image's reference names, if any. */
  named(reference: string): string | undefined {
    try {
      return (JSON.parse(readFileSync(this.namePath(reference), "utf8")) as { digest: string })
        .digest;
    } catch {
      return undefined;
    }
  }

  unname(reference: string): boolean {
    const path = this.namePath(reference);
    if (!existsSync(path)) return false;
    rmSync(path);
    return true;
  }

  /** Every image here with its names and when it was last used. */
  list(): (ImageRecord & { names: string[]; lastUsedAt: string })[] {
    const names = this.names();
    return readdirSync(join(this.dir, "images"))
      .filter((file) => file.endsWith(".json"))
      .flatMap((file) => {
        const record = this.record(`sha256:${file.slice(0, -5)}`);
        if (record === undefined) return [];
        const lastUsedAt = statSync(this.recordPath(record.digest)).mtime.toISOString();
        const named = names
          .filter((entry) => entry.digest === record.digest)
          .map((entry) => entry.reference);
        return [{ ...record, names: named, lastUsedAt }];
      });
  }

  /**
   * Removes images that nothing needs: not pinned by a version (`pinned`), not named by a load,
   * and unused for `retentionMs`; then every unpacked root no remaining image uses. Resolves
   * with the removed images' digests once their roots' files are gone.
   */
  async collectGarbage(pinned: Set<string>, retentionMs: number, nowMs: number): Promise<string[]> {
    const { removed, setAside } = this.setAsideGarbage(pinned, retentionMs, nowMs);
    // Off the event loop: a root may be gigabytes in many thousands of files.
    await Promise.all(setAside.map((folder) => rm(folder, { recursive: true, force: true })));
    return removed;
  }

  /**
   * The decisions of collectGarbage and the moves that carry them out, all synchronous: no
   * install can run between finding a root unused and moving it out of `roots/` (where the
   * next install of its layers no longer finds it and unpacks it anew). Returns the removed
   * images and the set-aside roots left to delete.
   */
  private setAsideGarbage(
    pinned: Set<string>,
    retentionMs: number,
    nowMs: number,
  ): { removed: string[]; setAside: string[] } {
    const named = new Set(this.names().map((entry) => entry.digest));
    const removed: string[] = [];
    for (const image of this.list()) {
      if (pinned.has(image.digest) || named.has(image.digest)) continue;
      if (nowMs - Date.parse(image.lastUsedAt) < retentionMs) continue;
      rmSync(this.recordPath(image.digest), { force: true });
      removed.push(image.digest);
    }
    const usedRoots = new Set(this.list().map((image) => image.rootKey));
    const setAside: string[] = [];
    for (const entry of readdirSync(join(this.dir, "roots"))) {
      const key = entry.replace(/\.json(\.partial)?$/, "");
      if (usedRoots.has(key) || this.claimedRoots.has(key)) continue;
      const path = join(this.dir, "roots", entry);
      if (entry === key) {
        const aside = join(this.dir, "staging", `removed-${randomUUID()}`);
        renameSync(path, aside);
        setAside.push(aside);
      } else {
        rmSync(path, { force: true }); // its size record: one small file
      }
    }
    return { removed, setAside };
  }

  /** Marks a root as in use by an install until the returned function is called. */
  private claimRoot(rootKey: string): () => void {
    this.claimedRoots.set(rootKey, (this.claimedRoots.get(rootKey) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.claimedRoots.get(rootKey) ?? 1) - 1;
      if (left === 0) this.claimedRoots.delete(rootKey);
      else this.claimedRoots.set(rootKey, left);
    };
  }

  /** The unpacked root of these layers (unpacking them unless they are here or under way);
   * resolves with its size in bytes. */
  private unpackedRoot(
    rootKey: string,
    layers: Descriptor[],
    diffIds: string[],
    source: BlobSource,
    signal: AbortSignal,
  ): Promise<number> {
    const root = join(this.dir, "roots", rootKey);
    if (existsSync(root)) {
      const { sizeBytes } = JSON.parse(readFileSync(`${root}.json`, "utf8")) as {
        sizeBytes: number;
      };
      return Promise.resolve(sizeBytes);
    }
    let unpacking = this.unpacking.get(rootKey);
    if (unpacking === undefined) {
      unpacking = this.unpack(root, layers, diffIds, source, signal);
      this.unpacking.set(rootKey, unpacking);
      void unpacking.finally(() => this.unpacking.delete(rootKey)).catch(() => undefined);
    }
    return unpacking;
  }

  private async unpack(
    root: string,
    layers: Descriptor[],
    diffIds: string[],
    source: BlobSource,
    signal: AbortSignal,
  ): Promise<number> {
    const staging = join(this.dir, "staging", randomUUID());
    const unpacker = new RootUnpacker({
      root: staging,
      maxImageBytes: this.options.maxImageBytes,
      maxMetadataBytes: this.options.maxImageMetadataBytes,
      rootNeeds: this.options.rootNeeds,
    });
    try {
      for (const [index, layer] of layers.entries()) {
        await applyLayer(unpacker, layer, diffIds[index] ?? "", source, signal);
      }
      const sizeBytes = await unpacker.finish();
      // Its size first: a root is complete once it is in place.
      writeAtomically(`${root}.json`, JSON.stringify({ sizeBytes }));
      renameSync(staging, root);
      return sizeBytes;
    } finally {
      await unpacker.close();
      // Off the event loop too: a failed unpack may leave gigabytes of files behind.
      await rm(staging, { recursive: true, force: true });
    }
  }

  private names(): { reference: string; digest: string }[] {
    return readdirSync(join(this.dir, "names")).flatMap((file) => {
      try {
        return [
          JSON.parse(readFileSync(join(this.dir, "names", file), "utf8")) as {
            reference: string;
            digest: string;
          },
        ];
      } catch {
        return [];
      }
    });
  }

  private recordPath(digest: string): string {
    return join(this.dir, "images", `${digest.replace(/^sha256:/, "")}.json`);
  }

  private namePath(reference: string): string {
    return join(this.dir, "names", `${createHash("sha256").update(reference).digest("hex")}.json`);
  }
}

/**
 * Streams one layer from its source through decompression into the root: its compressed bytes
 * are checked against the manifest's digest and size, its tar against the config's diff_id.
 */
async function applyLayer(
  unpacker: RootUnpacker,
  layer: Descriptor,
  diffId: string,
  source: BlobSource,
  signal: AbortSignal,
): Promise<void> {
  const compression = layerMediaTypes[layer.mediaType];
  if (compression === undefined) {
    throw new ArtifactProblem(
      `${source.shown} has a layer of a type Berth cannot unpack: ${layer.mediaType}`,
    );
  }
  const compressed = createHash("sha256");
  let received = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      received += chunk.length;
      compressed.update(chunk);
      done(null, chunk);
    },
  });
  const decompress =
    compression === "gzip"
      ? createGunzip()
      : compression === "zstd"
        ? createZstdDecompress()
        : new PassThrough();
  let tarDigest: string;
  try {
    const tar = unpacker.startLayer();
    await pipeline(await source.open(layer, signal), counter, decompress, tar, { signal });
    tarDigest = await unpacker.endLayer();
  } catch (error) {
    if (error instanceof ArtifactProblem || signal.aborted) throw error;
    throw new ArtifactProblem(
      `Layer ${layer.digest} of ${source.shown} could not be unpacked: ${(error as Error).message}`,
    );
  }
  const actual = `sha256:${compressed.digest("hex")}`;
  if (actual !== layer.digest || received !== layer.size) {
    throw new ArtifactProblem(
      `Digest mismatch: layer ${layer.digest} of ${source.shown} arrived as ${actual} (${received} of ${layer.size} bytes); the registry's copy is corrupt or was changed`,
    );
  }
  if (tarDigest !== diffId) {
    throw new ArtifactProblem(
      `Digest mismatch: layer ${layer.digest} of ${source.shown} unpacks to ${tarDigest}, but the image config says ${diffId}`,
    );
  }
}

/** Reads a small blob whole, refusing more than its descriptor's size or `maxBytes`. */
async function readAll(
  stream: Readable,
  size: number,
  maxBytes: number,
  what: string,
): Promise<Buffer> {
  if (size > maxBytes) {
    stream.destroy();
    throw new ArtifactProblem(
      `${what} is ${size} bytes, larger than the setting maxImageMetadataBytes (${maxBytes})`,
    );
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    total += chunk.length;
    if (total > size) {
      stream.destroy();
      throw new ArtifactProblem(`a blob is larger than its manifest says (${size} bytes)`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function writeAtomically(path: string, text: string): void {
  writeFileSync(`${path}.partial`, text, { mode: 0o600 });
  renameSync(`${path}.partial`, path);
}
