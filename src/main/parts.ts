import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ArchiveUploads } from "../adapters/artifacts/archive-uploads.ts";
import { CodeFolders } from "../adapters/artifacts/code-folders.ts";
import { CodeWithFallback } from "../adapters/artifacts/code-with-fallback.ts";
import type { CodeSource } from "../adapters/artifacts/code-source.ts";
import { ObjectStoreCode } from "../adapters/artifacts/object-store-code.ts";
import { ObjectStoreUploads } from "../adapters/artifacts/object-store-uploads.ts";
import { UnpackedArchives } from "../adapters/artifacts/unpacked-archives.ts";
import { S3ArtifactObjects } from "../adapters/s3/artifact-objects.ts";
import type { ArtifactUploader } from "../core/artifact-upload.ts";
import { BubblewrapDriver } from "../adapters/bubblewrap/driver.ts";
import { nativeBinary } from "../adapters/host/native-binaries.ts";
import { RootMounts } from "../adapters/host/root-mounts.ts";
import { MemoryMetadataStore } from "../adapters/memory/store.ts";
import { ProcessDriver } from "../adapters/process/driver.ts";
import type { MetadataReplica } from "../adapters/sqlite/replica.ts";
import { DirectoryVolumes } from "../adapters/volumes/directory-volumes.ts";
import { LoopVolumes } from "../adapters/volumes/loop-volumes.ts";
import { ReflinkPool } from "../adapters/volumes/reflink-pool.ts";
import { ReplicatedVolumes } from "../adapters/volumes/replicated-volumes.ts";
import { sandboxUser } from "../adapters/bubblewrap/mounts.ts";
import {
  findPythonInstalls,
  pythonRuntimeVersions,
  type PythonInstalls,
} from "../config/python-installs.ts";
import type { Settings } from "../config/settings.ts";
import type { Logger } from "../core/logger.ts";
import type { SandboxDriver } from "../core/sandbox.ts";
import type { VolumeStore } from "../core/session-storage.ts";
import type { MetadataStore } from "../core/store.ts";
import type { LostOwnershipError } from "../core/replication/fenced-head.ts";
import type { ObjectStore } from "../core/object-store.ts";
import { S3ObjectStore } from "../adapters/s3/object-store.ts";
import { objectStoreConnection } from "./object-store-connection.ts";
import { openSqliteMetadata, type OpenedMetadata } from "./replicated-metadata.ts";
import { openPostgres } from "../adapters/postgres/open.ts";
import type { ClusterStore } from "../core/cluster/cluster-store.ts";
import {
  exposePythonInstalls,
  pythonsAsInstalled,
  type ExposedPythons,
} from "./python-interpreters.ts";
import { startContainerImages, type StartedContainerImages } from "./container-images.ts";
import { binaryForSandboxes, requireTraversableByOthers } from "./sandbox-host.ts";

/**
 * The parts a server is assembled from that have more than one implementation, each chosen by a
 * setting of the "parts" group. A new implementation is one entry in a table below plus a green
 * contract suite under test/contracts/.
 */
export interface BerthParts {
  store: MetadataStore;
  driver: SandboxDriver;
  volumes: VolumeStore;
  /** The container image cache (its pulls, and its garbage collection on a timer). */
  images: StartedContainerImages;
  /** Code artifacts: where uploads land and versions' code folders are unpacked. */
  artifacts: { folders: CodeSource; uploads: ArtifactUploader };
  /**
   * Where session storage, code and metadata are kept beyond this machine (objectStoreUrl);
   * undefined when everything stays on local disk.
   */
  objectStore: ObjectStore | undefined;
  /** What the nodes of a cluster share (databaseUrl); undefined for a lone Berth. */
  cluster: ClusterStore | undefined;
  /**
   * Holders known to be gone, whose volumes are taken at once: filled by the metadata takeover
   * and, in a cluster, with the nodes whose lease ran out.
   */
  goneHolders: Set<string>;
  /**
   * The metadata database's replication to the object store (SQLite with an object store);
   * closed after the store, for a last snapshot.
   */
  metadataReplica: MetadataReplica | undefined;
  /** Each Python runtime's interpreter, as this driver's sandboxes reach it. */
  pythons: ExposedPythons;
  log: Logger;
  now: () => Date;
  /** Lets go of what the parts hold on the host (mount helper, Python views); after the driver. */
  release(): Promise<void>;
  /** For a start that failed: closes every part, in order, as no session ever ran. */
  abandon(): Promise<void>;
}

