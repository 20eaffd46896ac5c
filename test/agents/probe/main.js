// A test agent that answers questions about the sandbox it runs in. Not an example to copy.
import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";

if (process.env.PROBE_START === "crash") {
  console.error("probe: crashing at startup as asked");
  process.exit(3);
}
if (process.env.PROBE_START === "never") {
  console.log("probe: never listening");
  setInterval(() => {}, 1000);
}

/**
 * Under Berth's process driver (tests only: no isolation, no mount namespace) a volume is not at
 * its mount path: its host folder is in BERTH_VOLUME_<MOUNT PATH> (/mnt/workspace ->
 * BERTH_VOLUME_MNT_WORKSPACE), so a path under a mount path is used there instead.
 */
function volumePath(path) {
  const match = /^(\/mnt\/[^/]+)(\/.*)?$/.exec(path);
  if (match === null) return path;
  const name = `BERTH_VOLUME_${match[1]
    .slice(1)
    .toUpperCase()
    .replace(/[^A-Z0-9]/g, "_")}`;
  const folder = process.env[name];
  return folder === undefined ? path : `${folder}${match[2] ?? ""}`;
}

// What the agent saw as it started: session storage must be mounted before that.
const atStartup = {
  workspace: attempt(() => fs.readdirSync(volumePath("/mnt/workspace")).sort()),
};
const memory = [];
const releases = new Map();
let busy = false;

function attempt(work) {
  try {
    return { ok: work() };
  } catch (error) {
    return { error: error.code ?? String(error) };
  }
}

const actions = {
  whoami: () => ({
    uid: process.getuid(),
    gid: process.getgid(),
    pid: process.pid,
    hostname: os.hostname(),
    cwd: process.cwd(),
    env: process.env,
  }),
  read: ({ path }) => attempt(() => fs.readFileSync(volumePath(path), "utf8")),
  list: ({ path }) => attempt(() => fs.readdirSync(volumePath(path))),
  write: ({ path, content }) => attempt(() => fs.writeFileSync(volumePath(path), content)),
  remember: ({ value }) => ({ count: memory.push(value) }),
  startup: () => atStartup,
  recall: () => ({ memory }),
  processes: () => ({ pids: fs.readdirSync("/proc").filter((name) => /^\d+$/.test(name)) }),
  busy: ({ on }) => ({ busy: (busy = on) }),
  release: ({ key }) => {
    releases.get(key)?.();
    return { released: releases.has(key) };
  },
  connect: ({ host, port }) =>
    new Promise((resolve) => {
      const socket = net.connect({ host, port, timeout: 2000 });
      socket.on("connect", () => {
        socket.destroy();
        resolve({ connected: true });
      });
      socket.on("timeout", () => {
        socket.destroy();
        resolve({ connected: false, error: "timeout" });
      });
      socket.on("error", (error) => resolve({ connected: false, error: error.code }));
    }),
  fetch: ({ url }) =>
    new Promise((resolve) => {
      http
        .get(url, { timeout: 3000 }, (response) => {
          let body = "";
          response.on("data", (chunk) => (body += chunk));
          response.on("end", () => resolve({ status: response.statusCode, body }));
        })
        .on("error", (error) => resolve({ error: error.code ?? String(error) }))
        .on("timeout", function () {
          this.destroy(Object.assign(new Error("timeout"), { code: "TIMEOUT" }));
        });
    }),
  forkbomb: () => {
    // Start sleepers until the pids limit refuses more; they die with the sandbox.
    let started = 0;
    for (; started < 100000; started += 1) {
      const result = spawnSync("/bin/sh", ["-c", "sleep 600 &"], { stdio: "ignore" });
      if (result.error || result.status !== 0) break;
    }
    return { started };
  },
  hog: ({ megabytes }) =>
    new Promise((resolve) => {
      const child = spawn(
        process.execPath,
        [
          "-e",
          `const a=[];for(let i=0;i<${megabytes};i++){a.push(Buffer.alloc(1<<20,1))}console.log("allocated")`,
        ],
        { stdio: ["ignore", "pipe", "ignore"] },
      );
      let output = "";
      child.stdout.on("data", (chunk) => (output += chunk));
      child.on("exit", (code, signal) => resolve({ code, signal, output: output.trim() }));
    }),
};

async function stream(request, response, { key, count }) {
  response.writeHead(200, { "content-type": "text/event-stream" });
  response.write(`data: ${JSON.stringify({ n: 1 })}\n\n`);
  await new Promise((resolve) => releases.set(key, resolve));
  for (let n = 2; n <= count; n += 1) response.write(`data: ${JSON.stringify({ n })}\n\n`);
  response.end();
}

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/ping") {
    // Tests watch for this line (in the session's log) to know a busy ping was polled.
    if (busy) console.log("probe: pinged while busy");
    response.writeHead(200, { "content-type": "application/json" });
    response.end(
      JSON.stringify({
        status: busy ? "HealthyBusy" : "Healthy",
        time_of_last_update: Math.floor(Date.now() / 1000),
      }),
    );
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const body = Buffer.concat(chunks).toString("utf8");
  let payload = {};
  try {
    payload = JSON.parse(body || "{}");
  } catch {
    payload = { action: "raw" };
  }
  if (payload.action === "exit") {
    console.error(`probe: exiting with ${payload.code}`);
    process.exit(payload.code);
  }
  if (payload.action === "status") {
    response.writeHead(payload.status, { "content-type": "text/plain" });
    response.end(`probe answered ${payload.status}`);
    return;
  }
  if (payload.action === "stream") return stream(request, response, payload);
  const action = actions[payload.action];
  const result = action
    ? await action(payload)
    : { echo: body, headers: request.headers, method: request.method, url: request.url };
  response.writeHead(200, { "content-type": "application/json" });
  response.end(JSON.stringify(result));
});

// PORT is 8080 in a sandbox of its own; the process driver gives each agent a free port.
if (process.env.PROBE_START !== "never") server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
