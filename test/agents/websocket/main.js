// A test agent with a WebSocket endpoint (/ws) beside /ping and /invocations. Its `ws` package is
// copied in by the test (test/support/agents.ts installWebSocketAgent). Not an example to copy.
import http from "node:http";
import { WebSocketServer } from "ws";

/** The close code and reason of the last connection a client ended. */
let lastClose = null;

const server = http.createServer((request, response) => {
  if (request.url === "/ping") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(
      JSON.stringify({ status: "Healthy", time_of_last_update: Math.floor(Date.now() / 1000) }),
    );
    return;
  }
  if (request.url === "/invocations") {
    request.resume();
    request.on("end", () => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ lastClose }));
    });
    return;
  }
  response.writeHead(404);
  response.end();
});

const sockets = new WebSocketServer({
  noServer: true,
  maxPayload: 256 << 20,
  handleProtocols: (offered) => (offered.has("echo.v1") ? "echo.v1" : false),
});
server.on("upgrade", (request, socket, head) => {
  if (request.url !== "/ws") {
    socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    return;
  }
  sockets.handleUpgrade(request, socket, head, (client) => serve(client, request));
});

function serve(client, request) {
  client.send(JSON.stringify({ hello: true, headers: request.headers }));
  client.on("close", (code, reason) => {
    lastClose = { code, reason: reason.toString("utf8") };
  });
  client.on("message", (data, isBinary) => {
    if (isBinary) {
      client.send(data, { binary: true });
      return;
    }
    const text = data.toString("utf8");
    const close = /^close:(\d+):(.*)$/.exec(text);
    if (close !== null) {
      client.close(Number(close[1]), close[2]);
      return;
    }
    const big = /^big:(\d+)$/.exec(text);
    if (big !== null) {
      client.send(Buffer.alloc(Number(big[1]), 7), { binary: true });
      return;
    }
    const flood = /^flood:(\d+)$/.exec(text);
    if (flood !== null) {
      floodWith(client, Number(flood[1]));
      return;
    }
    client.send(`echo:${text}`);
  });
}

/** Sends `count` messages of 64 KiB as fast as the connection takes them, then "flood-done". */
function floodWith(client, count) {
  let sent = 0;
  const piece = Buffer.alloc(65536, 1);
  const more = () => {
    while (sent < count) {
      sent += 1;
      client.send(piece, { binary: true });
      if (client.bufferedAmount > 1 << 20) {
        setTimeout(more, 5);
        return;
      }
    }
    client.send(`flood-done:${sent}`);
  };
  more();
}

server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
