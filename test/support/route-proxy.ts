import { createConnection, createServer, type Socket } from "node:net";

/**
 * A TCP relay on loopback standing for the network route between a node and a server, so a
 * test can drop that route. Dropped, it loses every byte silently in both directions and passes
 * no close on: neither end learns anything, as when a route is cut (no RST, no FIN). Connections
 * opened while the route is down are accepted and then answer nothing, like SYNs into the void.
 */
export interface RouteProxy {
  /** The port to connect to instead of the server's. */
  port: number;
  /** Drops the route: what was connected through it stays connected and silent, for good. */
  drop(): void;
  /** The route is back for connections opened from now on (those it dropped stay lost). */
  restore(): void;
  /** Stops listening and closes every connection, both ends: connections are refused. */
  close(): Promise<void>;
}

export async function startRouteProxy(target: { host: string; port: number }): Promise<RouteProxy> {
  const sockets = new Set<Socket>();
  let routeUp = true;
  const dropped = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    // A lost route reports nothing: the ends' own errors are theirs, not the test's.
    socket.on("error", () => undefined);
  };
  const server = createServer((client) => {
    track(client);
    if (!routeUp) {
      dropped.add(client);
      return;
    }
    const upstream = createConnection(target);
    track(upstream);
    relay(client, upstream);
    relay(upstream, client);
  });
  /** Passes data and a close from `from` to `to` while the pair is not dropped. */
  function relay(from: Socket, to: Socket): void {
    from.on("data", (chunk: Buffer) => {
      if (!dropped.has(from)) to.write(chunk);
    });
    from.on("close", () => {
      if (!dropped.has(from)) to.destroy();
    });
  }
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  if (typeof address !== "object" || address === null) throw new Error("the proxy has no port");
  return {
    port: address.port,
    drop: () => {
      routeUp = false;
      for (const socket of sockets) dropped.add(socket);
    },
    restore: () => {
      routeUp = true;
    },
    close: async () => {
      const closed = new Promise<void>((resolve) =>
        server.close(() => {
          resolve();
        }),
      );
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}
