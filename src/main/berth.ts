import { chmodSync, mkdirSync } from "node:fs";
import { createServer, type Server, type ServerOptions } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { codeArtifactCheck } from "../adapters/artifacts/local-artifact-store.ts";
import { startContainerImages } from "./container-images.ts";
import { imageOperations } from "../wire/images-api.ts";
import { SqliteMetadataStore } from "../adapters/sqlite/store.ts";
import type { Settings } from "../config/settings.ts";
import type { CoreContext } from "../core/context.ts";
import type { Logger } from "../core/logger.ts";
import { VersionPreparer } from "../core/preparation.ts";
import { controlPlaneOperations } from "../wire/control-plane.ts";
import { dataPlaneOperations } from "../wire/data-plane.ts";
import { commandOperation } from "../wire/commands.ts";
import { storageOperations } from "../wire/storage-api.ts";
import { artifactOperations } from "../wire/artifacts-api.ts";
import { ArchiveUploads } from "../adapters/artifacts/archive-uploads.ts";
import { pingAgent } from "../wire/agent-client.ts";
import { SessionManager } from "../core/sessions.ts";
import { SessionStorage } from "../core/session-storage.ts";
import { LoopVolumes } from "../adapters/volumes/loop-volumes.ts";
import { sandboxUser } from "../adapters/bubblewrap/mounts.ts";
import { BubblewrapDriver } from "../adapters/bubblewrap/driver.ts";
import {
  launchPlanner,
  planCodeLaunch,
  requireInterpreter,
} from "../adapters/artifacts/launch-plan.ts";
import { findPythonInstalls, pythonRuntimeVersions } from "../config/python-installs.ts";
import { exposePythonInstalls, type ExposedPythons } from "./python-interpreters.ts";
import { nativeBinary } from "../adapters/bubblewrap/native-binaries.ts";
import { CodeFolders } from "../adapters/artifacts/code-folders.ts";
import { binaryForSandboxes, requireTraversableByOthers } from "./sandbox-host.ts";
import { createRequestHandler } from "../wire/handler.ts";
import { RequestDrain } from "../wire/drain.ts";
import { BerthError } from "../core/errors.ts";
import { BodyHolder } from "../wire/signed-body.ts";
import { SigV4Verifier, type AccessKey } from "../wire/sigv4.ts";
import { loadOrCreateCredentials } from "./credentials.ts";

export interface RunningBerth {
  url: string;
  port: number;
  credentials: AccessKey;
  /** Resolves when background work started so far (artifact preparation) has settled. */
  idle(): Promise<void>;
  /** Removes cached images nothing needs now (it also runs every imageGcIntervalMs). */
  collectImageGarbage(): Promise<string[]>;
  /** The live sessions, for tests and the operator API. */
  sessions: SessionManager;
  /**
   * Stops accepting requests, gives those in flight `graceMs` (default 0) to finish, or until
   * `hurry` aborts; then ends what still runs (each with a last error event or answer), stops
   * every session and closes the database.
   */
  close(options?: ShutdownOptions): Promise<void>;
}

export interface ShutdownOptions {
  graceMs?: number;
  /** Ends the grace period at once (a second SIGTERM). */
  hurry?: AbortSignal;
}

/** After the grace period, how long answers ended with a last event get to reach their callers. */
const lastWordsMs = 5_000;

/** The composition root: builds every part from settings and wires them together. */
export interface BerthEnvironment {
  log: Logger;
  /** Where the one-time credentials text goes (a person's terminal). */
  console: Writable;
  now?: () => Date;
}

