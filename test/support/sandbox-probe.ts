import { request } from "node:http";
import type { Sandbox } from "../../src/core/sandbox.ts";
import { agentTarget } from "../../src/wire/agent-client.ts";

/** POSTs a JSON payload straight to the probe agent in a sandbox and parses its JSON answer. */
export function invokeSandboxProbe(
  sandbox: Sandbox,
  payload: unknown,
): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        ...agentTarget(sandbox.agentEndpoint),
        path: "/invocations",
        method: "POST",
        headers: { "content-type": "application/json" },
        agent: false,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on("data", (chunk: Buffer) => chunks.push(chunk));
        response.on("end", () => {
          resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>);
        });
        response.on("error", reject);
      },
    );
    outgoing.on("error", reject);
    outgoing.end(JSON.stringify(payload));
  });
}
