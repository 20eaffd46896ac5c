// The SDK's own ceiling for command output: a bare node:http server answering every request with
// the same number of bytes as pre-encoded contentDelta events (64 KiB of text each), encoded once
// before listening. Nothing is read, escaped or encoded per request.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { encodeChunkEvent } from "../src/wire/event-stream.ts";

const totalBytes = Number(process.argv[2] ?? 256 * 2 ** 20);
const eventBytes = 65_536;
const line = `${"0123456789abcdef".repeat(63)}\n`;
const text = line.repeat(Math.ceil(eventBytes / line.length)).slice(0, eventBytes);
const delta = encodeChunkEvent({ contentDelta: { stdout: text } });
const count = Math.ceil(totalBytes / eventBytes);

const server = createServer((request, response) => {
  request.resume();
  request.on("end", () => void answer());
  const answer = async () => {
    response.writeHead(200, { "content-type": "application/vnd.amazon.eventstream" });
    response.write(encodeChunkEvent({ contentStart: {} }));
    for (let index = 0; index < count; index += 1) {
      if (!response.write(delta)) await new Promise((resolve) => response.once("drain", resolve));
    }
    response.end(encodeChunkEvent({ contentStop: { exitCode: 0, status: "COMPLETED" } }));
  };
});
server.listen(0, "127.0.0.1", () => {
  console.log(JSON.stringify({ msg: "listening", port: (server.address() as AddressInfo).port }));
});
process.on("SIGTERM", () => {
  server.close();
  server.closeAllConnections();
});
