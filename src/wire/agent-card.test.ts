import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type RequestListener, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { FakeLease } from "../../test/support/fake-terminal.ts";
import { BerthError } from "../core/errors.ts";
import type { SessionLease } from "../core/sessions.ts";
import { readAgentCard } from "./agent-card.ts";

const cardPath = "/.well-known/agent-card.json";

describe("reading an A2A agent's card", () => {
  const servers: Server[] = [];
  after(async () => {
    for (const server of servers) {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    }
  });

  /** A lease on a session whose agent is this HTTP server. */
  const agentServing = async (listener: RequestListener): Promise<SessionLease> => {
    const server = createServer(listener);
    servers.push(server);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    return { ...new FakeLease().another(), agentEndpoint: { host: "127.0.0.1", port } };
  };

  it("answers the agent's JSON", async () => {
    const lease = await agentServing((request, response) => {
      assert.equal(request.url, cardPath);
      response.setHeader("content-type", "application/json");
      response.end(JSON.stringify({ name: "helper", skills: [] }));
    });
    const card = await readAgentCard(lease, cardPath, new AbortController().signal);
    assert.deepEqual(card, { name: "helper", skills: [] });
  });

  it("gives an agent that trickles its card a deadline for the whole answer, a RuntimeClientError naming it", async () => {
    const trickles: NodeJS.Timeout[] = [];
    after(() => {
      for (const trickle of trickles) clearInterval(trickle);
    });
    const lease = await agentServing((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.write('{"name":"');
      // A byte now and then, never the end: no silence long enough for an idle timeout.
      trickles.push(setInterval(() => response.write("x"), 5));
    });
    await assert.rejects(
      readAgentCard(lease, cardPath, new AbortController().signal, 100),
      (error: unknown) => {
        assert.ok(BerthError.isInstance(error));
        assert.equal(error.code, "RuntimeClientError");
        assert.match(error.message, /did not send its whole card .* within 100 ms/);
        return true;
      },
    );
  });

  it("gives an agent that sends no answer at all the same deadline", async () => {
    const lease = await agentServing(() => undefined);
    await assert.rejects(
      readAgentCard(lease, cardPath, new AbortController().signal, 100),
      (error: unknown) => BerthError.isInstance(error) && error.code === "RuntimeClientError",
    );
  });
});
