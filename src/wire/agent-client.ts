import { Agent, request, type RequestOptions } from "node:http";
import { healthPath, type HealthCheck } from "../core/protocols.ts";
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

/**
 * GET /ping: resolves with the agent's health; rejects when the whole answer (headers and body)
 * has not arrived within timeoutMs, when it is not 2xx (under the "ping" check; "any-answer"
 * takes any status as Healthy, see core/protocols.ts), or when its body is longer than
 * maxBodyBytes (the contract's answer, {"status":"Healthy","time_of_last_update":...}, is tens
 * of bytes; reading on would let an agent fill Berth's memory). The deadline is for the whole
 * answer, not for silence between bytes: an answer that trickles a byte at a time cannot hold
 * the caller.
 */
export function pingAgent(
  endpoint: AgentEndpoint,
  timeoutMs: number,
  maxBodyBytes: number,
  health: HealthCheck = "ping",
): Promise<AgentHealth> {
  return new Promise((resolve, reject) => {
    const outgoing = request({
      ...agentTarget(endpoint),
      path: healthPath,
      method: "GET",
      agent: false,
    });
    const deadline = setTimeout(() => {
      fail(new Error(`/ping did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const fail = (error: Error): void => {
      clearTimeout(deadline);
      outgoing.destroy();
      reject(error);
    };
    outgoing.on("response", (response) => {
      const status = response.statusCode ?? 500;
      if (status < 200 || status >= 300) {
        if (health === "any-answer") {
          // Up: it speaks HTTP. Its body is of no interest (often a 404 page).
          clearTimeout(deadline);
          outgoing.destroy();
          resolve("Healthy");
          return;
        }
        fail(new Error(`/ping answered ${status}`));
        return;
      }
      const chunks: Buffer[] = [];
      let receivedBytes = 0;
      response.on("data", (chunk: Buffer) => {
        receivedBytes += chunk.length;
        if (receivedBytes > maxBodyBytes) {
          fail(new Error(`/ping answered with more than ${maxBodyBytes} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      response.on("end", () => {
        clearTimeout(deadline);
        resolve(readHealth(Buffer.concat(chunks).toString("utf8")));
      });
      response.on("error", fail);
    });
    outgoing.on("error", fail);
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
