// A test agent that runs the shell command it is sent and answers with what it printed, so
// tests can check what programs an agent starts may do. Not an example to copy.
import { spawn } from "node:child_process";
import http from "node:http";

function run(command) {
  return new Promise((resolve) => {
    const child = spawn("/bin/sh", ["-c", command], { stdio: ["ignore", "pipe", "pipe"] });
    const output = { stdout: "", stderr: "" };
    child.stdout.on("data", (chunk) => (output.stdout += chunk));
    child.stderr.on("data", (chunk) => (output.stderr += chunk));
    child.on("close", (code, signal) => resolve({ code, signal, ...output }));
  });
}

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/ping") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ status: "Healthy" }));
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const { command } = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  response.writeHead(200, { "content-type": "application/json" });
  response.end(JSON.stringify(await run(String(command))));
});

// PORT is 8080 in a sandbox of its own; the process driver gives each agent a free port.
server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