export async function startBerth(
  settings: Settings,
  environment: BerthEnvironment,
): Promise<RunningBerth> {
  const { log, now = () => new Date() } = environment;
  if (process.getuid?.() !== 0) {
    throw new Error(
      "berth serve must run as root: each session's sandbox gets its own unprivileged host uid",
    );
  }
  mkdirSync(settings.dataDir, { recursive: true, mode: 0o711 });
  // Sandbox users pass through the data dir to their own folders; they cannot list it, and the
  // database and credentials inside are 0600.
  chmodSync(settings.dataDir, 0o711);
  requireTraversableByOthers(
    settings.dataDir,
    "the data directory holds session folders and artifacts",
  );
  const artifactsDir = join(settings.dataDir, "artifacts");
  mkdirSync(artifactsDir, { recursive: true, mode: 0o755 });

  const unpackLimits = {
    maxUnpackedBytes: settings.maxArtifactUnpackedBytes,
    maxEntries: settings.maxArtifactEntries,
  };
  const codeFolders = new CodeFolders(
    artifactsDir,
    join(settings.dataDir, "artifact-cache"),
    unpackLimits,
  );
  const { key, generated } = loadOrCreateCredentials(settings.dataDir, settings);
  const store = new SqliteMetadataStore(join(settings.dataDir, "berth.db"));
  const containerImages = startContainerImages(settings, store, log, now);
  const { images } = containerImages;
  const checkCode = codeArtifactCheck(codeFolders);
  const pythons = exposePythons(settings, log);
  const preparer = new VersionPreparer({
    store,
    check: async (artifact, signal) => {
      if (artifact.kind !== "code") return images.pull(artifact.containerUri, signal);
      requireInterpreter(artifact.runtime, pythons.interpreters);
      return checkCode(artifact);
    },
    now,
    log,
  });
  const driver = await BubblewrapDriver.create({
    runRoot: join(settings.dataDir, "sessions"),
    uidBase: settings.sandboxUidBase,
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
    cgroupParent: settings.cgroupParent,
    outbound: settings.sandboxOutbound,
    allowedNetworks: settings.sandboxAllowedNetworks,
    prestartPerVersion: settings.sandboxPrestart,
    seccomp: settings.sandboxSeccomp,
    maxOutputLineBytes: settings.maxAgentOutputLineBytes,
  });
  const storage = new SessionStorage({
    store,
    // Files are stored as the sandbox's own user; each sandbox sees them through an idmapping.
    volumes: new LoopVolumes(join(settings.dataDir, "storage"), sandboxUser.uid, {
      mountImage: (image, target) => driver.mountImage(image, target),
      unmount: (target) => driver.unmount(target),
    }),
    settings: {
      sizeBytes: settings.sessionStorageBytes,
      retentionMs: settings.sessionStorageRetentionSeconds * 1000,
    },
    log,
    now,
  });
  await storage.recover();
  const storageSweep = setInterval(() => {
    storage.sweep().catch((error: unknown) => {
      log.warn("could not sweep session storage", { error: String(error) });
    });
  }, settings.sessionStorageSweepIntervalMs);
  storageSweep.unref();
  const sessions = new SessionManager({
    driver,
    storage,
    probe: (endpoint, timeoutMs) => pingAgent(endpoint, timeoutMs, settings.agentPingMaxBytes),
    plan: launchPlanner({
      code: (version) => planCodeLaunch(codeFolders, version, pythons.interpreters),
      image: (version) => Promise.resolve().then(() => images.plan(version)),
    }),
    log,
    settings: {
      region: settings.region,
      agentStartupTimeoutMs: settings.agentStartupTimeoutSeconds * 1000,
      sweepIntervalMs: settings.sessionSweepIntervalMs,
      pingTimeoutMs: settings.agentPingTimeoutMs,
      maxSessions: settings.maxSessions,
      agentLog: {
        bytesPerSecond: settings.agentLogBytesPerSecond,
        burstBytes: settings.agentLogBurstBytes,
      },
    },
  });
  const context: CoreContext = {
    store,
    region: settings.region,
    accountId: settings.accountId,
    now,
    prepareVersion: (version) => {
      preparer.prepare(version);
    },
    endSessions: async (runtimeId) => {
      await sessions.stopRuntime(runtimeId);
      await storage.removeRuntime(runtimeId);
    },
    minLifecycleSeconds: settings.minLifecycleSeconds,
  };

  if (settings.insecureNoAuth) {
    log.warn(
      "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach this port can run code as Berth",
      {
        host: settings.host,
      },
    );
  }
  // Aborted when a shutdown's grace period is over: requests still running then end at once.
  const shutdown = new AbortController();
  const handler = createRequestHandler({
    operations: [
      ...controlPlaneOperations(context),
      ...dataPlaneOperations(context, sessions, {
        maxPayloadBytes: settings.maxPayloadBytes,
        shutdown: shutdown.signal,
      }),
      commandOperation(context, sessions, {
        killGraceMs: settings.commandKillGraceMs,
        log,
        shutdown: shutdown.signal,
      }),
      ...storageOperations(context, storage),
      ...artifactOperations(
        new ArchiveUploads(artifactsDir, { ...unpackLimits, maxBytes: settings.maxArtifactBytes }),
      ),
      ...imageOperations(images),
    ],
    verifier: settings.insecureNoAuth
      ? undefined
      : new SigV4Verifier({
          keys: [key],
          region: settings.region,
          maxSkewSeconds: settings.clockSkewSeconds,
          now,
        }),
    log,
    maxRequestBodyBytes: settings.maxRequestBodyBytes,
    bodies: new BodyHolder({
      maxUnverifiedBytes: settings.maxUnauthenticatedBufferBytes,
      maxInMemoryBytes: settings.maxInMemoryBodyBytes,
      spillDir: join(settings.dataDir, "request-bodies"),
    }),
  });
  const drain = new RequestDrain();
  const server = createServer(serverTimeouts(settings), drain.admit(handler));
  server.maxConnections = settings.maxConnections;
  await listen(server, settings.port, settings.host);
  await preparer.resumeUnsettled();
  const idempotencySweep = setInterval(() => {
    const before = new Date(
      now().getTime() - settings.idempotencyWindowSeconds * 1000,
    ).toISOString();
    store.expireIdempotency(before).catch((error: unknown) => {
      log.warn("could not expire idempotency records", { error: String(error) });
    });
  }, 60_000);
  idempotencySweep.unref();

  const port = (server.address() as AddressInfo).port;
  const url = `http://${settings.host.includes(":") ? `[${settings.host}]` : settings.host}:${port}`;
  if (generated) printFirstStartCredentials(environment, key, url, settings);
  log.info("berth listening", {
    url,
    dataDir: settings.dataDir,
    region: settings.region,
    sandbox: driver.describe(),
  });

  return {
    url,
    port,
    credentials: key,
    sessions,
    idle: () => preparer.idle(),
    collectImageGarbage: containerImages.collectGarbage,
    close: async ({ graceMs = 0, hurry }: ShutdownOptions = {}) => {
      const serverClosed = new Promise<void>((done) => server.once("close", done));
      await drain.drain(server, anyOf(AbortSignal.timeout(graceMs), hurry));
      if (drain.requestsInFlight > 0)
        log.info("grace period over", { requestsInFlight: drain.requestsInFlight });
      shutdown.abort(
        new BerthError(
          "InternalServerException",
          `Berth shut down before this request finished: requests in flight get ${graceMs / 1000} s (shutdownGraceSeconds) once a shutdown begins`,
        ),
      );
      containerImages.stop();
      clearInterval(idempotencySweep);
      clearInterval(storageSweep);
      await sessions.close();
      await driver.close();
      pythons.release();
      await drain.drain(server, AbortSignal.timeout(lastWordsMs));
      server.closeAllConnections();
      await serverClosed;
      await preparer.close();
      await store.close();
    },
  };
}

