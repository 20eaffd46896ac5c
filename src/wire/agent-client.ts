import { Agent, request, type RequestOptions } from "node:http";
import type { AgentEndpoint } from "../core/sandbox.ts";
import type { AgentHealth } from "../core/sessions.ts";

/** Connection options for a request to the agent's HTTP server inside a sandbox. */
export function agentTarget(
  endpoint: AgentEndpoint,
): Pick<RequestOptions, "socketPath" | "host" | "port"> {
  return "socketPath" in endpoint
    ? { socketPath: endpoint.socketPath }
    : { host: endpoint.host, port: endpoint.port };
}

const keepAliveAgents = new Map<string, Agent>();

/**
 * A keep-alive connection pool per agent, so warm invocations reuse a connection instead of
 * opening one (and forking a bridge process inside the sandbox) each time.
 */
export function agentPool(endpoint: AgentEndpoint, ended: Promise<unknown>): Agent {
  const key = JSON.stringify(endpoint);
  let pool = keepAliveAgents.get(key);
  if (pool === undefined) {
    const created = new Agent({
      keepAlive: true,
      maxSockets: 64,
      maxFreeSockets: 4,
      keepAliveMsecs: 1000,
    });
    keepAliveAgents.set(key, created);
    void ended.finally(() => {
      keepAliveAgents.delete(key);
      created.destroy();
    });
    pool = created;
  }
  return pool;
}

/** GET /ping: resolves with the agent's health, rejects when it does not answer in time. */
export function pingAgent(endpoint: AgentEndpoint, timeoutMs: number): Promise<AgentHealth> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      { ...agentTarget(endpoint), path: "/ping", method: "GET", agent: false, timeout: timeoutMs },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          if ((response.statusCode ?? 500) >= 300) {
            reject(new Error(`/ping answered ${response.statusCode ?? "no status"}`));
            return;
          }
          resolve(readHealth(Buffer.concat(chunks).toString("utf8")));
        });
        response.on("error", reject);
      },
    );
    outgoing.on("timeout", () => outgoing.destroy(new Error("/ping timed out")));
    outgoing.on("error", reject);
    outgoing.end();
  });
}

function readHealth(body: string): AgentHealth {
  try {
    const parsed = JSON.parse(body) as { status?: unknown };
    return parsed.status === "HealthyBusy" ? "HealthyBusy" : "Healthy";
  } catch {
    return "Healthy"; // a 2xx /ping without a JSON body still means the agent is up
  }
}
