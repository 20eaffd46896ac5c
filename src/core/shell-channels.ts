/**
 * The frames of InvokeAgentRuntimeCommandShell, as pure functions both ends use (the server in
 * wire/shell-socket.ts, the CLI's `berth shell`). The framing is Kubernetes' v5.channel.k8s.io:
 * every WebSocket message is binary, its first byte the channel, the rest the payload.
 *
 * | channel | direction | payload |
 * |---|---|---|
 * | 0 stdin | client to Berth | bytes typed at the terminal (Ctrl-C is 0x03) |
 * | 1 stdout | Berth to client | what the terminal shows (a terminal merges stdout and stderr) |
 * | 2 stderr | Berth to client | unused by a terminal; kept for the framing |
 * | 3 status | Berth to client | ShellStatus JSON: first when the shell is open, last before Berth closes |
 * | 4 resize | client to Berth | `{"width":N,"height":N}` (columns, rows; Kubernetes' `Width`/`Height` too) |
 * | 5 heartbeat | both | anything; Berth answers each with a heartbeat carrying the same bytes (the first 65,535 of a longer one), none while the client leaves its answers unread |
 * | 0xFF close | client to Berth | the client hangs up: the shell is ended, its last status sent, the socket closed |
 *
 * A frame Berth sends is at most 64 KiB, channel byte included: longer output is split. Berth
 * takes a payload of up to 64 KiB after the channel byte. Only a 0xFF frame ends the shell: a
 * WebSocket close (whatever its code) or a dropped connection leaves it running for the
 * reconnect window (shells.ts), for a client to reattach to.
 */

export const shellChannels = {
  stdin: 0,
  stdout: 1,
  stderr: 2,
  status: 3,
  resize: 4,
  heartbeat: 5,
  close: 0xff,
} as const;

export type ShellChannel = (typeof shellChannels)[keyof typeof shellChannels];

/** The WebSocket subprotocol the shell speaks. */
export const shellProtocol = "v5.channel.k8s.io";

/** The largest frame Berth sends, channel byte included. */
export const maxSentFrameBytes = 65_536;
/** The largest frame Berth takes: a payload of 64 KiB after its channel byte. */
export const maxReceivedFrameBytes = 65_537;

/**
 * How Berth closes a shell's WebSocket. Every close but a protocol error comes after a status
 * frame that says why.
 */
export const shellCloseCodes = {
  /** The shell ended (its exit status, or the session's end, in the last status frame). */
  ended: 1000,
  /** Berth is shutting down. */
  goingAway: 1001,
  /** A text frame: the shell speaks binary frames only. */
  unsupportedData: 1003,
  /** A frame larger than maxReceivedFrameBytes. */
  tooBig: 1009,
  /** Berth failed; the cause is in its log. */
  internalError: 1011,
  /**
   * Another connection attached to this shell, which runs on there. A client that reconnects on
   * its own should not reconnect after this one: the two would take the shell from each other.
   */
  replaced: 4000,
} as const;

export interface ShellFrame {
  channel: number;
  payload: Buffer;
}

/** One frame; throws if it would be larger than maxSentFrameBytes (split output with encodeFrames). */
export function encodeFrame(channel: ShellChannel, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  if (payload.length + 1 > maxSentFrameBytes) {
    throw new RangeError(
      `A shell frame holds at most ${maxSentFrameBytes - 1} payload bytes (got ${payload.length})`,
    );
  }
  const frame = Buffer.allocUnsafe(payload.length + 1);
  frame[0] = channel;
  frame.set(payload, 1);
  return frame;
}

/** The payload as frames of at most maxSentFrameBytes each, in order (one frame when empty). */
export function encodeFrames(channel: ShellChannel, payload: Uint8Array): Buffer[] {
  const step = maxSentFrameBytes - 1;
  if (payload.length <= step) return [encodeFrame(channel, payload)];
  const frames: Buffer[] = [];
  for (let start = 0; start < payload.length; start += step) {
    frames.push(encodeFrame(channel, payload.subarray(start, start + step)));
  }
  return frames;
}

/**
 * A received WebSocket message as one Buffer. `ws` hands a message over (its RawData) as a
 * Buffer, an ArrayBuffer or a fragmented message's pieces, as its binaryType says.
 */
export function messageBytes(data: Buffer | ArrayBuffer | Buffer[]): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/**
 * A received frame's channel and payload (sharing the frame's memory); undefined for an empty
 * frame, which has no channel. Channels are not checked: receivers ignore those they do not know.
 */
export function decodeFrame(frame: Buffer): ShellFrame | undefined {
  const channel = frame[0];
  if (channel === undefined) return undefined;
  return { channel, payload: frame.subarray(1) };
}

export interface WindowSize {
  /** Columns. */
  width: number;
  /** Rows. */
  height: number;
}

/** The largest window side a terminal takes (struct winsize holds 16 bits). */
export const maxWindowSide = 65_535;

export function encodeResize(size: WindowSize): Buffer {
  return encodeFrame(
    shellChannels.resize,
    Buffer.from(JSON.stringify({ width: size.width, height: size.height })),
  );
}

/**
 * A resize payload's size: `{"width":N,"height":N}`, or `Width`/`Height` as Kubernetes clients
 * send them. Undefined unless both are whole numbers from 1 to maxWindowSide.
 */
