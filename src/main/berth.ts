import { chmodSync, mkdirSync } from "node:fs";
import { createServer, type Server, type ServerOptions } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import type { Writable } from "node:stream";
import { codeArtifactCheck } from "../adapters/artifacts/local-artifact-store.ts";
import { imageOperations } from "../wire/images-api.ts";
import type { Settings } from "../config/settings.ts";
import type { CoreContext } from "../core/context.ts";
import type { Logger } from "../core/logger.ts";
import { VersionPreparer } from "../core/preparation.ts";
import { controlPlaneOperations } from "../wire/control-plane.ts";
import { dataPlaneOperations } from "../wire/data-plane.ts";
import { commandOperation } from "../wire/commands.ts";
import { storageOperations } from "../wire/storage-api.ts";
import { agentLogOperations } from "../wire/agent-logs-api.ts";
import { artifactOperations } from "../wire/artifacts-api.ts";
import { pingAgent } from "../wire/agent-client.ts";
import { SessionManager } from "../core/sessions.ts";
import { SessionStorage } from "../core/session-storage.ts";
import {
  launchPlanner,
  planCodeLaunch,
  requireInterpreter,
} from "../adapters/artifacts/launch-plan.ts";
import { createRequestHandler } from "../wire/handler.ts";
import { RequestDrain } from "../wire/drain.ts";
import { BerthError } from "../core/errors.ts";
import { BodyHolder } from "../wire/signed-body.ts";
import { SigV4Verifier, type AccessKey } from "../wire/sigv4.ts";
import type { LostOwnershipError } from "../core/replication/fenced-head.ts";
import { loadSharedCredentials } from "./shared-credentials.ts";
import { assembleParts, refuseTestPartsUnlessAllowed, type BerthParts } from "./parts.ts";
import { loadOrCreateNodeId } from "./node-id.ts";
import { ClusterMembership, loneNodeView, nodeNameOf } from "./cluster.ts";
import { ClusterVerifier } from "../wire/cluster-signature.ts";
import { nodeOperations } from "../wire/cluster-api.ts";
import { servedByOwner, socketServedByOwner } from "../wire/forwarding.ts";
import { agentSocketOperations } from "../wire/agent-socket.ts";
import { shellOperations } from "../wire/shell-socket.ts";
import { asksForWebSocket, createUpgradeHandler } from "../wire/socket-handler.ts";
import { combineObservers } from "./observability.ts";
import { logsElsewhere, openAgentLogs } from "./agent-logs.ts";
import { startTracing } from "./tracing.ts";
import { metricsIfServed, serveMetrics, type MetricsListener } from "./metrics-listener.ts";
import type { SocketOperation } from "../wire/socket-operation.ts";
import type { Operation } from "../wire/operation.ts";
import { objectStoreConnection } from "./object-store-connection.ts";
import { checkObjectStore } from "./object-store-check.ts";

export interface RunningBerth {
  url: string;
  port: number;
  /** Where Prometheus scrapes this Berth (metricsPort); undefined when metrics are off. */
  metricsUrl: string | undefined;
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
  /**
   * Lets settings choose the test-only parts (see src/main/parts.ts). Only Berth's own tests set
   * it; without it a server on those parts is refused, whoever starts it.
   */
  allowTestParts?: boolean;
  /**
   * Another Berth took over the metadata database in the object store (this one was cut off
   * from it, or stalled, for a lease): this one no longer owns what it serves and must stop.
   * The CLI shuts down as on SIGTERM; without it, this Berth goes on serving unreplicated.
   */
  onMetadataLost?: (error: LostOwnershipError) => void;
}

export async function startBerth(
  settings: Settings,
  environment: BerthEnvironment,
): Promise<RunningBerth> {
  // Before anything is written to the data directory.
  refuseTestPartsUnlessAllowed(settings, environment.allowTestParts === true);
  const { log, now = () => new Date(), onMetadataLost } = environment;
  // Before anything else touches the object store: ObjectStoreCheckError says what to fix.
  const connection = objectStoreConnection(settings);
  if (connection !== undefined) await checkObjectStore(connection);
  mkdirSync(settings.dataDir, { recursive: true, mode: 0o711 });
  // Sandbox users pass through the data dir to their own folders; they cannot list it, and the
  // database and credentials inside are 0600.
  chmodSync(settings.dataDir, 0o711);
  const nodeId = loadOrCreateNodeId(settings.dataDir);
  const parts = await assembleParts(settings, { log, now, nodeId, onMetadataLost });
  try {
    // After the parts: with an object store, once this Berth holds its metadata there.
    const credentials = await loadSharedCredentials(settings, parts.objectStore, log);
    return await serveOn(parts, settings, environment, credentials, nodeId);
  } catch (error) {
    // A start that failed half-way (the port taken, say) leaves nothing running behind it.
    await parts.abandon();
    throw error;
  }
}

