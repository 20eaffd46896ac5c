// A test agent that prints what it is asked to, for the tests of sessions' logs. Not an example
// to copy. Each invocation payload names an action.
import { once } from "node:events";
import http from "node:http";

/** Writes to a stream as fast as Berth reads it (waiting only when the pipe is full). */
async function write(stream, text) {
  if (!stream.write(text)) await once(stream, "drain");
}

const actions = {
  /** Prints each of `stdout` on stdout and each of `stderr` on stderr. */
  print: async ({ stdout = [], stderr = [] }) => {
    for (const line of stdout) await write(process.stdout, `${line}\n`);
    for (const line of stderr) await write(process.stderr, `${line}\n`);
    return { printed: stdout.length + stderr.length };
  },
  /** Prints its last words on both streams, then exits with `code`. */
  crash: async ({ code, lastWords }) => {
    await write(process.stdout, `${lastWords} (stdout)\n`);
    await write(process.stderr, `${lastWords} (stderr)\n`);
    setImmediate(() => process.exit(code));
    return { exiting: code };
  },
  /** Prints short lines as fast as it can for `durationMs`. */
  flood: async ({ durationMs }) => {
    const block = "printer: flooding with one more line\n".repeat(2048);
    const until = Date.now() + durationMs;
    let blocks = 0;
    for (; Date.now() < until; blocks += 1) await write(process.stdout, block);
    return { lines: blocks * 2048, bytes: blocks * block.length };
  },
};

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/ping") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ status: "Healthy" }));
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const payload = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  const action = actions[payload.action];
  response.writeHead(action ? 200 : 400, { "content-type": "application/json" });
  response.end(JSON.stringify(action ? await action(payload) : { unknown: payload.action }));
});

// PORT is 8080 in a sandbox of its own; the process driver gives each agent a free port.
server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