export function parseResize(payload: Buffer): WindowSize | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(payload.toString("utf8"));
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const fields = parsed as Record<string, unknown>;
  const width = fields["width"] ?? fields["Width"];
  const height = fields["height"] ?? fields["Height"];
  if (!isWindowSide(width) || !isWindowSide(height)) return undefined;
  return { width, height };
}

export function isWindowSide(value: unknown): value is number {
  return (
    typeof value === "number" && Number.isInteger(value) && value >= 1 && value <= maxWindowSide
  );
}

/**
 * Why a connection to a shell ends. `exited` and `sessionEnded` end the shell itself; the others
 * end only this connection (the shell runs on, or is about to end with the server).
 */
export type ShellConnectionEnd =
  /** The shell's process exited: its exit code, or 128 + N when signal N killed it. */
  | { kind: "exited"; exitCode: number }
  /** The session ended (StopRuntimeSession, its idle timeout or lifetime, its agent exited). */
  | { kind: "sessionEnded"; reason: string }
  /** Another connection attached to the shell. */
  | { kind: "replaced" }
  /** Berth is shutting down. */
  | { kind: "shuttingDown" }
  /** Berth failed; `message` says where to look. */
  | { kind: "failed"; message: string };

/**
 * The status channel's JSON, shaped like Kubernetes' metav1.Status so exec clients read it:
 * `status` is Running in the first frame (with `reconnected`), then Success or Failure in the
 * last. A non-zero exit carries, as Kubernetes' exec does, reason NonZeroExitCode and
 * `details.causes[{reason: "ExitCode", message: "N"}]`; Berth adds `exitCode` as a number.
 *
 * Opened:  {"kind":"Status","apiVersion":"v1","metadata":{},"status":"Running","shellId":"a1",
 *           "runtimeSessionId":"…","reconnected":false}
 * Exited:  {…,"status":"Success","shellId":"a1","exitCode":0}
 *          {…,"status":"Failure","shellId":"a1","exitCode":3,"reason":"NonZeroExitCode",
 *           "message":"The shell exited with code 3","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}
 * Other ends: {…,"status":"Failure","shellId":"a1","reason":"SessionEnded"|"Replaced"|
 *           "ShuttingDown"|"InternalError","message":"…"}
 */
export interface ShellStatus {
  kind: "Status";
  apiVersion: "v1";
  metadata: Record<string, never>;
  status: "Running" | "Success" | "Failure";
  shellId: string;
  /** In the first frame: the session the shell runs in (to reconnect with). */
  runtimeSessionId?: string;
  /** In the first frame: whether this connection reattached to a shell that was running. */
  reconnected?: boolean;
  exitCode?: number;
  reason?: "NonZeroExitCode" | "SessionEnded" | "Replaced" | "ShuttingDown" | "InternalError";
  message?: string;
  details?: { causes: { reason: "ExitCode"; message: string }[] };
}

const statusBase = { kind: "Status", apiVersion: "v1", metadata: {} } as const;

export function openedStatus(opened: {
  shellId: string;
  runtimeSessionId: string;
  reconnected: boolean;
}): ShellStatus {
  return { ...statusBase, status: "Running", ...opened };
}

export function closingStatus(shellId: string, end: ShellConnectionEnd): ShellStatus {
  switch (end.kind) {
    case "exited":
      return end.exitCode === 0
        ? { ...statusBase, status: "Success", shellId, exitCode: 0 }
        : {
            ...statusBase,
            status: "Failure",
            shellId,
            exitCode: end.exitCode,
            reason: "NonZeroExitCode",
            message: `The shell exited with code ${end.exitCode}`,
            details: { causes: [{ reason: "ExitCode", message: String(end.exitCode) }] },
          };
    case "sessionEnded":
      return failure(shellId, "SessionEnded", `The session ended: ${end.reason}`);
    case "replaced":
      return failure(
        shellId,
        "Replaced",
        `Another connection attached to shell ${shellId}; it runs on there`,
      );
    case "shuttingDown":
      return failure(shellId, "ShuttingDown", "Berth is shutting down; its sessions end with it");
    case "failed":
      return failure(shellId, "InternalError", end.message);
  }
}

function failure(
  shellId: string,
  reason: NonNullable<ShellStatus["reason"]>,
  message: string,
): ShellStatus {
  return { ...statusBase, status: "Failure", shellId, reason, message };
}

export function encodeStatus(status: ShellStatus): Buffer {
  return encodeFrame(shellChannels.status, Buffer.from(JSON.stringify(status)));
}

/** A status payload as received; undefined when it is not a status object. */
export function parseStatus(payload: Buffer): ShellStatus | undefined {
  try {
    const parsed = JSON.parse(payload.toString("utf8")) as unknown;
    if (typeof parsed !== "object" || parsed === null) return undefined;
    const status = (parsed as Record<string, unknown>)["status"];
    return typeof status === "string" ? (parsed as ShellStatus) : undefined;
  } catch {
    return undefined;
  }
}

/** The close code that goes with a connection's end. */
export function closeCodeOf(end: ShellConnectionEnd): number {
  switch (end.kind) {
    case "exited":
    case "sessionEnded":
      return shellCloseCodes.ended;
    case "replaced":
      return shellCloseCodes.replaced;
    case "shuttingDown":
      return shellCloseCodes.goingAway;
    case "failed":
      return shellCloseCodes.internalError;
  }
}