function anyOf(signal: AbortSignal, other: AbortSignal | undefined): AbortSignal {
  return other === undefined ? signal : AbortSignal.any([signal, other]);
}

/**
 * Finds the Python of each Python runtime (configured, else looked for on this host) and makes
 * each visible to sandboxes. Reads Berth's own PATH and PYENV_ROOT, at start only.
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
  return exposePythonInstalls(installs, join(settings.dataDir, "interpreters", "python"));
}

/** Slow clients get 408 and lose their connection; the check runs often enough to be on time. */
function serverTimeouts(settings: Settings): ServerOptions {
  const requestTimeout = settings.requestTimeoutSeconds * 1000;
  // Node requires headersTimeout <= requestTimeout.
  const headersTimeout = Math.min(settings.requestHeadersTimeoutSeconds * 1000, requestTimeout);
  return {
    headersTimeout,
    requestTimeout,
    connectionsCheckingInterval: Math.min(30_000, headersTimeout / 4),
  };
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((done, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      server.off("error", fail);
      done();
    });
  });
}

/** Shown once, when the key pair is generated: the lines a user pastes to use Berth. */
function printFirstStartCredentials(
  environment: BerthEnvironment,
  key: AccessKey,
  url: string,
  settings: Settings,
): void {
  environment.log.info("generated credentials", {
    accessKeyId: key.accessKeyId,
    file: join(settings.dataDir, "credentials.json"),
  });
  environment.console.write(
    [
      "",
      "Berth generated credentials (stored in the data directory, mode 0600). Use them with:",
      "",
      `  export AWS_ACCESS_KEY_ID=${key.accessKeyId}`,
      `  export AWS_SECRET_ACCESS_KEY=${key.secretAccessKey}`,
      `  export AWS_REGION=${settings.region}`,
      // botocore (boto3, the AWS CLI) reads only this one.
      `  export AWS_DEFAULT_REGION=${settings.region}`,
      `  export BERTH_ENDPOINT=${url}`,
      "",
      "This is the only time the secret is printed.",
      "",
    ].join("\n") + "\n",
  );
}
