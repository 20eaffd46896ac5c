// A test agent that attacks what Berth reads from it: its stdout and its /ping answers. Each
// invocation payload names one attack; /ping answers healthily until an attack changes it.
import { once } from "node:events";
import http from "node:http";

let pingMode = "healthy";

/** Writes to stdout as fast as Berth reads it (waiting only when the pipe is full). */
async function write(chunk) {
  if (!process.stdout.write(chunk)) await once(process.stdout, "drain");
}

/** Writes `bytes` of "x" to stdout with no newline. */
async function floodOneLine({ bytes }) {
  const chunk = Buffer.alloc(1 << 20, "x");
  let written = 0;
  for (; written + chunk.length <= bytes; written += chunk.length) await write(chunk);
  await write(chunk.subarray(0, bytes - written));
  await write("\nhostile: one long line written\n");
  return { written: bytes };
}

/** Prints short lines as fast as it can for `durationMs`. */
async function floodLines({ durationMs }) {
  const block = Buffer.from("hostile: flooding the log with one more line\n".repeat(2048));
  const until = Date.now() + durationMs;
  let blocks = 0;
  for (; Date.now() < until; blocks += 1) await write(block);
  return { lines: blocks * 2048, bytes: blocks * block.length };
}

/** A /ping body that never ends: 64 KiB chunks as fast as the connection takes them. */
function endlessPing(response) {
  response.on("error", () => {}); // Berth hanging up is the expected end
  response.writeHead(200, { "content-type": "application/json" });
  response.write('{"status":"HealthyBusy","padding":"');
  const chunk = "x".repeat(65536);
  const pump = () => {
    while (!response.destroyed && response.write(chunk));
  };
  response.on("drain", pump);
  pump();
}

/** A /ping answer that trickles: a byte every 500 ms, forever. */
function tricklingPing(response) {
  response.writeHead(200, { "content-type": "application/json" });
  const timer = setInterval(() => response.write(" "), 500);
  response.on("close", () => clearInterval(timer));
}

const actions = {
  "flood-one-line": floodOneLine,
  "flood-lines": floodLines,
  "ping-endless": () => ({ pingMode: (pingMode = "endless") }),
  "ping-trickle": () => ({ pingMode: (pingMode = "trickle") }),
  hello: () => ({ hello: "still here" }),
};

let openPings = 0;
let mostOpenPings = 0;

/** Counts /ping requests open at once; each new most is printed (Berth logs it). */
function countOpenPing(response) {
  openPings += 1;
  response.on("close", () => (openPings -= 1));
  if (openPings <= mostOpenPings) return;
  mostOpenPings = openPings;
  console.log(`hostile: ${mostOpenPings} pings open at once`);
}

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/ping") {
    countOpenPing(response);
    if (pingMode === "endless") return endlessPing(response);
    if (pingMode === "trickle") return tricklingPing(response);
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ status: "Healthy" }));
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const payload = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  const action = actions[payload.action] ?? actions.hello;
  response.writeHead(200, { "content-type": "application/json" });
  response.end(JSON.stringify(await action(payload)));
});

// PORT is 8080 in a sandbox of its own; the process driver gives each agent a free port.
server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
