import type { Readable } from "node:stream";

/**
 * What the core needs from an isolation technology. A driver (bubblewrap today; runc, a microVM
 * or a Kubernetes pod later) starts one sandbox per session and hands back how to reach the
 * agent's HTTP port inside it.
 */
export interface SandboxDriver {
  start(spec: SandboxSpec, signal: AbortSignal): Promise<Sandbox>;
  /** Kills every sandbox and releases host resources; called at shutdown. */
  close(): Promise<void>;
}

export interface SandboxSpec {
  /** Host folder with the agent's code, mounted read-only at `/app` (the working directory). */
  codeDir: string;
  /** Command run inside the sandbox, e.g. ["node", "main.js"]; interpreters are on PATH. */
  command: string[];
  /** The runtime's environmentVariables plus what an agent expects (PORT, ...). Nothing else. */
  environment: Record<string, string>;
  /** Host directories to mount read-write at their mountPath (under /mnt) before the agent starts. */
  volumes: { mountPath: string; hostPath: string }[];
  /** Called with each line the agent writes to stdout or stderr. */
  onOutput: (stream: "stdout" | "stderr", line: string) => void;
}

/** How to open a connection to the agent's port 8080 inside the sandbox. */
export type AgentEndpoint = { socketPath: string } | { host: string; port: number };

export interface SandboxExit {
  code: number | null;
  signal: string | null;
}

export interface SandboxUsage {
  memoryBytes: number | undefined;
  processes: number | undefined;
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
}

export interface CommandOutput {
  stream: "stdout" | "stderr";
  data: Buffer;
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
