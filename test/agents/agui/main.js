// A test AG-UI agent: POST /invocations takes a RunAgentInput and answers AG-UI events as a
// server-sent event stream; GET /ping as the service contract says. On PORT (8080 in a session).
// Not an example to copy.
import http from "node:http";

function events(input) {
  const threadId = input.threadId ?? "thread";
  const runId = input.runId ?? "run";
  const said = (input.messages ?? []).map((message) => message.content).join(" ");
  const messageId = `${runId}-answer`;
  return [
    { type: "RUN_STARTED", threadId, runId },
    { type: "TEXT_MESSAGE_START", messageId, role: "assistant" },
    ...`you said: ${said}`.split(" ").map((word, index) => ({
      type: "TEXT_MESSAGE_CONTENT",
      messageId,
      delta: index === 0 ? word : ` ${word}`,
    })),
    { type: "TEXT_MESSAGE_END", messageId },
    { type: "RUN_FINISHED", threadId, runId },
  ];
}

const server = http.createServer(async (request, response) => {
  if (request.method === "GET" && request.url === "/ping") {
    response.writeHead(200, { "content-type": "application/json" });
    response.end(
      JSON.stringify({ status: "Healthy", time_of_last_update: Math.floor(Date.now() / 1000) }),
    );
    return;
  }
  if (request.method !== "POST" || request.url !== "/invocations") {
    response.writeHead(404);
    response.end();
    return;
  }
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  for (const event of events(input)) response.write(`data: ${JSON.stringify(event)}\n\n`);
  response.end();
});

server.listen(Number(process.env.PORT ?? 8080), "0.0.0.0");
