// GET /ping read as each protocol says (core/protocols.ts), against a real HTTP server on
// loopback: the service contract's 2xx for HTTP and AG-UI agents, any answer for MCP and A2A
// servers, whose own /ping (if they serve one) can still say HealthyBusy.
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { pingAgent } from "./agent-client.ts";

describe("pingAgent", () => {
  let answer = { status: 404, body: "Not Found" };
  let server: Server;
  let endpoint: { host: string; port: number };

  before(async () => {
    server = createServer((request, response) => {
      assert.equal(request.url, "/ping");
      response.writeHead(answer.status, { "content-type": "application/json" });
      response.end(answer.body);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    endpoint = { host: "127.0.0.1", port: (server.address() as AddressInfo).port };
  });
  after(() => {
    server.close();
  });

  it("the service contract's check refuses an answer outside 2xx", async () => {
    answer = { status: 404, body: "Not Found" };
    await assert.rejects(pingAgent(endpoint, 2_000, 4_096, "ping"), /\/ping answered 404/);
  });

  it("any-answer takes a 404 (a server with no /ping) as up and idle", async () => {
    answer = { status: 404, body: "Not Found" };
    assert.equal(await pingAgent(endpoint, 2_000, 4_096, "any-answer"), "Healthy");
  });

  it("any-answer still hears HealthyBusy from a server that serves the contract's /ping", async () => {
    answer = { status: 200, body: JSON.stringify({ status: "HealthyBusy" }) };
    assert.equal(await pingAgent(endpoint, 2_000, 4_096, "any-answer"), "HealthyBusy");
    assert.equal(await pingAgent(endpoint, 2_000, 4_096, "ping"), "HealthyBusy");
  });

  it("any-answer still needs an answer: nothing listening is not up", async () => {
    const closed = createServer();
    closed.listen(0, "127.0.0.1");
    await once(closed, "listening");
    const port = (closed.address() as AddressInfo).port;
    closed.close();
    await once(closed, "close");
    await assert.rejects(pingAgent({ host: "127.0.0.1", port }, 2_000, 4_096, "any-answer"));
  });
});