/** Wires the core and the wire layer to the parts, and starts serving. */
async function serveOn(
  parts: BerthParts,
  settings: Settings,
  environment: BerthEnvironment,
  { key, generated }: { key: AccessKey; generated: boolean },
  nodeId: string,
): Promise<RunningBerth> {
  const { store, driver, pythons, log, now } = parts;
  const { folders: codeFolders, uploads } = parts.artifacts;
  const checkCode = codeArtifactCheck(codeFolders);
  const containerImages = parts.images;
  const { images } = containerImages;
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
  const storage = new SessionStorage({
    store,
    volumes: parts.volumes,
    kinds: driver.volumeKinds,
    holder: nodeId,
    settings: {
      sizeBytes: settings.sessionStorageBytes,
      retentionMs: settings.sessionStorageRetentionSeconds * 1000,
    },
    log,
    now,
  });
  // One SQLite file is one process's: claims others made in it (a machine whose database was
  // restored here) are stale. A store other processes share keeps theirs.
  await storage.recover({
    metadataIsOurs: parts.cluster === undefined && settings.metadataStore === "sqlite",
  });
  let listeningUrl = "";
  // A node of a cluster: sessions are routed to their owners (ADR 0008).
  const membership: ClusterMembership | undefined =
    parts.cluster === undefined
      ? undefined
      : new ClusterMembership({
          store: parts.cluster,
          settings,
          nodeId,
          goneHolders: parts.goneHolders,
          // Asked only once requests arrive, when the sessions below exist.
          isRunningHere: (runtimeId, sessionId) => sessions.isRunning(runtimeId, sessionId),
          letGoHere: (runtimeId, sessionId) => sessions.letGo(runtimeId, sessionId),
          log,
          now,
        });
  // Background work shared by every node is done by one of them per interval.
  const onceForCluster = (job: string, intervalMs: number): Promise<boolean> =>
    membership?.onceForCluster(job, intervalMs) ?? Promise.resolve(true);
  const storageSweep = everyInterval(settings.sessionStorageSweepIntervalMs, async () => {
    // A Berth another took the object store from deletes nothing there: it is shutting down.
    if (parts.metadataReplica?.status().replicating === false) return;
    if (!(await onceForCluster("session-storage-sweep", settings.sessionStorageSweepIntervalMs)))
      return;
    await observer
      .step("sweep.session-storage", {}, () => storage.sweep())
      .catch((error: unknown) => {
        log.warn("could not sweep session storage", { error: String(error) });
      });
  });
  // Pulls a session start makes (an image a version of another node's preparation pinned).
  const sessionPulls = new AbortController();
  // What Berth reports of its work: metrics (metricsPort) and traces (otlpTracesEndpoint), each
  // off when unset (docs/observability.md).
  const metrics = metricsIfServed(settings);
  // Spans over OTLP/HTTP (otlpTracesEndpoint; off when unset).
  const tracing = startTracing(settings, { name: nodeNameOf(settings), id: nodeId, log });
  const observer = combineObservers([
    ...(metrics === undefined ? [] : [metrics.observer]),
    ...(settings.otlpTracesEndpoint === "" ? [] : [tracing]),
  ]);
  // Each session's agent output, kept apart from this log (docs/observability.md).
  const agentLogs = await openAgentLogs(settings, log);
  const sessions: SessionManager = new SessionManager({
    observer,
    agentLogs,
    driver,
    storage,
    probe: (endpoint, timeoutMs, health) =>
      pingAgent(endpoint, timeoutMs, settings.agentPingMaxBytes, health),
    plan: launchPlanner({
      code: (version) => planCodeLaunch(codeFolders, version, pythons.interpreters),
      // Ended, as the version preparations' pulls are, when Berth shuts down.
      image: (version) => images.planPulling(version, sessionPulls.signal),
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
    ownership: membership?.router,
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
      await agentLogs.removeRuntime(runtimeId);
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
  // Aborted as a shutdown begins: a follow of logs ends then, holding up no grace period.
  const shutdownBegun = new AbortController();
  const verifier = settings.insecureNoAuth
    ? undefined
    : new SigV4Verifier({
        keys: [key],
        region: settings.region,
        maxSkewSeconds: settings.clockSkewSeconds,
        now,
      });
  const clusterVerifier =
    membership === undefined
      ? undefined
      : new ClusterVerifier({ secret: settings.clusterSecret, now, nodeId });
  const handler = createRequestHandler({
    operations: [
      ...controlPlaneOperations(context),
      ...servedByOwners(membership, context, shutdown.signal, [
        ...dataPlaneOperations(context, sessions, {
          maxPayloadBytes: settings.maxPayloadBytes,
          shutdown: shutdown.signal,
          sessionsElsewhere: membership?.sessionsElsewhere ?? {
            nodeName: nodeNameOf(settings),
            list: undefined,
          },
          observer,
        }),
        commandOperation(context, sessions, {
          killGraceMs: settings.commandKillGraceMs,
          log,
          shutdown: shutdown.signal,
          observer,
        }),
      ]),
      ...nodeOperations(
        membership?.view ??
          loneNodeView(
            settings,
            () => sessions.runningCount,
            () => listeningUrl,
          ),
      ),
      ...storageOperations(context, storage),
      ...agentLogOperations(context, agentLogs, sessions, {
        followMaxMs: settings.agentLogFollowMaxSeconds * 1000,
        shutdown: shutdownBegun.signal,
        elsewhere: logsElsewhere(membership, nodeId, log),
      }),
      ...artifactOperations(uploads),
      ...imageOperations(images),
    ],
    verifier,
    clusterVerifier,
    log,
    observer,
    maxRequestBodyBytes: settings.maxRequestBodyBytes,
    bodies: new BodyHolder({
      maxUnverifiedBytes: settings.maxUnauthenticatedBufferBytes,
      maxInMemoryBytes: settings.maxInMemoryBodyBytes,
      spillDir: join(settings.dataDir, "request-bodies"),
    }),
  });
  const drain = new RequestDrain();
  const server = createServer(
    // Only a WebSocket upgrade leaves the request handler: `Upgrade: h2c` (curl --http2) and
    // the like are ordinary requests, answered as such.
    { ...serverTimeouts(settings), shouldUpgradeCallback: asksForWebSocket },
    drain.admit(handler),
  );
  server.on(
    "upgrade",
    createUpgradeHandler({
      operations: socketsServedByOwners(membership, context, [
        ...agentSocketOperations(context, sessions, {
          maxMessageBytes: settings.maxWebSocketMessageBytes,
          observer,
        }),
        ...shellOperations(context, sessions, {
          settings: {
            maxShellsPerRuntime: settings.maxShellsPerRuntime,
            replayBytes: settings.shellReplayBytes,
            reconnectMs: settings.shellReconnectSeconds * 1000,
            killGraceMs: settings.commandKillGraceMs,
          },
          log,
          observer,
        }),
      ]),
      verifier,
      clusterVerifier,
      log,
      shutdown: shutdown.signal,
      draining: () => drain.isDraining,
      observer,
    }),
  );
  server.maxConnections = settings.maxConnections;
  await listen(server, settings.port, settings.host);
  const port = (server.address() as AddressInfo).port;
  const url = `http://${settings.host.includes(":") ? `[${settings.host}]` : settings.host}:${port}`;
  listeningUrl = url;
  const resumePreparations = async (): Promise<void> => {
    if (!(await onceForCluster("resume-preparation", resumePreparationIntervalMs))) return;
    // Versions younger than the interval may still be under way on the node that made them.
    const createdBefore = new Date(now().getTime() - resumePreparationIntervalMs).toISOString();
    await preparer.resumeUnsettled(membership === undefined ? {} : { createdBefore });
  };
  let metricsListener: MetricsListener | undefined;
  try {
    // Its own address, never the API's (metricsPort; off when unset).
    metricsListener = await serveMetrics(metrics, settings, {
      sessions,
      apiServer: server,
      membership,
      now,
      log,
    });
    await membership?.join({
      url,
      sessions,
      // A node that lost its sessions runs none: whatever it still claims is stale.
      forgetClaims: () => store.releaseSessionStorageClaims(nodeId),
    });
    // A version left unsettled by a node that stopped is taken up by one node, not by each.
    await resumePreparations();
  } catch (error) {
    // Nothing was served yet: the start fails as a whole (startBerth abandons the parts).
    server.close();
    await metricsListener?.close();
    clearInterval(storageSweep);
    await membership?.leave();
    await sessions.close();
    await agentLogs.close();
    await preparer.close();
    await tracing.shutdown();
    throw error;
  }
  const preparationResume = everyInterval(resumePreparationIntervalMs, resumePreparations);
  const idempotencySweep = everyInterval(60_000, async () => {
    if (!(await onceForCluster("idempotency-expiry", 60_000))) return;
    const before = new Date(
      now().getTime() - settings.idempotencyWindowSeconds * 1000,
    ).toISOString();
    const expire = () => store.expireIdempotency(before);
    await observer.step("sweep.idempotency", {}, expire).catch((error: unknown) => {
      log.warn("could not expire idempotency records", { error: String(error) });
    });
  });
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
    metricsUrl: metricsListener?.url,
    credentials: key,
    sessions,
    idle: () => preparer.idle(),
    collectImageGarbage: containerImages.collectGarbage,
    close: async ({ graceMs = 0, hurry }: ShutdownOptions = {}) => {
      const serverClosed = new Promise<void>((done) => server.once("close", done));
      shutdownBegun.abort();
      // Other nodes stop placing sessions here while this one finishes what it runs.
      await membership?.beginLeaving();
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
      sessionPulls.abort();
      clearInterval(idempotencySweep);
      clearInterval(preparationResume);
      clearInterval(storageSweep);
      await sessions.close();
      await agentLogs.close();
      await membership?.leave();
      await driver.close();
      await parts.release();
      await drain.drain(server, AbortSignal.timeout(lastWordsMs));
      server.closeAllConnections();
      await serverClosed;
      await metricsListener?.close();
      await preparer.close();
      await store.close();
      await parts.cluster?.close();
      // After the store's last commit: a last snapshot, then the head is let go.
      await parts.metadataReplica?.close();
      // Last: the spans of everything above.
      await tracing.shutdown();
    },
  };
}

/**
 * Runs `work` every `intervalMs`, never two at once; unref'd so it keeps no process alive. A
 * failure of `work` is its own to log.
 */
function everyInterval(intervalMs: number, work: () => Promise<void>): NodeJS.Timeout {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    work()
      .catch(() => undefined)
      .finally(() => {
        running = false;
      });
  }, intervalMs);
  timer.unref();
  return timer;
}

/** Operations on one session run on its owner: wrapped so, when this node is in a cluster. */
function servedByOwners(
  membership: ClusterMembership | undefined,
  context: CoreContext,
  shutdown: AbortSignal,
  operations: Operation[],
): Operation[] {
  if (membership === undefined) return operations;
  const deps = { context, routing: membership.router, forwarder: membership.forwarder, shutdown };
  return operations.map((operation) =>
    operation.session === undefined ? operation : servedByOwner(operation, deps, operation.session),
  );
}

/** servedByOwners for WebSocket operations: an upgrade goes to the session's owner unopened. */
function socketsServedByOwners(
  membership: ClusterMembership | undefined,
  context: CoreContext,
  operations: SocketOperation[],
): SocketOperation[] {
  if (membership === undefined) return operations;
  const deps = { context, routing: membership.router, forwarder: membership.forwarder };
  return operations.map((operation) =>
    operation.session === undefined
      ? operation
      : socketServedByOwner(operation, deps, operation.session),
  );
}

/** How often another node may take up versions left unsettled (after a node stopped mid-way). */
const resumePreparationIntervalMs = 60_000;

function anyOf(signal: AbortSignal, other: AbortSignal | undefined): AbortSignal {
  return other === undefined ? signal : AbortSignal.any([signal, other]);
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
