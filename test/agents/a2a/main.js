// A test A2A agent: JSON-RPC 2.0 `message/send` at POST / and its card at
// GET /.well-known/agent-card.json, on PORT (9000 in a session). No /ping: A2A has none.
// Not an example to copy.
import http from "node:http";
import { randomUUID } from "node:crypto";

const port = Number(process.env.PORT ?? 9000);
const card = {
  protocolVersion: "0.3.0",
  name: "berth-test-a2a",
  description: "Echoes what it is told",
  url: `http://0.0.0.0:${port}/`,
  preferredTransport: "JSONRPC",
  version: "1.0.0",
  capabilities: { streaming: false },
  defaultInputModes: ["text/plain"],
  defaultOutputModes: ["text/plain"],
  skills: [{ id: "echo", name: "Echo", description: "Says it back", tags: ["echo"] }],
};

function reply(response, status, body) {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}

/** A2A's message/send: the agent answers with a Message of its own. */
function messageSend(params, request) {
  const text = (params?.message?.parts ?? [])
    .filter((part) => part.kind === "text")
    .map((part) => part.text)
    .join(" ");
  return {
    kind: "message",
    role: "agent",
    messageId: randomUUID(),
    contextId: params?.message?.contextId ?? randomUUID(),
    parts: [
      { kind: "text", text: `echo: ${text}` },
      {
        kind: "data",
        data: {
          pid: process.pid,
          sessionId: request.headers["x-amzn-bedrock-agentcore-runtime-session-id"] ?? null,
        },
      },
    ],
  };
}

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/.well-known/agent-card.json") {
    reply(response, 200, card);
    return;
  }
  if (request.method !== "POST" || request.url !== "/") {
    reply(response, 404, { error: `no ${request.method} ${request.url}` });
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  let call;
  try {
    call = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    reply(response, 200, {
      jsonrpc: "2.0",
      id: null,
      error: { code: -32700, message: "Parse error" },
    });
    return;
  }
  if (call.method !== "message/send") {
    reply(response, 200, {
      jsonrpc: "2.0",
      id: call.id ?? null,
      error: { code: -32601, message: `Method not found: ${call.method}` },
    });
    return;
  }
  reply(response, 200, { jsonrpc: "2.0", id: call.id, result: messageSend(call.params, request) });
});

server.listen(port, "0.0.0.0");
