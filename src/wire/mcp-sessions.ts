/**
 * MCP's session id (streamable HTTP's `Mcp-Session-Id`) on its way through Berth, for runtimes
 * whose agent is an MCP server.
 *
 * To the client, the MCP session IS the Berth session: every answer carries the Berth session id
 * as `Mcp-Session-Id`, and a client that sends it back (as MCP clients do) reaches the same
 * session, without knowing anything of AgentCore's own session header.
 *
 * To the server, Berth is the client. A stateless server (`stateless_http=True`, what AgentCore
 * recommends) issues no id: it is sent the Berth session id, as AgentCore sends its own. A
 * stateful server issues its own id when it answers `initialize`, and rejects ids it did not
 * issue: Berth remembers the server's id for the session and sends that one instead. Until the
 * server has answered once, Berth cannot tell which kind it is, and sends no id at all, which
 * both kinds take for a first request.
 */
import { randomUUID } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { BerthError } from "../core/errors.ts";
import { requireSessionId, sessionIdHeader } from "./data-plane-request.ts";

export const mcpSessionIdHeader = "mcp-session-id";

/**
 * The Berth session an MCP request names: the runtime session id header wins; else the client's
 * `Mcp-Session-Id` (the Berth session id an earlier answer gave it); else, for a client's first
 * request (`initialize` names no session), a new one.
 */
export function mcpRequestSession(
  headers: IncomingHttpHeaders,
  makeSessionId: () => string = () => `mcp-session-${randomUUID()}`,
): string {
  if (headers[sessionIdHeader] !== undefined) return requireSessionId(headers);
  const fromClient = headers[mcpSessionIdHeader];
  if (typeof fromClient !== "string" || fromClient === "") return makeSessionId();
  if (fromClient.length < 33 || fromClient.length > 256 || !/^[\x21-\x7e]+$/.test(fromClient)) {
    throw new BerthError(
      "ValidationException",
      `Without ${sessionIdHeader}, Mcp-Session-Id names the Berth session and must be 33 to 256 printable characters (got ${fromClient.length}): send back the Mcp-Session-Id an earlier answer gave, or none to start a session`,
      { reason: "FieldValidationFailed" },
    );
  }
  return fromClient;
}

/** What Berth has learnt of one session's MCP server. */
type ServerKind =
  { kind: "unknown" } | { kind: "stateless" } | { kind: "stateful"; serverSessionId: string };

/** One session's MCP server, as the data plane sees it through its requests. */
export interface McpServerSession {
  /** The `Mcp-Session-Id` to send the server with the next request; undefined: none. */
  idForServer(): string | undefined;
  /** Learns from the server's answer: its status and the `Mcp-Session-Id` it carried, if any. */
  noteAnswer(status: number, serverSessionId: string | undefined): void;
}

/**
 * What Berth knows of each running session's MCP server. An entry lives as long as the session's
 * sandbox (`ended`): a session started again runs a new server, which knows none of the old ids.
 */
export class McpServerSessions {
  private readonly servers = new Map<string, { known: ServerKind }>();

  /** The server of session `sessionId` of runtime `runtimeId`, whose sandbox ends with `ended`. */
  of(runtimeId: string, sessionId: string, ended: Promise<unknown>): McpServerSession {
    const key = `${runtimeId}\u0000${sessionId}`;
    let server = this.servers.get(key);
    if (server === undefined) {
      const entry = { known: { kind: "unknown" } as ServerKind };
      this.servers.set(key, entry);
      void ended.finally(() => {
        if (this.servers.get(key) === entry) this.servers.delete(key);
      });
      server = entry;
    }
    const entry = server;
    return {
      idForServer: () => {
        const known = entry.known;
        if (known.kind === "stateful") return known.serverSessionId;
        return known.kind === "stateless" ? sessionId : undefined;
      },
      noteAnswer: (status, serverSessionId) => {
        entry.known = learnt(entry.known, status, serverSessionId);
      },
    };
  }

  /** How many sessions' servers are remembered. */
  get size(): number {
    return this.servers.size;
  }
}

function learnt(
  before: ServerKind,
  status: number,
  serverSessionId: string | undefined,
): ServerKind {
  // A server that issues an id is stateful; a new id (a new initialize) replaces the old one.
  if (serverSessionId !== undefined && serverSessionId !== "")
    return { kind: "stateful", serverSessionId };
  // MCP's 404: the session the server issued is gone (it expired or was ended); the client's
  // next initialize must reach it without the old id.
  if (status === 404 && before.kind === "stateful") return { kind: "unknown" };
  if (status >= 200 && status < 300 && before.kind === "unknown") return { kind: "stateless" };
  return before;
}