/** What every part shares: the logger, the clock, this Berth's node id. */
export interface SharedParts {
  log: Logger;
  now: () => Date;
  /** This Berth's name in what it shares (loadOrCreateNodeId): who holds volumes and metadata. */
  nodeId: string;
  /** Another Berth took the metadata over in the object store: this one must stop. */
  onMetadataLost?: ((error: LostOwnershipError) => void) | undefined;
}

/** What a part's factory gets besides the settings: what other parts made before it. */
interface PartTools {
  log: Logger;
  nodeId: string;
  onMetadataLost: ((error: LostOwnershipError) => void) | undefined;
  /** The object store, when the settings name one. */
  objectStore: ObjectStore | undefined;
  /**
   * Holders known to be gone: the Berth whose metadata this one took over after waiting out its
   * lease. Its volumes are taken at once. Filled once the metadata store is open.
   */
  goneHolders: Set<string>;
  /** The root mount helper, started on first need and shared by the parts that mount. */
  rootMounts: () => Promise<RootMounts>;
}

/** The metadata store and, in a cluster, what its nodes share besides. */
interface OpenedParts extends OpenedMetadata {
  cluster?: ClusterStore | undefined;
}

/** PostgreSQL when databaseUrl names one (a cluster, ADR 0008); else the metadataStore setting. */
type MetadataChoice = Settings["metadataStore"] | "postgres";
const metadataChoice = (settings: Settings): MetadataChoice =>
  settings.databaseUrl !== "" ? "postgres" : settings.metadataStore;

const metadataStores: Record<
  MetadataChoice,
  (settings: Settings, tools: PartTools) => Promise<OpenedParts>
> = {
  postgres: async (settings, tools) => {
    const opened = await openPostgres(settings.databaseUrl, {
      leaseMs: settings.nodeLeaseSeconds * 1000,
      onConnectionError: (error) => {
        tools.log.warn("a connection to PostgreSQL broke; the next query opens another", {
          error: error.message,
        });
      },
    });
    return { store: opened.metadata, replica: undefined, cluster: opened.cluster };
  },
  // With an object store: taken over there and restored first, then replicated (issue 16).
  sqlite: (settings, tools) =>
    openSqliteMetadata(settings, {
      objectStore: tools.objectStore,
      log: tools.log,
      nodeId: tools.nodeId,
      onLost: tools.onMetadataLost,
    }),
  memory: () => Promise.resolve({ store: new MemoryMetadataStore(), replica: undefined }),
};

const volumeStores: Record<
  Settings["sessionStorage"],
  (settings: Settings, tools: PartTools) => Promise<VolumeStore>
> = {
  local: async (settings, tools) => {
    requireRoot("sessionStorage=local", "it loop-mounts each volume's filesystem image");
    const mounts = await tools.rootMounts();
    const loopVolumes = (root: string): LoopVolumes =>
      new LoopVolumes(root, volumeOwner(settings) ?? 0, {
        mountImage: (image, target) => mounts.mountImage(image, target),
        unmount: (target) => mounts.unmount(target),
      });
    if (tools.objectStore === undefined) return loopVolumes(join(settings.dataDir, "storage"));
    // Kept in the object store too: the images live on a reflink pool, so that a checkpoint
    // is an instant clone (ADR 0007).
    const pool = await ReflinkPool.open(join(settings.dataDir, "storage-replicated"), {
      initialBytes: 2 * settings.sessionStorageBytes,
    });
    return new ReplicatedVolumes({
      local: loopVolumes(join(pool.path, "volumes")),
      pool,
      store: tools.objectStore,
      holder: tools.nodeId,
      settings: {
        checkpointMs: settings.sessionStorageCheckpointSeconds * 1000,
        durableWaitMs: settings.sessionStorageDurableWaitSeconds * 1000,
      },
      log: tools.log,
      // Volumes made while no object store was set are moved into the pool at their next use.
      legacyImageDir: join(settings.dataDir, "storage", "images"),
      goneHolders: tools.goneHolders,
    });
  },
  directory: (settings) =>
    Promise.resolve(
      new DirectoryVolumes(join(settings.dataDir, "storage-folders"), volumeOwner(settings)),
    ),
};

const sandboxDrivers: Record<
  Settings["sandboxDriver"],
  (settings: Settings, tools: PartTools) => Promise<SandboxDriver>
