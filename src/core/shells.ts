import { randomUUID } from "node:crypto";
import { once } from "node:events";
import type { Readable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import { exitCode } from "./commands.ts";
import { BerthError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { ReplayRing } from "./replay-ring.ts";
import type { SandboxExit, SandboxTerminal } from "./sandbox.ts";
import type { SessionLease } from "./sessions.ts";
import type { ShellConnectionEnd, WindowSize } from "./shell-channels.ts";

export interface ShellSettings {
  /** Most shells running at once per runtime (detached ones in their reconnect window count). */
  maxShellsPerRuntime: number;
  /** How much of a shell's latest output is kept to replay to a client that reattaches. */
  replayBytes: number;
  /** How long a shell whose client went away waits for one to reattach before it is ended. */
  reconnectMs: number;
  /** When a shell is ended (hung up, window over), its processes' time between SIGTERM and SIGKILL. */
  killGraceMs: number;
}

/** What a new shell's terminal is until the client says otherwise. */
const defaultWindowSize: WindowSize = { width: 80, height: 24 };

/** A shell id a client may choose: what fits a URL, a file name and a log line unquoted. */
const shellIdPattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** The shell id as given, or a ValidationException saying what one may be. */
export function checkShellId(value: string): string {
  if (shellIdPattern.test(value)) return value;
  throw new BerthError(
    "ValidationException",
    `shellId must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit (got ${JSON.stringify(value.slice(0, 140))})`,
    { reason: "FieldValidationFailed", fieldList: [{ name: "shellId", message: "is not valid" }] },
  );
}

/** How output reaches the client attached to a shell (the wire layer's WebSocket). */
export interface ShellClient {
  /** Sends output. False when the client holds too much unsent: reading waits for drained(). */
  output(chunk: Buffer): boolean;
  /** Resolves when the client can take more output, or has gone. */
  drained(): Promise<void>;
  /** The connection is over: the shell ended, or another connection took it. Called once. */
  closed(end: ShellConnectionEnd): void;
}

export interface ShellRequest {
  runtimeId: string;
  sessionId: string;
  /** The shell to reattach to, or the id a new one gets; undefined: a new one, its id generated. */
  shellId: string | undefined;
  /** The window size: a new shell starts with it (else 80x24); a found one is resized to it. */
  size: WindowSize | undefined;
  /**
   * The session, held by this connection: what makes an attached shell session activity. The
   * registry owns it from here and releases it when the connection ends (or fails to open).
   */
  lease: SessionLease;
}

/**
 * Interactive shells, per (runtime, session, shellId): a login shell on a terminal in the
 * session's sandbox. One client is attached at a time; a second one to attach takes the shell
 * over, and the first is closed saying so (a client whose network dropped reconnects before
 * Berth notices the old connection is dead, and must not be refused its own shell). While a
 * client is attached, output flows to it with backpressure; while none is, output is read into
 * the replay ring only, so the shell never blocks on an absent reader. A shell whose client went
 * away is ended once the reconnect window passes with none reattaching; one that exits meanwhile
 * is kept for that window, so a reattaching client gets its last output and exit status. Every
 * shell of a session ends with it.
 */
export class ShellRegistry {
  private readonly shells = new Map<string, Shell>();
  private readonly settings: ShellSettings;
  private readonly log: Logger;

  constructor(options: { settings: ShellSettings; log: Logger }) {
    this.settings = options.settings;
    this.log = options.log;
  }

  /** Finds the shell and holds it for this connection, or starts it (within the quota). */
  async connect(request: ShellRequest): Promise<ShellConnection> {
    const { lease, runtimeId, sessionId } = request;
    try {
      const shellId = request.shellId ?? randomUUID();
      const key = `${runtimeId}\u0000${sessionId}\u0000${shellId}`;
      let shell = this.shells.get(key);
      const reconnected = shell !== undefined;
      if (shell === undefined) {
        this.checkQuota(runtimeId);
        shell = new Shell({ runtimeId, sessionId, shellId }, this.settings, this.log, () => {
          if (this.shells.get(key) === shell) this.shells.delete(key);
        });
        this.shells.set(key, shell);
        shell.start(lease, request.size ?? defaultWindowSize);
      }
      shell.holdForConnection();
      await shell.started;
      if (reconnected && request.size !== undefined) shell.resize(request.size);
      return new ShellConnection(shell, lease, reconnected);
    } catch (error) {
      lease.release();
      throw error;
    }
  }

  /** The runtime's shells that run (starting, attached, or detached within their window). */
  runningCount(runtimeId: string): number {
    let count = 0;
    for (const shell of this.shells.values()) {
      if (shell.ids.runtimeId === runtimeId && shell.running) count += 1;
    }
    return count;
  }

  private checkQuota(runtimeId: string): void {
    const limit = this.settings.maxShellsPerRuntime;
    if (this.runningCount(runtimeId) < limit) return;
    throw new BerthError(
      "ServiceQuotaExceededException",
      `All ${limit} shells of agent runtime ${runtimeId} are in use (maxShellsPerRuntime): exit one, hang one up (a close frame), reattach to one by its shellId, or raise the limit`,
    );
  }
}

/** One connection's hold on a shell, from connect() until it detaches or is closed. */
export class ShellConnection {
  readonly shellId: string;
  readonly runtimeSessionId: string;
  /** Whether the shell was running (or kept with its exit status) before this connection. */
  readonly reconnected: boolean;
  private readonly shell: Shell;
  private readonly lease: SessionLease;
  private released = false;

  constructor(shell: Shell, lease: SessionLease, reconnected: boolean) {
    this.shell = shell;
    this.lease = lease;
    this.reconnected = reconnected;
    this.shellId = shell.ids.shellId;
    this.runtimeSessionId = shell.ids.sessionId;
  }

  /**
   * Attaches the client: the replay ring's contents first, then live output (nothing in between
   * is lost or sent twice). A client attached before is closed (`replaced`). If the shell has
   * already ended, the client gets the replay and the end at once.
   */
  attach(client: ShellClient): void {
    this.shell.attach(this, client);
  }

  /** Types at the terminal. Resolves once the terminal took the bytes (or the shell is over). */
  write(bytes: Buffer): Promise<void> {
    return this.shell.write(bytes);
  }

  resize(size: WindowSize): void {
    this.shell.resize(size);
  }

  /** The client hangs up: the shell is ended; the client then hears how (closed()). */
  hangUp(): void {
    this.shell.hangUp();
  }

  /** The client has gone without hanging up: the shell waits for a reconnect. */
  detach(): void {
    this.shell.detach(this);
    this.release();
  }

  /** Lets go of the session (idle time counts from now); called once the connection is over. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.lease.release();
  }
}

interface ShellIds {
  runtimeId: string;
  sessionId: string;
  shellId: string;
}

/** After its program exited, how long a terminal's output gets to end with nothing left unread. */
const outputEndAfterExitMs = 1000;

class Shell {
  readonly ids: ShellIds;
  started: Promise<void> = Promise.resolve();
  private readonly settings: ShellSettings;
  private readonly log: Logger;
  private readonly forgetInRegistry: () => void;
  private readonly ring: ReplayRing;
  private terminal: SandboxTerminal | undefined;
  private attached: { connection: ShellConnection; client: ShellClient } | undefined;
  /** The client reading waits for, while its buffer is full. */
  private pausedFor: ShellClient | undefined;
  private end: ShellConnectionEnd | undefined;
  private windowTimer: NodeJS.Timeout | undefined;
  private hungUp = false;
  /** The reconnect window passed: once the shell ends, nobody is left to tell. */
  private abandoned = false;
  /** Out of the registry for good: nothing (no window) may keep it, its ring and terminal. */
  private forgotten = false;

  constructor(ids: ShellIds, settings: ShellSettings, log: Logger, forget: () => void) {
    this.ids = ids;
    this.settings = settings;
    this.log = log;
    this.forgetInRegistry = forget;
    this.ring = new ReplayRing(settings.replayBytes);
  }

  get running(): boolean {
    return this.end === undefined;
  }

  start(lease: SessionLease, size: WindowSize): void {
    this.started = this.openTerminal(lease, size);
  }

  private async openTerminal(lease: SessionLease, size: WindowSize): Promise<void> {
    try {
      this.terminal = await lease.openTerminal([lease.shell, "-l"], {
        columns: size.width,
        rows: size.height,
        environment: { TERM: "xterm-256color" },
      });
    } catch (error) {
      this.end = { kind: "failed", message: "the shell could not start" };
      this.forget();
      throw startFailure(error);
    }
    this.log.info("shell started", { ...this.ids });
    this.terminal.output.on("data", (chunk: Buffer) => {
      this.onOutput(chunk);
    });
    tellWhenSessionEnds(lease, new WeakRef(this));
    void this.watchExit(this.terminal, lease);
  }

  /** Its session ended: the shell ends with it, and is forgotten even if kept with its exit. */
  sessionEnded(reason: string): void {
    this.finish({ kind: "sessionEnded", reason });
    this.forget();
  }

  /** A connection is about to attach: the reconnect window, if running, is over. */
  holdForConnection(): void {
    clearTimeout(this.windowTimer);
    this.windowTimer = undefined;
  }

  attach(connection: ShellConnection, client: ShellClient): void {
    const previous = this.attached;
    this.attached = undefined;
    if (previous !== undefined) {
      previous.connection.release();
      previous.client.closed({ kind: "replaced" });
    }
    this.holdForConnection();
    this.pausedFor = undefined;
    const replay = this.ring.contents();
    const ready = replay.length === 0 || client.output(replay);
    if (this.end !== undefined) {
      connection.release();
      client.closed(this.end);
      this.forget();
      return;
    }
    this.attached = { connection, client };
    if (ready) this.terminal?.output.resume();
    else this.pauseUntilDrained(client);
  }

  detach(connection: ShellConnection): void {
    const attached = this.attached;
    if (attached !== undefined && attached.connection !== connection) return;
    this.attached = undefined;
    this.pausedFor = undefined;
    this.terminal?.output.resume();
    // A client already heard its end (the socket closes after): there is nothing to wait for.
    if (this.windowTimer !== undefined || this.forgotten) return;
    if (this.end !== undefined) {
      this.keepEndedForWindow();
      return;
    }
    this.windowTimer = setTimeout(() => {
      this.windowTimer = undefined;
      this.log.info("shell not reattached in time", {
        ...this.ids,
        reconnectSeconds: this.settings.reconnectMs / 1000,
      });
      this.abandoned = true;
      this.hangUp();
    }, this.settings.reconnectMs);
    this.windowTimer.unref();
  }

  /** An ended shell no client has heard end of: kept for the window, for one to reattach. */
  private keepEndedForWindow(): void {
    this.windowTimer = setTimeout(() => {
      this.forget();
    }, this.settings.reconnectMs);
    this.windowTimer.unref();
  }

  /** The shell leaves the registry for good (a client heard its end, or nobody can any more). */
  private forget(): void {
    this.forgotten = true;
    this.holdForConnection();
    this.forgetInRegistry();
  }

  write(bytes: Buffer): Promise<void> {
    if (this.terminal === undefined || this.end !== undefined) return Promise.resolve();
    return this.terminal.write(bytes);
  }

  resize(size: WindowSize): void {
    if (this.end !== undefined) return;
    this.terminal?.resize(size.width, size.height);
  }

  hangUp(): void {
    if (this.terminal === undefined || this.end !== undefined || this.hungUp) return;
    this.hungUp = true;
    this.terminal.hangUp();
    // What the shell left running (a job that ignores SIGHUP) ends too.
    this.terminal.terminate(this.settings.killGraceMs).catch((error: unknown) => {
      this.log.warn("could not end a shell", { ...this.ids, error: String(error) });
    });
  }

  private onOutput(chunk: Buffer): void {
    this.ring.append(chunk);
    const client = this.attached?.client;
    if (client !== undefined && !client.output(chunk)) this.pauseUntilDrained(client);
  }

  private pauseUntilDrained(client: ShellClient): void {
    this.pausedFor = client;
    this.terminal?.output.pause();
    void client.drained().then(() => {
      if (this.pausedFor !== client) return;
      this.pausedFor = undefined;
      this.terminal?.output.resume();
    });
  }

  private async watchExit(terminal: SandboxTerminal, lease: SessionLease): Promise<void> {
    const exit = await terminal.exited;
    await outputEnd(terminal.output);
    this.finish(await this.endOf(exit, lease));
  }

  /**
   * How the shell ended. Killed by a signal it did not get from a hang-up, it may have died with
   * its session (which kills every process in it), whose end is seen after the shell's.
   */
  private async endOf(exit: SandboxExit, lease: SessionLease): Promise<ShellConnectionEnd> {
    if (exit.code === null && !this.hungUp) {
      const reason = await lease.endReasonSoon();
      if (reason !== undefined) return { kind: "sessionEnded", reason };
    }
    return { kind: "exited", exitCode: exitCode(exit) };
  }

  private finish(end: ShellConnectionEnd): void {
    if (this.end !== undefined) return;
    this.end = end;
    this.holdForConnection();
    this.log.info("shell ended", { ...this.ids, end });
    const attached = this.attached;
    this.attached = undefined;
    if (attached !== undefined) {
      attached.connection.release();
      attached.client.closed(end);
    }
    if (attached !== undefined || this.abandoned || end.kind === "sessionEnded") {
      this.forget();
      return;
    }
    this.keepEndedForWindow();
  }
}

/**
 * The session's end outlives its shells: what it calls back holds the shell only weakly, else
 * each shell opened and exited in a long session would stay in memory (its ring, its terminal)
 * until the session ends. A shell the registry holds (running, or ended and kept) hears it. A
 * function of its own: a closure made inside a method would share the method's `this`.
 */
function tellWhenSessionEnds(lease: SessionLease, shell: WeakRef<Shell>): void {
  void lease.ended.then((reason) => {
    shell.deref()?.sessionEnded(reason);
  });
}

/**
 * Resolves when the terminal's output has ended. A background job still holding the terminal
 * open keeps it from ending: once everything written before the exit has been read (nothing
 * left buffered), the output is given up after a moment's quiet, as a terminal window closes.
 */
async function outputEnd(output: Readable): Promise<void> {
  if (output.readableEnded || output.destroyed) return;
  const ended = Promise.race([once(output, "end"), once(output, "close")]).then(
    () => true,
    () => true,
  );
  for (;;) {
    const over = await Promise.race([ended, delay(outputEndAfterExitMs, false, { ref: false })]);
    if (over) return;
    if (output.readableLength === 0) {
      output.destroy();
      return;
    }
  }
}

function startFailure(error: unknown): BerthError {
  if (BerthError.isInstance(error)) return error;
  return new BerthError(
    "RuntimeClientError",
    `The shell could not start in the session: ${error instanceof Error ? error.message : String(error)}`,
    { cause: error },
  );
}
