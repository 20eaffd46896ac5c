// What traces cost a request: warm InvokeAgentRuntime through Berth with tracing off against
// the same through a second Berth that traces every request (traceSampleRatio 1, a sampled
// caller traceparent) and exports to a local OTLP/HTTP receiver. Both run as their own
// processes (`berth serve`); samples alternate between them. Prints JSON, with Berth's CPU time
// per request on each side. Settings: BENCH_SAMPLES (default 500).
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  createReadyRuntime,
  installExampleAgent,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
  timeInterleaved,
  type BenchBerth,
} from "./support.ts";

const samples = Number(process.env["BENCH_SAMPLES"] ?? 500);

// The collector: takes every export and answers at once, counting the spans' bytes only.
let exportedBytes = 0;
let exports = 0;
const receiver = createServer((request, response) => {
  request.on("data", (chunk: Buffer) => {
    exportedBytes += chunk.length;
  });
  request.on("end", () => {
    exports += 1;
    response.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
});
receiver.listen(0, "127.0.0.1");
await once(receiver, "listening");
const receiverPort = (receiver.address() as AddressInfo).port;

/**
 * A Berth of its own: another cgroup parent (short: its firewall chain is named after the first
 * characters) and uid range than the other one's.
 */
const start = (slot: number, args: string[]): Promise<BenchBerth> =>
  startBenchBerth({
    prepare: installExampleAgent,
    args: [
      "--bubblewrap-cgroup-parent",
      `bt${String(slot)}-${String(process.pid)}`,
      "--bubblewrap-uid-base",
      String(5_500_000 + (process.pid % 1000) * 256 + slot * 128),
      ...args,
    ],
  });

const plain = await start(0, []);
const traced = await start(1, [
  "--otlp-traces-endpoint",
  `http://127.0.0.1:${String(receiverPort)}/v1/traces`,
  "--otlp-traces-export-delay-ms",
  "1000",
]);

async function warmInvoker(berth: BenchBerth, name: string) {
  const { control, data } = sdkClients(berth);
  const arn = await createReadyRuntime(control, name, "node-example");
  const sessionId = `bench-tracing-${name}-${"t".repeat(33)}`;
  const invoke = async (): Promise<void> => {
    const response = await data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: sessionId,
        contentType: "application/json",
        payload: Buffer.from(JSON.stringify({ prompt: "hello" })),
        traceParent: `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`,
      }),
    );
    await response.response?.transformToString();
  };
  await invoke(); // the session's start is not timed
  return invoke;
}

/** The server process's CPU time so far (user + system), in ms. */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${String(pid)}/stat`, "utf8")
    .split(") ")[1]
    ?.split(" ");
  const ticks = Number(fields?.[11] ?? 0) + Number(fields?.[12] ?? 0);
  return ticks * 10; // USER_HZ is 100 on Linux
}

try {
  const invokePlain = await warmInvoker(plain, "plain");
  const invokeTraced = await warmInvoker(traced, "traced");
  const cpuBefore = [cpuMs(plain.pid), cpuMs(traced.pid)];
  const [plainSamples, tracedSamples] = await timeInterleaved(samples, invokePlain, invokeTraced);
  const cpuAfter = [cpuMs(plain.pid), cpuMs(traced.pid)];
  const off = percentiles(plainSamples);
  const on = percentiles(tracedSamples);
  console.log(
    JSON.stringify(
      {
        samples,
        warmInvokeMs: { tracingOff: off, tracingOn: on, addedP50: round(on.p50 - off.p50) },
        berthCpuMsPerRequest: {
          tracingOff: round(((cpuAfter[0] ?? 0) - (cpuBefore[0] ?? 0)) / samples),
          tracingOn: round(((cpuAfter[1] ?? 0) - (cpuBefore[1] ?? 0)) / samples),
        },
        exported: { exports, bytes: exportedBytes },
      },
      null,
      2,
    ),
  );
} finally {
  await plain.stop();
  await traced.stop();
  receiver.close();
}
