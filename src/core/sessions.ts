import { AgentOutputLog, type AgentOutputLogSettings } from "./agent-output-log.ts";
import { noAgentLogs, type AgentLogWriter } from "./agent-logs.ts";
import { BerthError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { noObserver, type Observer } from "./observer.ts";
import type { AttachedVolume, CheckpointState, SessionStorage } from "./session-storage.ts";
import type { RuntimeRecord, RuntimeVersionRecord } from "./model.ts";
import {
  describeReadiness,
  protocolContract,
  type HealthCheck,
  type ProtocolContract,
} from "./protocols.ts";
import {
  NoSandboxSlotError,
  type AgentEndpoint,
  type Sandbox,
  type SandboxCommand,
  type SandboxDriver,
  type SandboxExit,
  type SandboxFilesystem,
  type SandboxTerminal,
  type SandboxUsage,
  type TerminalOptions,
} from "./sandbox.ts";

export type AgentHealth = "Healthy" | "HealthyBusy";

/**
 * How the session manager asks an agent whether it is up and busy: its GET /ping, read as the
 * agent's protocol says (core/protocols.ts). Rejects when the agent is not up.
 */
export type AgentProbe = (
  endpoint: AgentEndpoint,
  timeoutMs: number,
  health: HealthCheck,
) => Promise<AgentHealth>;

/** What a version's artifact runs as. */
export interface LaunchPlan {
  filesystem: SandboxFilesystem;
  command: string[];
  /** The artifact's own environment (an image's Env); the runtime's variables go over it. */
  environment: Record<string, string>;
  /** What execute-command runs `-c COMMAND` with: /bin/bash, or /bin/sh in images without it. */
  shell: string;
}

/** How a version's artifact becomes a launch plan. */
export type LaunchPlanner = (version: RuntimeVersionRecord) => Promise<LaunchPlan>;

export interface SessionSettings {
  /** The region Berth answers as; agents see it as AWS_REGION, as on AgentCore. */
  region: string;
  agentStartupTimeoutMs: number;
  sweepIntervalMs: number;
  /** How long one /ping may take, answer and body together. */
  pingTimeoutMs: number;
  maxSessions: number;
  /** Each session's budget for its agent's output in the log. */
  agentLog: AgentOutputLogSettings;
}

export type SessionState = "starting" | "running";

export interface SessionInfo {
  runtimeId: string;
  sessionId: string;
  version: number;
  state: SessionState;
  startedAt: string;
  lastActivityAt: string;
  activeRequests: number;
  usage: SandboxUsage & { storageUsedBytes: number | undefined };
  /** With an object store: how far the session storage's copy there is behind. */
  checkpoint?: CheckpointState;
}

interface LiveSession {
  key: string;
  runtimeId: string;
  sessionId: string;
  version: number;
  state: SessionState;
  startedAtMs: number;
  lastActivityMs: number;
  activeRequests: number;
  idleTimeoutMs: number;
  maxLifetimeMs: number;
  /** The agent's protocol: its port and how its health is asked. */
  contract: ProtocolContract;
  sandbox: Sandbox | undefined;
  /** The session storage attached to its sandbox, once it is. */
  volumes: AttachedVolume[];
  ready: Promise<Sandbox>;
  abort: AbortController;
  /** Why the session ends, set the moment its end is decided (before its processes are killed). */
  stopReason: string | undefined;
  /** The session's end under way (see end()); every caller of end() shares it. */
  ending: Promise<void> | undefined;
  outputTail: string[];
  outputLog: AgentOutputLog;
  /** When the idle sweep last asked its /ping (0: never), and whether it is asking now. */
  lastProbeMs: number;
  probing: boolean;
  /** The launch plan's shell, once planned. */
  shell: string;
  /** Settles once the sandbox is gone and the session's storage is flushed and detached. */
  released: Promise<void>;
}

/**
 * Which sessions this Berth may run, when it shares them with other nodes (a cluster). Without
 * it every session may run here.
 */
export interface SessionOwnership {
  /**
   * Makes this node the session's owner before its volumes attach, or throws (a BerthError) when
   * another node owns it. Resolves to what gives the ownership up, called once the session has
   * let go of its sandbox and volumes.
   */
  claim(runtimeId: string, sessionId: string): Promise<() => Promise<void>>;
}

/** Use of a running session; release() when the request is done, so idle time counts from then. */
export interface SessionLease {
  agentEndpoint: AgentEndpoint;
  /** Settles when the session's sandbox is gone (stopped, timed out, or the agent crashed). */
  ended: Promise<string>;
  /**
   * Why the session ended, if it ends within a moment: a broken connection or a killed command
   * is seen before the sandbox is gone, and the reason makes the better error message. Known at
   * once when Berth ended the session (stopped, timed out, shutting down); an agent that exited
   * is noticed only once its sandbox is gone, so that is waited for a moment. Undefined when the
   * session lives on.
   */
  endReasonSoon(): Promise<string | undefined>;
  release(): void;
  /** The agent's last output lines, for error messages. */
  outputTail(): string[];
  /** Starts a program in the session's sandbox, beside the agent. */
  exec(argv: string[]): Promise<SandboxCommand>;
  /** Starts a program in the session's sandbox on a terminal of its own (see Sandbox.openTerminal). */
  openTerminal(argv: string[], options: TerminalOptions): Promise<SandboxTerminal>;
  /** The shell commands run with in this session (see LaunchPlan.shell). */
  shell: string;
}

const outputTailLines = 20;
/**
 * How long a request that lost its sandbox waits to learn why (see endReasonSoon). Ended sooner
 * when the session ends, which is the usual case; long enough that on a loaded host the
 * session is gone before the caller hears of the crash, so its next request starts afresh
 * (seen at 50 ms: a request right after a crash reached the dying sandbox).
 */
const endNoticeMs = 1000;
/**
 * Most idle sessions whose /ping is asked at once. Each ask ends within agentPingTimeoutMs and
 * lets the next queued one start, and the sessions asked longest ago go first, so every idle
 * session is asked within a few sweeps however many agents answer slowly.
 */
const maxConcurrentIdleProbes = 16;

/**
 * Sessions: one sandbox per (runtime, runtimeSessionId), started on first use. Concurrent first
 * requests share one start. A session ends on StopRuntimeSession, after its idle timeout (a
 * HealthyBusy ping counts as activity), at its max lifetime, or when its agent exits.
 */
export class SessionManager {
  private readonly sessions = new Map<string, LiveSession>();
  /**
   * Per session key, the latest session's end to come: its start settled and its sandbox's
   * storage flushed and detached. The next sandbox of that key waits for it before attaching
   * the same volumes.
   */
  private readonly releases = new Map<string, Promise<void>>();
  /** Per session key, the ownership a session that ended is giving up (see giveUpOwnershipWhen). */
  private readonly ownershipsGivingUp = new Map<string, Promise<void>>();
  private readonly sweeper: NodeJS.Timeout;
  private readonly driver: SandboxDriver;
  private readonly probe: AgentProbe;
  private readonly plan: LaunchPlanner;
  private readonly storage: SessionStorage;
  private readonly log: Logger;
  private readonly settings: SessionSettings;
  private readonly nowMs: () => number;
  private readonly ownership: SessionOwnership | undefined;
  private readonly observer: Observer;
  private readonly agentLogs: AgentLogWriter;
  private idleProbes = 0;
  /** Idle sessions whose /ping is still to be asked, asked longest ago first (see sweep()). */
  private idleQueue: LiveSession[] = [];
  private closed = false;

  constructor(options: {
    driver: SandboxDriver;
    probe: AgentProbe;
    plan: LaunchPlanner;
    storage: SessionStorage;
    log: Logger;
    settings: SessionSettings;
    nowMs?: () => number;
    ownership?: SessionOwnership | undefined;
    /** Told of each session start and its steps (metrics, traces); none by default. */
    observer?: Observer;
    /** Where each session's agent output goes (its own log, agent-logs.ts); nowhere by default. */
    agentLogs?: AgentLogWriter;
  }) {
    this.observer = options.observer ?? noObserver;
    this.agentLogs = options.agentLogs ?? noAgentLogs;
    this.ownership = options.ownership;
    this.driver = options.driver;
    this.probe = options.probe;
    this.plan = options.plan;
    this.storage = options.storage;
    this.log = options.log;
    this.settings = options.settings;
    this.nowMs = options.nowMs ?? Date.now;
    this.sweeper = setInterval(() => {
      this.sweep();
    }, options.settings.sweepIntervalMs);
    this.sweeper.unref();
  }

  /** Gets the session running (starting it if needed) and holds it active until release(). */
  async acquire(
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    sessionId: string,
  ): Promise<SessionLease> {
    const session = await this.sessionOf(runtime, version, sessionId);
    session.activeRequests += 1;
    session.lastActivityMs = this.nowMs();
    let sandbox: Sandbox;
    try {
      sandbox = await session.ready;
    } catch (error) {
      session.activeRequests -= 1;
      throw error;
    }
    const live = session;
    let released = false;
    const ended = sandbox.exited.then(() => live.stopReason ?? "the agent exited");
    return {
      agentEndpoint: sandbox.agentEndpoint,
      ended,
      endReasonSoon: () =>
        live.stopReason !== undefined
          ? Promise.resolve(live.stopReason)
          : Promise.race([
              ended,
              new Promise<undefined>((resolve) => setTimeout(resolve, endNoticeMs, undefined)),
            ]),
      outputTail: () => [...live.outputTail],
      exec: (argv) => sandbox.exec(argv),
      openTerminal: (argv, options) => sandbox.openTerminal(argv, options),
      shell: live.shell,
      release: () => {
        if (released) return;
        released = true;
        live.activeRequests -= 1;
        live.lastActivityMs = this.nowMs();
      },
    };
  }

  /** Stops a session at once, in-flight requests included. False when no such session runs. */
  async stop(runtimeId: string, sessionId: string): Promise<boolean> {
    const session = this.sessions.get(sessionKey(runtimeId, sessionId));
    if (session === undefined) return false;
    await this.end(session, "stopped by StopRuntimeSession");
    return true;
  }

  /** Whether the session runs (or is starting) here. */
  isRunning(runtimeId: string, sessionId: string): boolean {
    return this.sessions.has(sessionKey(runtimeId, sessionId));
  }

  /**
   * Settles once the session of that id that ended last here has let go of everything (its
   * ownership included); at once when none is ending.
   */
  async letGo(runtimeId: string, sessionId: string): Promise<void> {
    const key = sessionKey(runtimeId, sessionId);
    await this.releases.get(key);
    await this.ownershipsGivingUp.get(key);
  }

  /** How many sessions run (or are starting) here. */
  get runningCount(): number {
    return this.sessions.size;
  }

  /**
   * Ends every session here (this node lost them to the cluster), or only those no request is
   * using (`idleOnly`: a draining node lets them move).
   */
  async endAll(reason: string, options: { idleOnly?: boolean } = {}): Promise<void> {
    const ending = [...this.sessions.values()].filter(
      (session) => options.idleOnly !== true || session.activeRequests === 0,
    );
    await Promise.all(ending.map((session) => this.end(session, reason)));
  }

  /** Stops every session of a runtime (it is being deleted). */
  async stopRuntime(runtimeId: string): Promise<void> {
    const ending = [...this.sessions.values()].filter((session) => session.runtimeId === runtimeId);
    await Promise.all(ending.map((session) => this.end(session, "runtime deleted")));
  }

  /** The sessions here of one runtime, or of every runtime, with what they use now. */
  async list(runtimeId?: string): Promise<SessionInfo[]> {
    const sessions = [...this.sessions.values()].filter(
      (session) => runtimeId === undefined || session.runtimeId === runtimeId,
    );
    return Promise.all(
      sessions.map(async (session) => {
        const [sandboxUsage, storage] = await Promise.all([
          session.sandbox?.usage(),
          this.storage.useOf(session.volumes),
        ]);
        return {
          runtimeId: session.runtimeId,
          sessionId: session.sessionId,
          version: session.version,
          state: session.state,
          startedAt: new Date(session.startedAtMs).toISOString(),
          lastActivityAt: new Date(session.lastActivityMs).toISOString(),
          activeRequests: session.activeRequests,
          usage: {
            ...(sandboxUsage ?? { memoryBytes: undefined, processes: undefined }),
            storageUsedBytes: storage.usedBytes,
          },
          ...(storage.checkpoint === undefined ? {} : { checkpoint: storage.checkpoint }),
        };
      }),
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    await Promise.all(
      [...this.sessions.values()].map((session) => this.end(session, "server shutting down")),
    );
    await Promise.all(this.releases.values());
  }

  /**
   * The live session of this version, started if none runs. One of another version is ended
   * first, and the map is read again after that wait: a concurrent request may have started the
   * new session meanwhile, and it must be shared, never replaced (a replaced session would run
   * on unlisted, its storage attached twice).
   */
  private async sessionOf(
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    sessionId: string,
  ): Promise<LiveSession> {
    const key = sessionKey(runtime.id, sessionId);
    for (;;) {
      const session = this.sessions.get(key);
      if (session === undefined) return this.begin(runtime, version, sessionId, key);
      if (session.version === version.version) return session;
      await this.end(session, `the endpoint now serves version ${version.version}`);
    }
  }

  private begin(
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    sessionId: string,
    key: string,
  ): LiveSession {
    if (this.closed) throw shuttingDown();
    if (this.sessions.size >= this.settings.maxSessions) {
      throw new BerthError(
        "ServiceQuotaExceededException",
        `All ${this.settings.maxSessions} session slots are in use (maxSessions); stop idle sessions or raise the limit`,
      );
    }
    const now = this.nowMs();
    const session: LiveSession = {
      key,
      runtimeId: runtime.id,
      sessionId,
      version: version.version,
      state: "starting",
      startedAtMs: now,
      lastActivityMs: now,
      activeRequests: 0,
      idleTimeoutMs: version.config.idleRuntimeSessionTimeoutSeconds * 1000,
      maxLifetimeMs: version.config.maxLifetimeSeconds * 1000,
      contract: protocolContract(version.config.serverProtocol),
      sandbox: undefined,
      volumes: [],
      ready: Promise.resolve(undefined as unknown as Sandbox),
      abort: new AbortController(),
      stopReason: undefined,
      ending: undefined,
      outputTail: [],
      outputLog: new AgentOutputLog({
        log: this.log,
        ids: { runtimeId: runtime.id, sessionId },
        settings: this.settings.agentLog,
        writer: this.agentLogs,
      }),
      lastProbeMs: 0,
      probing: false,
      shell: "/bin/bash",
      released: Promise.resolve(),
    };
    // The session before this one of the same id may still be starting or letting go of its
    // volumes (ended mid-start by a stop or a version change): this one waits for all of that.
    const previous = this.releases.get(key) ?? Promise.resolve();
    session.ready = this.observer.step(
      "session.start",
      { runtimeId: runtime.id, sessionId, version: version.version },
      () => this.boot(session, runtime, version, previous),
    );
    // Callers await ready themselves; this only keeps a failed start from being unhandled.
    session.ready.catch(() => undefined);
    // Settles once this session's start has settled and whatever sandbox it made has let go of
    // its volumes: known from the first moment, so the next session of the id always finds it.
    const finished = session.ready.then(
      () => session.released,
      () => session.released,
    );
    this.releases.set(key, finished);
    void finished.finally(() => {
      if (this.releases.get(key) === finished) this.releases.delete(key);
    });
    this.sessions.set(key, session);
    this.log.info("session starting", {
      runtimeId: runtime.id,
      sessionId,
      version: version.version,
    });
    return session;
  }

  private async boot(
    session: LiveSession,
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    previous: Promise<void>,
  ): Promise<Sandbox> {
    const startedAt = performance.now();
    try {
      const plan = await this.plan(version);
      session.shell = plan.shell;
      await previous;
      // The ownership the session before gave up must be gone first: claimed again meanwhile,
      // the row at the same epoch would be deleted under this session.
      await this.ownershipsGivingUp.get(session.key);
      const letGo = await this.claimOwnership(session);
      const owner = plan.filesystem.kind === "image" ? plan.filesystem.user : undefined;
      let volumes: AttachedVolume[];
      let sandbox: Sandbox;
      try {
        volumes = await this.observer.step("session.storage.attach", {}, () =>
          this.storage.attach(runtime, version, session.sessionId, owner),
        );
        sandbox = await this.observer.step("session.sandbox.start", {}, () =>
          this.startSandbox(session, plan, version, volumes),
        );
      } catch (error) {
        // Nothing attached is left (startSandbox detaches what it was given): the session holds
        // nothing, so its ownership is given up at once.
        session.released = letGo();
        throw error;
      }
      session.sandbox = sandbox;
      session.volumes = volumes;
      session.released = sandbox.exited.then(() => this.storage.detach(volumes));
      // Given up only once the storage's last upload is over: until then no other node may
      // start the session and find the object store without its last changes.
      this.giveUpOwnershipWhen(
        session.key,
        session.released.then(() => this.storage.settled(volumes)),
        letGo,
      );
      void sandbox.exited.then((exit) => {
        this.onSandboxExit(session, exit);
      });
      if (session.abort.signal.aborted) {
        // Ended while the sandbox was being made: its end found no sandbox to kill.
        await sandbox.kill();
        throw session.abort.signal.reason;
      }
      await this.observer.step("session.agent.ready", {}, () =>
        this.waitUntilHealthy(session, sandbox),
      );
      session.state = "running";
      this.log.info("session running", {
        runtimeId: session.runtimeId,
        sessionId: session.sessionId,
        startMs: Math.round((performance.now() - startedAt) * 100) / 100,
      });
      return sandbox;
    } catch (error) {
      // Ended by Berth meanwhile (stopped, another version, shutting down), not by its agent.
      const endedMeanwhile = session.ending !== undefined ? session.stopReason : undefined;
      await this.end(session, "the agent failed to start");
      throw this.startFailure(session, error, endedMeanwhile);
    }
  }

  private giveUpOwnershipWhen(key: string, over: Promise<void>, giveUp: () => Promise<void>): void {
    const givingUp = over.catch(() => undefined).then(giveUp);
    this.ownershipsGivingUp.set(key, givingUp);
    void givingUp.finally(() => {
      if (this.ownershipsGivingUp.get(key) === givingUp) this.ownershipsGivingUp.delete(key);
    });
  }

  private claimOwnership(session: LiveSession): Promise<() => Promise<void>> {
    if (this.ownership === undefined) return Promise.resolve(() => Promise.resolve());
    return this.ownership.claim(session.runtimeId, session.sessionId);
  }

  /**
   * What a failed start answers. What the agent did (it exited, never answered /ping) is already
   * a RuntimeClientError; a start cut short by the session's end says why it ended. No free
   * sandbox slot is a busy server: retryable, logged as a warning. Anything else is Berth's own
   * failure (its helper, the host): a server fault, logged as an error, that a retry may get past.
   */
  private startFailure(session: LiveSession, error: unknown, endedMeanwhile?: string): BerthError {
    if (endedMeanwhile !== undefined) {
      return this.closed
        ? shuttingDown()
        : new BerthError(
            "RuntimeClientError",
            `The session ended before its agent was ready: ${endedMeanwhile}`,
          );
    }
    if (BerthError.isInstance(error)) return error;
    if (error instanceof NoSandboxSlotError) return this.noSandboxSlot(session, error);
    this.log.error("session failed to start", {
      runtimeId: session.runtimeId,
      sessionId: session.sessionId,
      version: session.version,
      error: error instanceof Error ? (error.stack ?? error.message) : String(error),
    });
    return new BerthError(
      "InternalServerException",
      `Berth could not start the session's sandbox: a fault of the server, not of the agent. The cause is in the server log ("session failed to start", session ${session.sessionId})`,
      { cause: error },
    );
  }

  private noSandboxSlot(session: LiveSession, error: NoSandboxSlotError): BerthError {
    this.log.warn("no sandbox slot free", {
      runtimeId: session.runtimeId,
      sessionId: session.sessionId,
      sessionsRunning: this.sessions.size,
      error: error.message,
    });
    return new BerthError(
      "ThrottlingException",
      `This server has no free sandbox slot for a new session: ${error.message}. Sessions that just ended give theirs back once their sandboxes are gone: retry in a moment (the AWS SDKs retry ThrottlingException). If it persists, the server is at capacity: stop idle sessions or raise maxSessions`,
      { cause: error },
    );
  }

  private async startSandbox(
    session: LiveSession,
    plan: LaunchPlan,
    version: RuntimeVersionRecord,
    volumes: AttachedVolume[],
  ): Promise<Sandbox> {
    try {
      return await this.driver.start(
        {
          filesystem: plan.filesystem,
          command: plan.command,
          agentPort: session.contract.port,
          volumes: volumes.map(({ mountPath, handle }) => ({ mountPath, volume: handle })),
          environment: {
            ...plan.environment,
            ...version.config.environmentVariables,
            PORT: String(session.contract.port),
            AWS_REGION: this.settings.region,
          },
          onOutput: (stream, line) => {
            session.outputTail.push(line);
            if (session.outputTail.length > outputTailLines) session.outputTail.shift();
            session.outputLog.write(stream, line);
          },
        },
        session.abort.signal,
      );
    } catch (error) {
      await this.storage.detach(volumes);
      throw error;
    }
  }

  /** Asks /ping (as the protocol says) until the agent is up, exits, or the startup timeout passes. */
  private async waitUntilHealthy(session: LiveSession, sandbox: Sandbox): Promise<void> {
    const deadline = performance.now() + this.settings.agentStartupTimeoutMs;
    let exited: SandboxExit | undefined;
    void sandbox.exited.then((exit) => {
      exited = exit;
    });
    for (let attempt = 0; ; attempt += 1) {
      if (exited !== undefined) {
        throw new BerthError(
          "RuntimeClientError",
          `The agent exited during startup (${describeExit(exited)})${tail(session)}`,
        );
      }
      try {
        await this.probe(
          sandbox.agentEndpoint,
          this.settings.pingTimeoutMs,
          session.contract.health,
        );
        return;
      } catch {
        if (performance.now() > deadline) {
          throw new BerthError(
            "RuntimeClientError",
            `The ${session.contract.protocol} agent did not ${describeReadiness(session.contract)} within ${this.settings.agentStartupTimeoutMs} ms (agentStartupTimeoutSeconds)${tail(session)}`,
          );
        }
      }
      // Back off from 1 ms to 5 ms: agents are typically ready in tens of milliseconds.
      await new Promise((resolve) => setTimeout(resolve, Math.min(5, 1 + attempt)));
    }
  }

  private onSandboxExit(session: LiveSession, exit: SandboxExit): void {
    if (this.sessions.get(session.key) !== session) return;
    this.sessions.delete(session.key);
    if (session.stopReason === undefined) {
      session.stopReason = `the agent exited (${describeExit(exit)})`;
      this.log.warn("agent exited", {
        runtimeId: session.runtimeId,
        sessionId: session.sessionId,
        exit: describeExit(exit),
        lastOutput: session.outputTail.slice(-5),
      });
      // Ended by its agent: no end() follows to note it in the session's log.
      session.outputLog.end(session.stopReason);
    }
  }

  /** Ends a session; ending it again joins the end under way (the first reason is kept). */
  private end(session: LiveSession, reason: string): Promise<void> {
    session.ending ??= this.finishEnd(session, reason);
    return session.ending;
  }

  private async finishEnd(session: LiveSession, reason: string): Promise<void> {
    session.stopReason ??= reason;
    if (this.sessions.get(session.key) === session) this.sessions.delete(session.key);
    session.abort.abort(new Error(reason));
    try {
      await session.sandbox?.kill();
      await session.released;
    } finally {
      // Its log says it ended even when its sandbox could not be killed cleanly.
      session.outputLog.end(session.stopReason);
    }
    this.log.info("session ended", {
      runtimeId: session.runtimeId,
      sessionId: session.sessionId,
      reason: session.stopReason,
    });
  }

  /**
   * Ends sessions past their max lifetime or idle timeout. Deadlines are decided here and now,
   * without waiting on any agent; only an idle session's /ping is asked, in the background, so an
   * agent that answers slowly (or never) holds up no other session's ending.
   */
  private sweep(): void {
    const now = this.nowMs();
    const idle: LiveSession[] = [];
    for (const session of [...this.sessions.values()]) {
      if (session.state !== "running" || session.sandbox === undefined) continue;
      if (now - session.startedAtMs >= session.maxLifetimeMs)
        this.endInBackground(session, "max lifetime reached");
      else if (this.isIdle(session, now) && !session.probing) idle.push(session);
    }
    idle.sort((first, second) => first.lastProbeMs - second.lastProbeMs);
    this.idleQueue = idle;
    this.probeQueued();
  }

  /**
   * Asks queued idle sessions' /ping, up to maxConcurrentIdleProbes at once. Called again as each
   * answer arrives, so sessions that went idle together are asked as fast as their agents
   * answer, not 16 per sweep interval (200 sessions took 13 sweeps: 650 ms at 50 ms).
   */
  private probeQueued(): void {
    while (this.idleProbes < maxConcurrentIdleProbes) {
      const session = this.idleQueue.shift();
      if (session === undefined) return;
      const stillIdle =
        this.sessions.get(session.key) === session && this.isIdle(session, this.nowMs());
      if (stillIdle && !session.probing) void this.probeIdle(session);
    }
  }

  private isIdle(session: LiveSession, now: number): boolean {
    return session.activeRequests === 0 && now - session.lastActivityMs >= session.idleTimeoutMs;
  }

  /** Past its idle timeout: an agent still doing background work says HealthyBusy. */
  private async probeIdle(session: LiveSession): Promise<void> {
    const sandbox = session.sandbox;
    if (sandbox === undefined) return;
    session.probing = true;
    session.lastProbeMs = this.nowMs();
    this.idleProbes += 1;
    const health = await this.probe(
      sandbox.agentEndpoint,
      this.settings.pingTimeoutMs,
      session.contract.health,
    ).catch(() => "Unhealthy" as const);
    this.idleProbes -= 1;
    session.probing = false;
    if (health === "HealthyBusy") session.lastActivityMs = this.nowMs();
    else if (this.sessions.get(session.key) === session && this.isIdle(session, this.nowMs()))
      this.endInBackground(session, "idle timeout");
    this.probeQueued();
  }

  private endInBackground(session: LiveSession, reason: string): void {
    this.end(session, reason).catch((error: unknown) => {
      this.log.warn("could not end a session", {
        runtimeId: session.runtimeId,
        sessionId: session.sessionId,
        reason,
        error: String(error),
      });
    });
  }
}

function sessionKey(runtimeId: string, sessionId: string): string {
  return `${runtimeId}\u0000${sessionId}`;
}

function describeExit(exit: SandboxExit): string {
  return exit.signal !== null ? `killed by ${exit.signal}` : `exit code ${exit.code ?? "unknown"}`;
}

function tail(session: LiveSession): string {
  const lines = session.outputTail.slice(-5);
  return lines.length === 0 ? "" : `. Last output: ${lines.join(" | ")}`;
}

/** What a request hears once Berth is shutting down: retryable, and the SDKs retry it. */
export function shuttingDown(): BerthError {
  return new BerthError(
    "ThrottlingException",
    "Berth is shutting down and takes no new requests; retry against the new server",
  );
}
