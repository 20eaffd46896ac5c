import { randomUUID } from "node:crypto";
import {
  closeSync,
  createReadStream,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  writeSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { Writable, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import {
  formatImageReference,
  parseImageReference,
  type ImageReference,
} from "../../core/image-reference.ts";
import type { RuntimeVersionRecord } from "../../core/model.ts";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { LaunchPlan } from "../../core/sessions.ts";
import type { ImageCatalog, ImageSummary } from "../../core/images.ts";
import type { ImageStore, BlobSource } from "./image-store.ts";
import {
  choosePlatform,
  readManifest,
  sha256Digest,
  verifyDigest,
  type Descriptor,
  type ImageManifest,
} from "./manifests.ts";
import type { RegistryClient } from "./registry-client.ts";
import { TarReader, type EntryBody, type TarEntry } from "./tar-reader.ts";

type ManifestReader = (reference: string) => Promise<{ mediaType: string; body: Buffer }>;

/**
 * Container images as agent artifacts: pulled from registries (or loaded from local files) into
 * the image store when a version is prepared, pinned by digest, and turned into launch plans
 * for the sessions of that version.
 */
export class ContainerImages implements ImageCatalog {
  private readonly store: ImageStore;
  private readonly registry: RegistryClient;
  private readonly stagingDir: string;
  /** Largest PAX or long-name member of a loaded archive (see maxImageMetadataBytes). */
  private readonly maxMetadataBytes: number;

  constructor(options: {
    store: ImageStore;
    registry: RegistryClient;
    stagingDir: string;
    maxMetadataBytes: number;
  }) {
    this.store = options.store;
    this.registry = options.registry;
    this.stagingDir = options.stagingDir;
    this.maxMetadataBytes = options.maxMetadataBytes;
  }

  /**
   * Makes `uri`'s image available here and returns its manifest digest. A name loaded from a
   * local file wins over the registry; an image already here costs one manifest request.
   */
  async pull(uri: string, signal: AbortSignal): Promise<string> {
    const loaded = this.store.named(uri);
    if (loaded !== undefined && this.store.record(loaded) !== undefined) {
      this.store.touch(loaded);
      return loaded;
    }
    const image = requireReference(uri);
    const { digest, manifest } = await resolveImage(
      (reference) => this.registry.manifest(image, reference, signal),
      image.digest ?? image.tag ?? "latest",
      image.digest,
      uri,
    );
    const source: BlobSource = {
      shown: uri,
      open: (descriptor, openSignal) => this.registry.blob(image, descriptor.digest, openSignal),
    };
    await this.store.install(digest, manifest, source, signal);
    return digest;
  }

  /**
   * The launch plan of a version, its image pulled first when this cache lacks it: in a cluster
   * the version was prepared on another node. Pulled by the digest its preparation pinned, so a
   * tag moved since changes nothing.
   */
  async planPulling(version: RuntimeVersionRecord, signal: AbortSignal): Promise<LaunchPlan> {
    const digest = version.artifactDigest;
    const { artifact } = version.config;
    if (digest !== undefined && artifact.kind === "container" && !this.store.record(digest)) {
      await this.pull(pinnedTo(artifact.containerUri, digest), signal);
    }
    return this.plan(version);
  }

  /** The launch plan of a version pinned to an image by its preparation. */
  plan(version: RuntimeVersionRecord): LaunchPlan {
    const digest = version.artifactDigest;
    const record = digest === undefined ? undefined : this.store.record(digest);
    if (record === undefined) {
      throw new Error(
        `the image of version ${version.version} (${digest ?? "never pulled"}) is not in the image cache; update the runtime to pull it again`,
      );
    }
    this.store.touch(record.digest);
    const { launch } = record;
    return {
      filesystem: {
        kind: "image",
        rootfsDir: this.store.rootPath(record),
        user: launch.user,
        workingDir: launch.workingDir,
      },
      command: launch.command,
      environment: launch.environment,
      // Images without a shell fail their commands with "cannot run /bin/sh".
      shell: launch.shell ?? "/bin/sh",
    };
  }

  /**
   * Loads an image from an OCI image layout sent as a tar (`skopeo copy … oci-archive:`, a tar
   * of an OCI layout folder, or `docker save` from Docker 25 on) and names it `reference`, so
   * runtimes can use that as their containerUri without any registry.
   */
  async load(archive: Readable, reference: string, signal: AbortSignal): Promise<ImageSummary> {
    const name = requireReference(reference);
    const layout = join(this.stagingDir, `load-${randomUUID()}`);
    try {
      await extractLayout(archive, layout, this.maxMetadataBytes, signal);
      const index = readFileSync(layoutFile(layout, "index.json"));
      const { digest, manifest } = await resolveImage(
        (ref) => {
          if (ref === "index.json") return Promise.resolve({ mediaType: "", body: index });
          return Promise.resolve({
            mediaType: "",
            body: readFileSync(layoutFile(layout, blobName(ref))),
          });
        },
        "index.json",
        undefined,
        reference,
        name.tag,
      );
      const source: BlobSource = {
        shown: reference,
        open: (descriptor) =>
          Promise.resolve(createReadStream(layoutFile(layout, blobName(descriptor.digest)))),
      };
      await this.store.install(digest, manifest, source, signal);
      this.store.name(formatImageReference(name), digest);
      const loaded = (await this.list()).find((image) => image.digest === digest);
      if (loaded === undefined) throw new Error(`image ${digest} vanished while loading`);
      return loaded;
    } finally {
      // Off the event loop: the layout holds the whole archive's blobs.
      await rm(layout, { recursive: true, force: true });
    }
  }

  list(): Promise<ImageSummary[]> {
    return Promise.resolve(
      this.store.list().map((image) => ({
        digest: image.digest,
        names: image.names,
        source: image.source,
        sizeBytes: image.sizeBytes,
        lastUsedAt: image.lastUsedAt,
      })),
    );
  }

  unname(reference: string): Promise<boolean> {
    const parsed = parseImageReference(reference);
    return Promise.resolve(
      this.store.unname("problem" in parsed ? reference : formatImageReference(parsed)),
    );
  }

  /** Removes cached images nothing needs (see ImageStore.collectGarbage). */
  collectGarbage(pinned: Iterable<string>, retentionMs: number, nowMs: number): Promise<string[]> {
    return this.store.collectGarbage(new Set(pinned), retentionMs, nowMs);
  }
}

function requireReference(uri: string): ImageReference {
  const parsed = parseImageReference(uri);
  if ("problem" in parsed)
    throw new ArtifactProblem(`The image reference ${uri} ${parsed.problem}`);
  return parsed;
}

/**
 * From a tag or digest to one platform's image manifest, verifying each document against the
 * digest that named it. An index picks this host's platform (or, in a local layout, the entry
 * annotated with `tag`, else the only one).
 */
async function resolveImage(
  read: ManifestReader,
  top: string,
  topDigest: string | undefined,
  shown: string,
  tag?: string,
): Promise<{ digest: string; manifest: ImageManifest }> {
  let { mediaType, body } = await read(top);
  if (topDigest !== undefined) verifyDigest(body, topDigest, `the manifest of ${shown}`);
  let digest = topDigest ?? sha256Digest(body);
  for (let depth = 0; depth < 3; depth++) {
    const document = readManifest(body, mediaType, shown);
    if (document.kind === "image") return { digest, manifest: document };
    const chosen = chooseEntry(document.manifests, shown, depth === 0 ? tag : undefined);
    ({ mediaType, body } = await read(chosen.digest));
    verifyDigest(body, chosen.digest, `a manifest of ${shown}`);
    digest = chosen.digest;
  }
  throw new ArtifactProblem(`${shown} nests image indexes too deeply`);
}

function chooseEntry(entries: Descriptor[], shown: string, tag: string | undefined): Descriptor {
  const annotated = (entry: Descriptor) =>
    (entry as { annotations?: Record<string, string> }).annotations?.[
      "org.opencontainers.image.ref.name"
    ];
  const named = tag === undefined ? undefined : entries.find((entry) => annotated(entry) === tag);
  if (named !== undefined) return named;
  if (entries.length === 1 && entries[0] !== undefined && entries[0].platform === undefined)
    return entries[0];
  return choosePlatform(entries, shown);
}

const layoutPath = /^(?:\.\/)?(index\.json|oci-layout|blobs\/sha256\/[a-f0-9]{64})$/;

/**
 * Writes the regular files of an OCI layout archive into `folder`; everything else (links,
 * devices, other paths) is ignored, so nothing can land outside it.
 */
async function extractLayout(
  archive: Readable,
  folder: string,
  maxMetadataBytes: number,
  signal: AbortSignal,
): Promise<void> {
  mkdirSync(join(folder, "blobs", "sha256"), { recursive: true, mode: 0o700 });
  const onEntry = (entry: TarEntry): EntryBody | undefined => {
    const match = layoutPath.exec(entry.path);
    if (entry.type !== "file" || match?.[1] === undefined) return undefined;
    const descriptor = openSync(join(folder, match[1]), "w", 0o600);
    return {
      write: (chunk) => {
        for (let offset = 0; offset < chunk.length;) offset += writeSync(descriptor, chunk, offset);
      },
      end: () => undefined,
      close: () => {
        closeSync(descriptor);
      },
    };
  };
  const reader = new TarReader({ onEntry, maxMetadataBytes });
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      try {
        reader.feed(chunk);
        done();
      } catch (error) {
        done(error as Error);
      }
    },
  });
  try {
    await pipeline(archive, sink, { signal });
    reader.end();
  } catch (error) {
    throw new ArtifactProblem(`The image archive could not be read: ${(error as Error).message}`);
  } finally {
    reader.close();
  }
}

/** A file of the layout, or a problem naming what is missing. */
function layoutFile(layout: string, name: string): string {
  const path = join(layout, name);
  if (!existsSync(path)) {
    throw new ArtifactProblem(`The archive is not a complete OCI image layout: it has no ${name}`);
  }
  return path;
}

function blobName(digest: string): string {
  const match = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (match?.[1] === undefined)
    throw new ArtifactProblem(`The layout names a blob ${digest} Berth cannot read`);
  return join("blobs", "sha256", match[1]);
}

/** `uri` (NAME, NAME:TAG or NAME@DIGEST) as NAME@digest. */
export function pinnedTo(uri: string, digest: string): string {
  const [name = uri] = uri.split("@");
  const lastSlash = name.lastIndexOf("/");
  const tagColon = name.lastIndexOf(":");
  return `${tagColon > lastSlash ? name.slice(0, tagColon) : name}@${digest}`;
}
