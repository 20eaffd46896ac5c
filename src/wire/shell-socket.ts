import type { RawData, WebSocket } from "ws";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { noObserver, type Observer } from "../core/observer.ts";
import type { SessionManager } from "../core/sessions.ts";
import {
  closeCodeOf,
  closingStatus,
  decodeFrame,
  encodeFrame,
  encodeFrames,
  encodeStatus,
  isWindowSide,
  maxReceivedFrameBytes,
  maxSentFrameBytes,
  messageBytes,
  openedStatus,
  parseResize,
  shellChannels,
  shellCloseCodes,
  shellProtocol,
  type ShellConnectionEnd,
  type WindowSize,
} from "../core/shell-channels.ts";
import {
  checkShellId,
  ShellRegistry,
  type ShellClient,
  type ShellConnection,
  type ShellSettings,
} from "../core/shells.ts";
import { invocationTargetOf, requireSessionId } from "./data-plane-request.ts";
import type { WireRequest } from "./http.ts";
import type { SocketOperation, SocketOperationInput } from "./socket-operation.ts";

export interface ShellSocketOptions {
  settings: ShellSettings;
  log: Logger;
  /**
   * How often Berth pings the client (a WebSocket ping, which every client answers unasked): an
   * idle shell's connection stays open through proxies, and a client that answered none of the
   * last interval's pings is taken as gone (its shell waits for a reconnect).
   */
  heartbeatIntervalMs?: number;
  /** Told of each shell's opening (traces); none by default. */
  observer?: Observer;
}

const defaultHeartbeatIntervalMs = 30_000;
/** Output held unsent for a client past which the terminal is no longer read. */
const outputHighWaterBytes = 256 * 1024;
/** Keystrokes not yet taken by the terminal past which the socket is no longer read. */
const inputHighWaterBytes = 1024 * 1024;

/** InvokeAgentRuntimeCommandShell: an interactive shell in the session, over a WebSocket. */
export function shellOperations(
  context: CoreContext,
  sessions: SessionManager,
  options: ShellSocketOptions,
): SocketOperation[] {
  const shells = new ShellRegistry({ settings: options.settings, log: options.log });
  return [
    {
      name: "InvokeAgentRuntimeCommandShell",
      path: "/runtimes/:runtimeArn/ws/shells".split("/"),
      protocols: [shellProtocol],
      maxMessageBytes: maxReceivedFrameBytes,
      session: { place: true },
      handle: (input) => openShell(context, sessions, shells, options, input),
    },
  ];
}

async function openShell(
  context: CoreContext,
  sessions: SessionManager,
  shells: ShellRegistry,
  options: ShellSocketOptions,
  input: SocketOperationInput,
): Promise<void> {
  const { query } = input.request;
  const sessionId = sessionIdOf(input.request);
  const shellIdText = query.get("shellId");
  const shellId =
    shellIdText === null || shellIdText === "" ? undefined : checkShellId(shellIdText);
  const size = windowSizeOf(query);
  const target = await invocationTargetOf(context, input);
  const lease = await sessions.acquire(target.runtime, target.version, sessionId);
  // A step for starting (or reattaching to) the shell; the conversation is the request's own.
  const connection = await (options.observer ?? noObserver).step(
    "shell.open",
    { runtimeId: target.runtime.id, sessionId },
    () => shells.connect({ runtimeId: target.runtime.id, sessionId, shellId, size, lease }),
  );
  let socket: WebSocket;
  try {
    socket = await input.accept();
  } catch (error) {
    connection.detach();
    throw error;
  }
  await new ShellSocket(socket, connection, options).conversation(input.shutdown);
}

/**
 * The session id from its header, or from the query parameter of the same name (a browser's
 * WebSocket cannot set headers). Required: a cluster routes the upgrade by it before it is
 * served, so a shell must name the session it opens in.
 */
function sessionIdOf(request: WireRequest): string {
  return requireSessionId(request.headers, request.query);
}

/** `?width=&height=`: both or neither, each 1 to 65535. */
function windowSizeOf(query: URLSearchParams): WindowSize | undefined {
  const width = query.get("width");
  const height = query.get("height");
  if (width === null && height === null) return undefined;
  const size = { width: Number(width), height: Number(height) };
  if (width !== null && height !== null && isWindowSide(size.width) && isWindowSide(size.height))
    return size;
  throw new BerthError(
    "ValidationException",
    `width and height (the terminal's columns and rows) must be given together, each a whole number from 1 to 65535 (got width=${width ?? "none"}, height=${height ?? "none"})`,
    { reason: "FieldValidationFailed" },
  );
}

/**
 * One WebSocket attached to a shell: frames in (keys, resizes, heartbeats, a hang-up), output
 * and status frames out. It ends when the socket closes; a close Berth did not start leaves the
 * shell for a reconnect.
 */
class ShellSocket implements ShellClient {
  private readonly socket: WebSocket;
  private readonly connection: ShellConnection;
  private readonly heartbeatIntervalMs: number;
  private readonly log: Logger;
  /** Settles when the last frame sent so far has been written to the connection (or failed). */
  private lastSend: Promise<void> = Promise.resolve();
  private closed_ = false;
  /** Keystrokes go to the terminal one write at a time, in order. */
  private typing: Promise<void> = Promise.resolve();
  private pendingInputBytes = 0;
  /**
   * Whether Berth stopped reading the socket (typed input backed up) since the last ping: its
   * pong may be unread, so silence then says nothing of the client.
   */
  private pausedSincePing = false;

