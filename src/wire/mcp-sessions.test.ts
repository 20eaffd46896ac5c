// The MCP session id's translation (mcp-sessions.ts): which Berth session an MCP request names,
// and which Mcp-Session-Id its server is sent, for stateless and stateful servers alike.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { BerthError } from "../core/errors.ts";
import { mcpRequestSession, McpServerSessions } from "./mcp-sessions.ts";

const runtimeHeader = "x-amzn-bedrock-agentcore-runtime-session-id";
const berthSession = `berth-session-${"b".repeat(33)}`;
const otherSession = `client-session-${"c".repeat(33)}`;
const made = () => `made-${"m".repeat(40)}`;

describe("which Berth session an MCP request names", () => {
  it("the runtime session id header wins over the client's Mcp-Session-Id", () => {
    const headers = { [runtimeHeader]: berthSession, "mcp-session-id": otherSession };
    assert.equal(mcpRequestSession(headers, made), berthSession);
  });

  it("without it, the Mcp-Session-Id an earlier answer gave names the session", () => {
    assert.equal(mcpRequestSession({ "mcp-session-id": otherSession }, made), otherSession);
  });

  it("a first request (initialize) naming neither gets a new session", () => {
    assert.equal(mcpRequestSession({}, made), made());
    const first = mcpRequestSession({});
    const second = mcpRequestSession({});
    assert.notEqual(first, second);
    assert.ok(first.length >= 33 && first.length <= 256, first);
  });

  it("refuses an Mcp-Session-Id too short to be a Berth session id, saying what to send", () => {
    assert.throws(
      () => mcpRequestSession({ "mcp-session-id": "short" }, made),
      (error: unknown) =>
        BerthError.isInstance(error) &&
        error.code === "ValidationException" &&
        /Mcp-Session-Id names the Berth session and must be 33 to 256/.test(error.message),
    );
  });

  it("refuses a malformed runtime session id header, as every data-plane call does", () => {
    assert.throws(
      () => mcpRequestSession({ [runtimeHeader]: "short", "mcp-session-id": otherSession }, made),
      (error: unknown) => BerthError.isInstance(error) && error.code === "ValidationException",
    );
  });
});

describe("which Mcp-Session-Id the server is sent", () => {
  const running = () => new Promise<never>(() => undefined);

  it("none before the server first answered: a stateful server's initialize must carry none", () => {
    const server = new McpServerSessions().of("runtime", berthSession, running());
    assert.equal(server.idForServer(), undefined);
  });

  it("a stateless server (it issues no id) is sent the Berth session id, as AgentCore sends its own", () => {
    const server = new McpServerSessions().of("runtime", berthSession, running());
    server.noteAnswer(200, undefined);
    assert.equal(server.idForServer(), berthSession);
    server.noteAnswer(202, undefined);
    assert.equal(server.idForServer(), berthSession);
  });

  it("a stateful server is sent the id it issued, on every later request of the session", () => {
    const servers = new McpServerSessions();
    servers.of("runtime", berthSession, running()).noteAnswer(200, "server-own-id");
    const later = servers.of("runtime", berthSession, running());
    assert.equal(later.idForServer(), "server-own-id");
    later.noteAnswer(202, undefined); // a notification's answer carries no id: still stateful
    assert.equal(later.idForServer(), "server-own-id");
    later.noteAnswer(200, "server-new-id"); // a new initialize: a new id
    assert.equal(later.idForServer(), "server-new-id");
  });

  it("a stateful server's 404 (its session gone) lets the next initialize through without an id", () => {
    const server = new McpServerSessions().of("runtime", berthSession, running());
    server.noteAnswer(200, "server-own-id");
    server.noteAnswer(404, undefined);
    assert.equal(server.idForServer(), undefined);
  });

  it("an error answer teaches nothing", () => {
    const server = new McpServerSessions().of("runtime", berthSession, running());
    server.noteAnswer(400, undefined);
    assert.equal(server.idForServer(), undefined);
  });

  it("keeps each session's server apart, per runtime too", () => {
    const servers = new McpServerSessions();
    servers.of("runtime", berthSession, running()).noteAnswer(200, "first-server");
    assert.equal(servers.of("runtime", otherSession, running()).idForServer(), undefined);
    assert.equal(servers.of("other-runtime", berthSession, running()).idForServer(), undefined);
  });

  it("forgets a session's server when its sandbox ends: a session started again runs a new one", async () => {
    const servers = new McpServerSessions();
    let end: (reason: string) => void = () => undefined;
    const ended = new Promise<string>((resolve) => (end = resolve));
    servers.of("runtime", berthSession, ended).noteAnswer(200, "old-server-id");
    assert.equal(servers.size, 1);
    end("stopped");
    await ended;
    await Promise.resolve();
    assert.equal(servers.size, 0);
    assert.equal(servers.of("runtime", berthSession, running()).idForServer(), undefined);
  });
});