> = {
  bubblewrap: async (settings, tools) => {
    requireRoot(
      "sandboxDriver=bubblewrap",
      "each session's sandbox gets its own unprivileged host uid",
    );
    requireTraversableByOthers(
      settings.dataDir,
      "the data directory holds session folders and artifacts",
    );
    return BubblewrapDriver.create({
      runRoot: join(settings.dataDir, "sessions"),
      uidBase: settings.bubblewrapUidBase,
      maxSandboxes: settings.maxSessions,
      limits: {
        memoryBytes: settings.sessionMemoryBytes,
        pids: settings.sessionPids,
        cpus: settings.sessionCpus,
      },
      totalLimits: { memoryBytes: settings.sandboxesMemoryBytes, pids: settings.sandboxesPids },
      interpreters: {
        node: binaryForSandboxes(settings.nodeBinary, join(settings.dataDir, "interpreters")),
      },
      bridge: nativeBinary("berth-bridge"),
      mounts: await tools.rootMounts(),
      cgroupParent: settings.bubblewrapCgroupParent,
      outbound: settings.sandboxOutbound,
      allowedNetworks: settings.sandboxAllowedNetworks,
      prestartPerVersion: settings.bubblewrapPrestart,
      seccomp: settings.bubblewrapSeccomp,
      maxOutputLineBytes: settings.maxAgentOutputLineBytes,
    });
  },
  process: (settings, tools) => {
    if (process.getuid?.() === 0) {
      throw new Error(
        "sandboxDriver=process runs agents as Berth's own user, and Berth runs as root: refused (run the test-only parts as an ordinary user)",
      );
    }
    tools.log.warn(
      "SANDBOXES ARE OFF (sandboxDriver=process): agents run as plain processes of Berth's own user; for Berth's own tests only",
    );
    return Promise.resolve(
      new ProcessDriver({
        runRoot: join(settings.dataDir, "processes"),
        interpreters: { node: settings.nodeBinary },
        maxOutputLineBytes: settings.maxAgentOutputLineBytes,
      }),
    );
  },
};

/** How each driver's sandboxes reach the host's Python installs. */
const pythonExposures: Record<
  Settings["sandboxDriver"],
  (installs: PythonInstalls, settings: Settings) => ExposedPythons
> = {
  // Sandbox users cannot reach most installs: each gets a read-only view (ADR 0005).
  bubblewrap: (installs, settings) =>
    exposePythonInstalls(installs, join(settings.dataDir, "interpreters", "python")),
  // Plain processes see the host's files as they are.
  process: (installs) => pythonsAsInstalled(installs),
};

/** Implementations that give up a guarantee Berth makes and exist for its own tests. */
const testOnlyParts: { [Part in PartChoice]?: Settings[Part][] } = {
  metadataStore: ["memory"],
  sandboxDriver: ["process"],
  sessionStorage: ["directory"],
};

type PartChoice = "metadataStore" | "sandboxDriver" | "sessionStorage";

/** Settings chose test-only parts where nothing allowed them. */
export class TestPartsRefusedError extends Error {
  constructor(parts: string[]) {
    super(
      `${parts.join(", ")} exists for Berth's own tests (it gives up isolation or limits that Berth promises); choose metadataStore=sqlite, sandboxDriver=bubblewrap, sessionStorage=local`,
    );
  }
}

/**
 * Throws TestPartsRefusedError when the settings choose test-only parts the caller did not
 * allow; called before anything is written to the data directory.
 */
export function refuseTestPartsUnlessAllowed(settings: Settings, allowed: boolean): void {
  const testOnly = testOnlyPartsChosen(settings);
  if (testOnly.length > 0 && !allowed) throw new TestPartsRefusedError(testOnly);
}

/** The test-only parts these settings choose, as `name=value`. */
function testOnlyPartsChosen(settings: Settings): string[] {
  return (Object.entries(testOnlyParts) as [PartChoice, string[]][])
    .filter(([part, values]) => values.includes(settings[part]))
    .map(([part]) => `${part}=${settings[part]}`);
}

/**
 * Builds the chosen parts; on a failure, releases those already built. Test-only parts must have
 * been allowed first (refuseTestPartsUnlessAllowed).
 */
