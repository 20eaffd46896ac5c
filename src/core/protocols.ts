/**
 * The server protocols a runtime's agent may speak (`protocolConfiguration.serverProtocol`), and
 * what each means for Berth: the port the agent listens on inside its session, where an
 * invocation is sent, and how Berth asks whether the agent is up (and busy). docs/protocols.md
 * describes them for users.
 */

export const serverProtocols = ["HTTP", "MCP", "A2A", "AGUI"] as const;
export type ServerProtocol = (typeof serverProtocols)[number];

/**
 * How Berth asks an agent whether it is up, at start (until it is) and when its session has been
 * idle (whether it is busy): always GET /ping, read one of two ways.
 *
 * - "ping": the runtime service contract (HTTP, AG-UI). Only a 2xx answer means up; its JSON
 *   `{"status": "Healthy" | "HealthyBusy"}` says whether background work is running.
 * - "any-answer": servers with no /ping of their own (MCP, A2A: the SDKs that write them answer
 *   404 there). Any HTTP answer, whatever its status, means the server is up and idle; a 2xx
 *   answer with the contract's JSON still counts, so an MCP or A2A server that chooses to serve
 *   /ping can say HealthyBusy and keep its session from being reaped while it works.
 *
 * AgentCore documents /ping for HTTP agents only; "any-answer" is Berth's choice for the others
 * (a server that accepts connections on its port and speaks HTTP is ready to take requests).
 */
export type HealthCheck = "ping" | "any-answer";

export const healthPath = "/ping";

export interface ProtocolContract {
  protocol: ServerProtocol;
  /** The port the agent listens on (all interfaces) inside its session: its PORT. */
  port: number;
  /** Where InvokeAgentRuntime's payload is POSTed on the agent. */
  invocationPath: string;
  health: HealthCheck;
  /** Where GetAgentCard reads the agent's card; only A2A agents have one. */
  agentCardPath: string | undefined;
  /** Where `GET /runtimes/{arn}/ws` reaches the agent; only HTTP and AG-UI agents have one. */
  webSocketPath: string | undefined;
}

const contracts: Record<ServerProtocol, ProtocolContract> = {
  HTTP: {
    protocol: "HTTP",
    port: 8080,
    invocationPath: "/invocations",
    health: "ping",
    agentCardPath: undefined,
    webSocketPath: "/ws",
  },
  MCP: {
    protocol: "MCP",
    port: 8000,
    invocationPath: "/mcp",
    health: "any-answer",
    agentCardPath: undefined,
    webSocketPath: undefined,
  },
  A2A: {
    protocol: "A2A",
    port: 9000,
    invocationPath: "/",
    health: "any-answer",
    agentCardPath: "/.well-known/agent-card.json",
    webSocketPath: undefined,
  },
  AGUI: {
    protocol: "AGUI",
    port: 8080,
    invocationPath: "/invocations",
    health: "ping",
    agentCardPath: undefined,
    webSocketPath: "/ws",
  },
};

export function protocolContract(protocol: ServerProtocol): ProtocolContract {
  return contracts[protocol];
}

/** What the agent must do to count as started, for the startup-timeout message. */
export function describeReadiness(contract: ProtocolContract): string {
  return contract.health === "ping"
    ? `answer GET ${healthPath} on port ${contract.port}`
    : `answer HTTP on port ${contract.port} (GET ${healthPath}, any status)`;
}
