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
}
