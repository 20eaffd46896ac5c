// The baseline: a bare node:http server that answers every request with a canned response
// (recorded from Berth by the benchmark), after reading the body. No auth, no routing, no storage.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

const responses = new Map<string, { status: number; body: string }>(
  Object.entries(
    JSON.parse(process.argv[2] ?? "{}") as Record<string, { status: number; body: string }>,
  ),
);

const server = createServer((request, response) => {
  request.resume();
  request.on("end", () => {
    const key = `${request.method ?? ""} ${(request.url ?? "").split("?")[0]?.split("/")[1] ?? ""}:${request.url?.split("/").length ?? 0}`;
    const canned = responses.get(key) ?? { status: 200, body: "{}" };
    response.writeHead(canned.status, {
      "content-type": "application/json",
      "x-amzn-requestid": "echo",
    });
    response.end(canned.body);
  });
});
server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ msg: "listening", port: (server.address() as AddressInfo).port }));
});
process.on("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
});
