import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { ArchiveUploads } from "../adapters/artifacts/archive-uploads.ts";
import { CodeFolders } from "../adapters/artifacts/code-folders.ts";
import { BubblewrapDriver } from "../adapters/bubblewrap/driver.ts";
import { nativeBinary } from "../adapters/host/native-binaries.ts";
import { RootMounts } from "../adapters/host/root-mounts.ts";
import { MemoryMetadataStore } from "../adapters/memory/store.ts";
import { ProcessDriver } from "../adapters/process/driver.ts";
import { SqliteMetadataStore } from "../adapters/sqlite/store.ts";
import { DirectoryVolumes } from "../adapters/volumes/directory-volumes.ts";
import { LoopVolumes } from "../adapters/volumes/loop-volumes.ts";
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
  artifacts: { folders: CodeFolders; uploads: ArchiveUploads };
  /** Each Python runtime's interpreter, as this driver's sandboxes reach it. */
  pythons: ExposedPythons;
  log: Logger;
  now: () => Date;
  /** Lets go of what the parts hold on the host (mount helper, Python views); after the driver. */
  release(): Promise<void>;
  /** For a start that failed: closes every part, in order, as no session ever ran. */
  abandon(): Promise<void>;
}

/** The logger and the clock every part shares. */
export interface SharedParts {
  log: Logger;
  now: () => Date;
}

/** What a part's factory gets besides the settings: what other parts made before it. */
interface PartTools {
  log: Logger;
  /** The root mount helper, started on first need and shared by the parts that mount. */
  rootMounts: () => Promise<RootMounts>;
}

const metadataStores: Record<Settings["metadataStore"], (settings: Settings) => MetadataStore> = {
  sqlite: (settings) => new SqliteMetadataStore(join(settings.dataDir, "berth.db")),
  memory: () => new MemoryMetadataStore(),
};

const volumeStores: Record<
  Settings["sessionStorage"],
  (settings: Settings, tools: PartTools) => Promise<VolumeStore>
> = {
  local: async (settings, tools) => {
    requireRoot("sessionStorage=local", "it loop-mounts each volume's filesystem image");
    const mounts = await tools.rootMounts();
    return new LoopVolumes(join(settings.dataDir, "storage"), volumeOwner(settings) ?? 0, {
      mountImage: (image, target) => mounts.mountImage(image, target),
      unmount: (target) => mounts.unmount(target),
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
  { log, now }: SharedParts,
): Promise<BerthParts> {
  const testOnly = testOnlyPartsChosen(settings);
  if (testOnly.length > 0) log.warn("running on test-only parts", { parts: testOnly });
  let mounts: Promise<RootMounts> | undefined;
  const tools: PartTools = {
    log,
    rootMounts: () =>
      (mounts ??= RootMounts.start(join(settings.dataDir, "mount-helper.sock"), settings.dataDir)),
  };
  const release = async (): Promise<void> => {
    if (mounts !== undefined) await (await mounts).close();
  };
  const built: Partial<Omit<BerthParts, "release">> = {};
  try {
    const store = (built.store = metadataStores[settings.metadataStore](settings));
    const driver = (built.driver = await sandboxDrivers[settings.sandboxDriver](settings, tools));
    const pythons = (built.pythons = exposePythons(settings, log));
    const volumes = await volumeStores[settings.sessionStorage](settings, tools);
    const artifacts = codeArtifacts(settings);
    // After the driver: image roots are unpacked with what it mounts over in them.
    const images = startContainerImages(settings, store, log, now, driver.imageRootNeeds);
    const releaseAll = async (): Promise<void> => {
      pythons.release();
      await release();
    };
    return {
      store,
      driver,
      volumes,
      images,
      artifacts,
      pythons,
      log,
      now,
      release: releaseAll,
      abandon: async () => {
        images.stop();
        await driver.close();
        await releaseAll();
        await store.close();
      },
    };
  } catch (error) {
    built.pythons?.release();
    await built.driver?.close();
    await built.store?.close();
    await release();
    throw error;
  }
}

/** The local artifact store under the data directory: uploads, and code folders unpacked from them. */
function codeArtifacts(settings: Settings): BerthParts["artifacts"] {
  const artifactsDir = join(settings.dataDir, "artifacts");
  mkdirSync(artifactsDir, { recursive: true, mode: 0o755 });
  const unpackLimits = {
    maxUnpackedBytes: settings.maxArtifactUnpackedBytes,
    maxEntries: settings.maxArtifactEntries,
  };
  return {
    folders: new CodeFolders(artifactsDir, join(settings.dataDir, "artifact-cache"), unpackLimits),
    uploads: new ArchiveUploads(artifactsDir, {
      ...unpackLimits,
      maxBytes: settings.maxArtifactBytes,
    }),
  };
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