  constructor(socket: WebSocket, connection: ShellConnection, options: ShellSocketOptions) {
    this.socket = socket;
    this.connection = connection;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? defaultHeartbeatIntervalMs;
    this.log = options.log;
  }

  /** Attaches to the shell and relays until the socket closes. */
  conversation(shutdown: AbortSignal): Promise<void> {
    const { socket, connection } = this;
    const over = new Promise<void>((resolve) => {
      socket.once("close", () => {
        resolve();
      });
    });
    socket.on("error", (error) => {
      this.log.info("shell connection failed", {
        shellId: connection.shellId,
        error: error.message,
      });
    });
    const stopHeartbeat = this.heartbeat();
    const onShutdown = () => {
      this.closed({ kind: "shuttingDown" });
    };
    shutdown.addEventListener("abort", onShutdown, { once: true });
    socket.on("message", (data: RawData, isBinary: boolean) => {
      this.receive(messageBytes(data), isBinary);
    });
    this.send(
      encodeStatus(
        openedStatus({
          shellId: connection.shellId,
          runtimeSessionId: connection.runtimeSessionId,
          reconnected: connection.reconnected,
        }),
      ),
    );
    connection.attach(this);
    if (shutdown.aborted) onShutdown();
    return over.finally(() => {
      stopHeartbeat();
      shutdown.removeEventListener("abort", onShutdown);
      connection.detach();
    });
  }

  output(chunk: Buffer): boolean {
    for (const frame of encodeFrames(shellChannels.stdout, chunk)) this.send(frame);
    return this.socket.bufferedAmount < outputHighWaterBytes;
  }

  drained(): Promise<void> {
    return this.lastSend;
  }

  closed(end: ShellConnectionEnd): void {
    if (this.closed_) return;
    this.closed_ = true;
    this.send(encodeStatus(closingStatus(this.connection.shellId, end)));
    this.socket.close(closeCodeOf(end), reasonOf(end));
  }

  private send(frame: Buffer): void {
    if (this.socket.readyState !== this.socket.OPEN) return;
    this.lastSend = new Promise((resolve) => {
      // Called once the frame is written out, or with the error that kept it from being sent.
      this.socket.send(frame, { binary: true }, () => {
        resolve();
      });
    });
  }

  private receive(frame: Buffer, isBinary: boolean): void {
    if (!isBinary) {
      this.closeForProtocol(
        shellCloseCodes.unsupportedData,
        "text frames are not part of v5.channel.k8s.io: send binary frames, the first byte the channel",
      );
      return;
    }
    const decoded = decodeFrame(frame);
    if (decoded === undefined || this.closed_) return;
    switch (decoded.channel) {
      case shellChannels.stdin:
        this.type(decoded.payload);
        break;
      case shellChannels.resize: {
        const size = parseResize(decoded.payload);
        if (size !== undefined) this.connection.resize(size);
        break;
      }
      case shellChannels.heartbeat:
        this.answerHeartbeat(decoded.payload);
        break;
      case shellChannels.close:
        this.connection.hangUp();
        break;
      default:
        // Channels a client does not send (stdout, stderr, status) and unknown ones.
        break;
    }
  }

  /**
   * The same bytes back (as many as a frame holds); nothing while the client has not read the
   * output already sent, so a client that sends heartbeats and reads nothing fills no buffer.
   */
  private answerHeartbeat(payload: Buffer): void {
    if (this.socket.bufferedAmount >= outputHighWaterBytes) return;
    this.send(encodeFrame(shellChannels.heartbeat, payload.subarray(0, maxSentFrameBytes - 1)));
  }

  /** Keys to the terminal in order; a client typing faster than it takes them is not read. */
  private type(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.pendingInputBytes += bytes.length;
    if (this.pendingInputBytes > inputHighWaterBytes) {
      this.socket.pause();
      this.pausedSincePing = true;
    }
    this.typing = this.typing
      .then(() => this.connection.write(bytes))
      .catch(() => undefined) // a terminal gone: its end reaches the client through closed()
      .finally(() => {
        this.pendingInputBytes -= bytes.length;
        if (this.pendingInputBytes <= inputHighWaterBytes && this.socket.isPaused)
          this.socket.resume();
      });
  }

  private closeForProtocol(code: number, reason: string): void {
    if (this.closed_) return;
    this.closed_ = true;
    this.socket.close(code, reason);
  }

  /**
   * Pings every interval; a client that answered none of the last interval's pings (nor sent
   * anything) is cut off, and its shell waits for it to reconnect. An interval in which Berth
   * stopped reading the socket is no evidence: its verdict waits for one read throughout.
   * Returns what stops it.
   */
  private heartbeat(): () => void {
    let heard = true;
    const markHeard = () => {
      heard = true;
    };
    this.socket.on("pong", markHeard);
    this.socket.on("message", markHeard);
    const timer = setInterval(() => {
      if (!heard && !this.pausedSincePing) {
        this.socket.terminate();
        return;
      }
      heard = false;
      this.pausedSincePing = this.socket.isPaused;
      this.socket.ping();
    }, this.heartbeatIntervalMs);
    timer.unref();
    return () => {
      clearInterval(timer);
    };
  }
}

/** The close frame's reason: short (a close reason holds at most 123 bytes). */
function reasonOf(end: ShellConnectionEnd): string {
  switch (end.kind) {
    case "exited":
      return `shell exited with code ${end.exitCode}`;
    case "sessionEnded":
      return "session ended";
    case "replaced":
      return "another connection attached to this shell";
    case "shuttingDown":
      return "Berth is shutting down";
    case "failed":
      return "internal error";
  }
}
