import type { Readable } from "node:stream";
import type { OutputText } from "./output-text.ts";

/**
 * What the core needs from an isolation technology. A driver (bubblewrap today; runc, a microVM
 * or a Kubernetes pod later) starts one sandbox per session and hands back how to reach the
 * agent's HTTP port inside it.
 */
export interface SandboxDriver {
  start(spec: SandboxSpec, signal: AbortSignal): Promise<Sandbox>;
  /**
   * The kinds of volume handle this driver can attach, most preferred first; session storage
   * asks its volume store for the first kind the store can give.
   */
  readonly volumeKinds: readonly VolumeHandle["kind"][];
  /**
   * What an unpacked image root must hold for this driver to start a sandbox on it: the folders
   * and files it mounts over, created by the image store (as what they must be) before first use.
   */
  readonly imageRootNeeds: ImageRootNeeds;
  /** One line for the start-up log: the technology and its options. */
  describe(): string;
  /** Kills every sandbox and releases host resources; called at shutdown. */
  close(): Promise<void>;
}

/** The files a sandbox runs on. */
export type SandboxFilesystem =
  /** The host's system programs (/usr) with the agent's code read-only at `/app`, run as the
   * driver's own sandbox user in /app. */
  | { kind: "code"; codeDir: string; interpreter?: SandboxInterpreter }
  /** A container image's unpacked files as the root (read-only, with a private writable layer
   * on top), run as the image's user in its working directory. */
  | { kind: "image"; rootfsDir: string; user: SandboxIdentity; workingDir: string };

/**
 * A language install of the host that a code sandbox runs its agent with (a Python runtime's
 * Python): bound read-only where the sandbox sees it, its programs first on PATH by name.
 */
export interface SandboxInterpreter {
  /** Host folders or files (hostPath) the sandbox sees read-only at sandboxPath. */
  binds: { hostPath: string; sandboxPath: string }[];
  /** Command name -> the program it runs, as a path inside the sandbox (e.g. python3 -> .../bin/python3.12). */
  commands: Record<string, string>;
}

/** A uid and gid as the sandbox's processes see them; the host sees the session's own uid. */
export interface SandboxIdentity {
  uid: number;
  gid: number;
}

export interface SandboxSpec {
  filesystem: SandboxFilesystem;
  /** Command run inside the sandbox, e.g. ["node", "main.js"]; interpreters are on PATH. */
  command: string[];
  /** The image's environment (if any), the runtime's environmentVariables and what an agent
   * expects (PORT, ...). Nothing else. */
  environment: Record<string, string>;
  /**
   * The port the agent listens on inside the sandbox (8080, 8000 for MCP, 9000 for A2A: see
   * core/protocols.ts); what agentEndpoint reaches.
   */
  agentPort: number;
  /** Session storage, attached read-write at each mountPath (under /mnt) before the agent starts. */
  volumes: { mountPath: string; volume: VolumeHandle }[];
  /**
   * Called with each line the agent writes to stdout or stderr. A driver holds no more than a
   * bounded line: a longer one comes cut (and marked as cut), its rest dropped.
   */
  onOutput: (stream: "stdout" | "stderr", line: string) => void;
}

/** How to open a connection to the agent's port (SandboxSpec.agentPort) inside the sandbox. */
export type AgentEndpoint = { socketPath: string } | { host: string; port: number };

export interface SandboxExit {
  code: number | null;
  signal: string | null;
}

export interface SandboxUsage {
  memoryBytes: number | undefined;
  processes: number | undefined;
  /** CPU time every process of the sandbox used so far, in seconds; absent when not known. */
  cpuSeconds?: number | undefined;
}

