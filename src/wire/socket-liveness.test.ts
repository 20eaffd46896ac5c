import assert from "node:assert/strict";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { after, describe, it } from "node:test";
import { WebSocket, WebSocketServer } from "ws";
import { watchLiveness } from "./socket-liveness.ts";

describe("watchLiveness", () => {
  const server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  after(() => {
    server.close();
  });

  /** A client (answering pings or not) and the server's side of its connection. */
  async function connect(autoPong: boolean): Promise<{ client: WebSocket; served: WebSocket }> {
    if (server.address() === null) await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    const served = once(server, "connection") as Promise<[WebSocket]>;
    const client = new WebSocket(`ws://127.0.0.1:${port}`, { autoPong });
    await once(client, "open");
    return { client, served: (await served)[0] };
  }

  it("cuts off a client that answers no ping", async () => {
    const { served } = await connect(false);
    watchLiveness(served, 30);
    const [code] = (await once(served, "close")) as [number];
    assert.equal(code, 1006); // terminated: no close frame
  });

  it("keeps a client that answers, however long", async () => {
    const { client, served } = await connect(true);
    watchLiveness(served, 20);
    let pings = 0;
    client.on("ping", () => (pings += 1));
    while (pings < 6) await once(client, "ping");
    assert.equal(served.readyState, WebSocket.OPEN);
    client.close();
  });

  it("takes no verdict while Berth has paused the socket (its pongs are not read)", async () => {
    const { client, served } = await connect(true);
    served.pause();
    watchLiveness(served, 20);
    let pings = 0;
    client.on("ping", () => (pings += 1));
    while (pings < 5) await once(client, "ping");
    assert.equal(served.readyState, WebSocket.OPEN);
    served.resume();
    client.close();
  });
});
