/**
 * GetAgentCard: an A2A agent's card (its name, skills and how to call it), read from the agent
 * itself at GET /.well-known/agent-card.json inside the session, which this starts like an
 * invocation.
 */
import { request, type IncomingMessage } from "node:http";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import { noObserver, type Observer } from "../core/observer.ts";
import { protocolContract } from "../core/protocols.ts";
import type { SessionLease, SessionManager } from "../core/sessions.ts";
import { agentPool, agentTarget } from "./agent-client.ts";
import { traceHeadersForAgent } from "./agent-trace-headers.ts";
import { invocationTargetOf, requireSessionId, sessionIdHeader } from "./data-plane-request.ts";
import { onSession, operation, type Operation } from "./operation.ts";

/** The most of a card Berth reads: cards are a few kilobytes; more is an agent gone wrong. */
const maxAgentCardBytes = 1024 * 1024;
/**
 * How long the agent has to send its whole card, headers and body: the read holds the session's
 * lease, so an agent that trickles its answer must not hold it for as long as it likes. The
 * agent is already up when this asks (acquiring the session waited for it), and a card is a
 * document of a few kilobytes it serves at once: 10 s is ample. Not agentPingTimeoutMs, which
 * is sized for a health answer of tens of bytes (1 s by default).
 */
const agentCardTimeoutMs = 10_000;

export function agentCardOperation(
  context: CoreContext,
  sessions: SessionManager,
  shutdown: AbortSignal,
  observer: Observer = noObserver,
): Operation {
  return onSession(
    operation(
      "GetAgentCard",
      "GET",
      "/runtimes/:runtimeArn/invocations/.well-known/agent-card.json",
      200,
      async (input) => {
        const sessionId = requireSessionId(input.request.headers);
        const target = await invocationTargetOf(context, input);
        const { protocol, agentCardPath } = protocolContract(target.version.config.serverProtocol);
        if (agentCardPath === undefined) {
          throw new BerthError(
            "ValidationException",
            `GetAgentCard answers for A2A agents only: agent runtime ${target.runtime.id} serves ${protocol} (protocolConfiguration.serverProtocol)`,
            { reason: "FieldValidationFailed" },
          );
        }
        const lease = await sessions.acquire(target.runtime, target.version, sessionId);
        try {
          const signal = AbortSignal.any([input.raw.signal, shutdown]);
          const card = await observer.step(
            "agent.card",
            { runtimeId: target.runtime.id, sessionId },
            () =>
              readAgentCard(
                lease,
                agentCardPath,
                signal,
                agentCardTimeoutMs,
                traceHeadersForAgent(input.request.headers, observer.traceparent()),
              ),
          );
          input.raw.outgoing.setHeader(sessionIdHeader, sessionId);
          return card;
        } finally {
          lease.release();
        }
      },
    ),
    { place: true },
  );
}

/**
 * GETs the card from the agent: its JSON, or a RuntimeClientError saying what was wrong (also
 * when the whole answer has not arrived within timeoutMs). `headers` go with the request (trace
 * context).
 */
export async function readAgentCard(
  lease: SessionLease,
  path: string,
  signal: AbortSignal,
  timeoutMs = agentCardTimeoutMs,
  headers: Record<string, string> = {},
): Promise<unknown> {
  const late = new BerthError(
    "RuntimeClientError",
    `The agent did not send its whole card (GET ${path}) within ${timeoutMs} ms, Berth's deadline for an agent card: an A2A agent serves it at once`,
  );
  const deadline = new AbortController();
  const timer = setTimeout(() => {
    deadline.abort(late);
  }, timeoutMs);
  try {
    return await readCardUntil(lease, path, headers, AbortSignal.any([signal, deadline.signal]));
  } catch (error) {
    throw deadline.signal.aborted ? late : error;
  } finally {
    clearTimeout(timer);
  }
}

async function readCardUntil(
  lease: SessionLease,
  path: string,
  headers: Record<string, string>,
  signal: AbortSignal,
): Promise<unknown> {
  const response = await getFromAgent(lease, path, headers, signal);
  const status = response.statusCode ?? 500;
  const body = await readUpTo(response, maxAgentCardBytes, path);
  if (status < 200 || status >= 300) {
    throw new BerthError(
      "RuntimeClientError",
      `The agent answered ${status} to GET ${path}: ${body.slice(0, 4096) || "(empty body)"}`,
    );
  }
  try {
    return JSON.parse(body) as unknown;
  } catch {
    throw new BerthError(
      "RuntimeClientError",
      `The agent's answer to GET ${path} is not JSON: ${body.slice(0, 200)}`,
    );
  }
}

function getFromAgent(
  lease: SessionLease,
  path: string,
  headers: Record<string, string>,
  signal: AbortSignal,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        ...agentTarget(lease.agentEndpoint),
        agent: agentPool(lease.agentEndpoint, lease.ended),
        method: "GET",
        path,
        headers: { ...headers, accept: "application/json" },
        signal,
      },
      resolve,
    );
    outgoing.on("error", (error) => {
      if (signal.aborted) {
        // Shutting down: its reason (a BerthError) is the answer; a departed caller hears none.
        reject(signal.reason instanceof Error ? signal.reason : error);
        return;
      }
      void lease.endReasonSoon().then((reason) => {
        reject(
          new BerthError(
            "RuntimeClientError",
            `The agent did not answer GET ${path} (${reason !== undefined ? `the session ended: ${reason}` : error.message})`,
          ),
        );
      });
    });
    outgoing.end();
  });
}

async function readUpTo(response: IncomingMessage, maxBytes: number, path: string) {
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of response as AsyncIterable<Buffer>) {
    received += chunk.length;
    if (received > maxBytes) {
      response.destroy();
      throw new BerthError(
        "RuntimeClientError",
        `The agent's answer to GET ${path} is larger than ${maxBytes} bytes`,
      );
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}