export interface Sandbox {
  readonly name: string;
  readonly agentEndpoint: AgentEndpoint;
  /** Settles when every process of the sandbox is gone. */
  readonly exited: Promise<SandboxExit>;
  /** Kills every process in the sandbox at once (no grace period) and waits until they are gone. */
  kill(): Promise<void>;
  usage(): Promise<SandboxUsage>;
  /**
   * Starts a program beside the agent: same namespaces, filesystem, uid, limits, environment and
   * working directory. Rejects if it cannot start.
   */
  exec(argv: string[]): Promise<SandboxCommand>;
  /**
   * Starts a program beside the agent, as exec does, on a terminal of its own (a pseudo-terminal
   * made inside the sandbox, the program's controlling terminal). Rejects if it cannot start, or
   * with a BerthError when the driver has no terminals.
   */
  openTerminal(argv: string[], options: TerminalOptions): Promise<SandboxTerminal>;
}

export interface TerminalOptions {
  /** The window size the program first sees. */
  columns: number;
  rows: number;
  /** Added to the sandbox's environment (TERM, ...). */
  environment: Record<string, string>;
}

/** A program started with Sandbox.openTerminal. */
export interface SandboxTerminal {
  /**
   * What the terminal shows: Buffer chunks, as the program wrote them (a terminal merges stdout
   * and stderr). Not reading holds the program at its next write once the terminal's buffer is
   * full: output never piles up in memory.
   */
  readonly output: Readable;
  /** Types bytes at the terminal (keys, Ctrl-C as 0x03). Resolves once the driver took them. */
  write(bytes: Buffer): Promise<void>;
  /** Changes the window size; the program gets SIGWINCH. */
  resize(columns: number, rows: number): void;
  /**
   * Hangs the terminal up, as closing a terminal window does: the program's session gets
   * SIGHUP (an interactive shell, which ignores SIGTERM, exits on it). `exited` then settles as
   * killed by SIGHUP unless the program had already exited; what it left running is terminate()'s.
   */
  hangUp(): void;
  /** Settles when the program's own process has exited (with what it had written by then read). */
  readonly exited: Promise<SandboxExit>;
  /** Ends every process the program started: SIGTERM, then SIGKILL after graceMs. */
  terminate(graceMs: number): Promise<void>;
}

/**
 * A piece of a command's output: the bytes the program wrote, which the core encodes as output
 * text (output-encoder.ts), or output text a driver already encoded where it read them (a fast
 * path: whole characters and escapes, see output-text.ts).
 */
export type CommandOutput =
  | { stream: "stdout" | "stderr"; bytes: Buffer }
  | { stream: "stdout" | "stderr"; text: OutputText };

/**
 * A session's storage volume as a sandbox driver receives it; each driver attaches the kinds it
 * knows its own way.
 */
export type VolumeHandle =
  /** A folder on this host holding the volume's files (mounted or plain), to be bound in. */
  | { kind: "host-directory"; volumeId: string; path: string }
  /** A filesystem image file on this host (ext4), for drivers that attach block devices. */
  | { kind: "block-image"; volumeId: string; path: string; filesystem: "ext4" };

/** See SandboxDriver.imageRootNeeds; paths relative to the root, without a leading slash. */
export interface ImageRootNeeds {
  folders: readonly string[];
  files: readonly string[];
}

/**
 * Thrown by SandboxDriver.start when every sandbox slot of this host is taken (its uids, for
 * bubblewrap): a busy server, not a fault of the caller's request; a retry may succeed.
 */
export class NoSandboxSlotError extends Error {
  override readonly name = "NoSandboxSlotError";
}

/** A program started with Sandbox.exec. */
export interface SandboxCommand {
  /**
   * Its stdout and stderr chunks (object mode) in the order they were read. Not reading holds the
   * program at its next write once the pipe is full: output never piles up in memory.
   */
  readonly output: Readable;
  /** Settles when the program's own process has exited (with what it had written by then read). */
  readonly exited: Promise<SandboxExit>;
  /**
   * Ends every process the program started, including ones that left its session or tree:
   * SIGTERM, then SIGKILL to whatever is left after graceMs. Resolves when none is left.
   */
  terminate(graceMs: number): Promise<void>;
}