export async function assembleParts(
  settings: Settings,
  { log, now, nodeId, onMetadataLost }: SharedParts,
): Promise<BerthParts> {
  const testOnly = testOnlyPartsChosen(settings);
  if (testOnly.length > 0) log.warn("running on test-only parts", { parts: testOnly });
  let mounts: Promise<RootMounts> | undefined;
  const connection = objectStoreConnection(settings);
  const objectStore = connection === undefined ? undefined : new S3ObjectStore(connection);
  const tools: PartTools = {
    log,
    nodeId,
    onMetadataLost,
    objectStore,
    goneHolders: new Set(),
    rootMounts: () =>
      (mounts ??= RootMounts.start(join(settings.dataDir, "mount-helper.sock"), settings.dataDir)),
  };
  const release = async (): Promise<void> => {
    if (mounts !== undefined) await (await mounts).close();
  };
  const built: Partial<Omit<BerthParts, "release">> = {};
  try {
    const metadata = await metadataStores[metadataChoice(settings)](settings, tools);
    const store = (built.store = metadata.store);
    built.cluster = metadata.cluster;
    const metadataReplica = (built.metadataReplica = metadata.replica);
    if (metadataReplica?.tookOverFrom !== undefined) {
      tools.goneHolders.add(metadataReplica.tookOverFrom);
    }
    const driver = (built.driver = await sandboxDrivers[settings.sandboxDriver](settings, tools));
    const pythons = (built.pythons = exposePythons(settings, log));
    const volumes = (built.volumes = await volumeStores[settings.sessionStorage](settings, tools));
    const artifacts = codeArtifacts(settings);
    // After the driver: image roots are unpacked with what it mounts over in them.
    const images = startContainerImages(settings, store, log, now, driver.imageRootNeeds);
    const releaseAll = async (): Promise<void> => {
      pythons.release();
      // Its volumes are detached by now (the sessions are closed): it may let go of its disk.
      await volumes.close?.();
      await release();
    };
    return {
      store,
      driver,
      volumes,
      images,
      artifacts,
      objectStore,
      metadataReplica,
      cluster: metadata.cluster,
      goneHolders: tools.goneHolders,
      pythons,
      log,
      now,
      release: releaseAll,
      abandon: async () => {
        images.stop();
        await driver.close();
        await releaseAll();
        await store.close();
        await metadata.cluster?.close();
        await metadataReplica?.close();
      },
    };
  } catch (error) {
    built.pythons?.release();
    await built.volumes?.close?.();
    await built.driver?.close();
    await built.store?.close();
    await built.cluster?.close();
    await built.metadataReplica?.close();
    await release();
    throw error;
  }
}

/**
 * Where code artifacts come from and uploads go: with an object store, its buckets (the code
 * unpacked into the cache under the data directory); else the local artifact store there.
 */
function codeArtifacts(settings: Settings): BerthParts["artifacts"] {
  const unpackLimits = {
    maxUnpackedBytes: settings.maxArtifactUnpackedBytes,
    maxEntries: settings.maxArtifactEntries,
  };
  const uploadLimits = { ...unpackLimits, maxBytes: settings.maxArtifactBytes };
  const archives = new UnpackedArchives(join(settings.dataDir, "artifact-cache"), unpackLimits);
  const artifactsDir = join(settings.dataDir, "artifacts");
  mkdirSync(artifactsDir, { recursive: true, mode: 0o755 });
  const local = new CodeFolders(artifactsDir, archives);
  const connection = objectStoreConnection(settings);
  if (connection !== undefined) {
    const objects = new S3ArtifactObjects(connection);
    return {
      // Versions made before the object store was set find their code where it was put.
      folders: new CodeWithFallback(
        local,
        new ObjectStoreCode(objects, archives, settings.maxArtifactBytes),
      ),
      uploads: new ObjectStoreUploads(objects, archives, uploadLimits),
    };
  }
  return { folders: local, uploads: new ArchiveUploads(artifactsDir, uploadLimits) };
}

/**
 * Finds the Python of each Python runtime (configured, else looked for on this host) and makes
 * each reachable by the driver's sandboxes. Reads Berth's own PATH and PYENV_ROOT, at start only.
 */
function exposePythons(settings: Settings, log: Logger): ExposedPythons {
  const installs = findPythonInstalls(settings.pythonInterpreters, {
    path: process.env["PATH"],
    pyenvRoot: process.env["PYENV_ROOT"],
  });
  log.info("python runtimes", {
    ...Object.fromEntries(
      Object.keys(pythonRuntimeVersions).map((runtime) => [runtime, "none (its versions fail)"]),
    ),
    ...Object.fromEntries(
      Object.entries(installs).map(([runtime, install]) => [runtime, install.executable]),
    ),
  });
  return pythonExposures[settings.sandboxDriver](installs, settings);
}

/**
 * Who owns the files of a new volume: for bubblewrap, the sandbox's own user, which each sandbox
 * sees them as through an idmapping; for plain processes, Berth's own user (undefined).
 */
function volumeOwner(settings: Settings): number | undefined {
  return settings.sandboxDriver === "bubblewrap" ? sandboxUser.uid : undefined;
}

function requireRoot(choice: string, why: string): void {
  if (process.getuid?.() !== 0) {
    throw new Error(`${choice} needs Berth to run as root: ${why}`);
  }
}
