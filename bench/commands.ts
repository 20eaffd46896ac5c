// Execute command: warm round trip and output throughput, each against a baseline measured in
// the same run. Berth runs as its own process (`berth serve`); the client is the official SDK.
// Prints JSON. Settings: BENCH_SAMPLES (round trips, default 300), BENCH_MEGABYTES (size of the
// file streamed, default 256), BENCH_ROUNDS (throughput runs each, default 3). Also reports the
// Berth server process's own CPU time per MB streamed.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommandCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  createReadyRuntime,
  installExampleAgent,
  percentiles,
  round,
  startBenchBerth,
  startProcess,
  sdkClients,
  timeInterleaved,
} from "./support.ts";

const samples = Number(process.env["BENCH_SAMPLES"] ?? 300);
const megabytes = Number(process.env["BENCH_MEGABYTES"] ?? 256);
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 3);
const bigFile = "stream.txt";

let hostFile = "";
const berth = await startBenchBerth({
  prepare: (dataDir) => {
    const target = installExampleAgent(dataDir);
    // The file both sides stream: in the agent's code folder, which the sandbox sees at /app.
    // Printable text, so neither side pays for escaping bytes that are not UTF-8.
    hostFile = join(target, bigFile);
    const line = `${"0123456789abcdef".repeat(63)}\n`;
    writeFileSync(hostFile, line.repeat(Math.ceil((megabytes * 2 ** 20) / line.length)));
  },
});
const { config: clientConfig, control, data } = sdkClients(berth);
const arn = await createReadyRuntime(control, "bench_commands", "node-example");
const sessionId = `bench-commands-${String(process.pid)}-${"c".repeat(24)}`;

/** Runs a command through the SDK, reading every event; returns the stdout characters seen. */
async function commandThroughBerth(command: string): Promise<number> {
  const response = await data.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      body: { command },
    }),
  );
  let characters = 0;
  for await (const event of response.stream ?? []) {
    characters += event.chunk?.contentDelta?.stdout?.length ?? 0;
  }
  return characters;
}

/** The baseline: the same shell started from Node on the host, its output read from a pipe. */
async function commandDirect(args: string[]): Promise<number> {
  const child = spawn(args[0] ?? "", args.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  let bytes = 0;
  child.stdout.on("data", (chunk: Buffer) => (bytes += chunk.length));
  child.stderr.resume();
  await once(child, "close");
  return bytes;
}

await commandThroughBerth("true"); // starts the session: not measured

const [berthTrue, directTrue] = await timeInterleaved(
  samples,
  () => commandThroughBerth("true"),
  () => commandDirect(["bash", "-c", "true"]),
);

/** CPU time (user + system) a process has used so far, in ms. */
function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${String(pid)}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

const throughput = {
  berth: [] as number[],
  direct: [] as number[],
  serverCpuMsPerMB: [] as number[],
};
const fileBytes = (await commandDirect(["cat", hostFile])) || 1; // also warms the page cache
for (let run = 0; run < rounds; run += 1) {
  let started = performance.now();
  const serverCpuBefore = cpuMsOf(berth.pid);
  const streamed = await commandThroughBerth(`cat /app/${bigFile}`);
  if (streamed !== fileBytes) throw new Error(`streamed ${streamed} of ${fileBytes} bytes`);
  throughput.berth.push(fileBytes / 2 ** 20 / ((performance.now() - started) / 1000));
  throughput.serverCpuMsPerMB.push((cpuMsOf(berth.pid) - serverCpuBefore) / (fileBytes / 2 ** 20));
  started = performance.now();
  await commandDirect(["cat", hostFile]);
  throughput.direct.push(fileBytes / 2 ** 20 / ((performance.now() - started) / 1000));
}
// The official SDK's own ceiling on this machine: the same bytes as ready-made events from a
// server that does nothing else (bench/event-stream-server.ts), read by the same client code.
const ceilingServer = await startProcess(
  process.execPath,
  [fileURLToPath(new URL("event-stream-server.ts", import.meta.url)), String(fileBytes)],
  "listening",
);
const ceilingClient = new BedrockAgentCoreClient({
  ...clientConfig,
  endpoint: `http://127.0.0.1:${String(ceilingServer.ready["port"])}`,
});
const ceiling: number[] = [];
for (let run = 0; run < rounds; run += 1) {
  const started = performance.now();
  const response = await ceilingClient.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      body: { command: "cat" },
    }),
  );
  let characters = 0;
  for await (const event of response.stream ?? [])
    characters += event.chunk?.contentDelta?.stdout?.length ?? 0;
  ceiling.push(characters / 2 ** 20 / ((performance.now() - started) / 1000));
}
ceilingClient.destroy();
await ceilingServer.stop();

const median = (values: number[]) => percentiles(values).p50;

const berthRoundTrip = percentiles(berthTrue);
const directRoundTrip = percentiles(directTrue);
const berthMBps = median(throughput.berth);
const directMBps = median(throughput.direct);
console.log(
  JSON.stringify(
    {
      warmRoundTrip: {
        command: "true",
        berthSdkMs: berthRoundTrip,
        spawnBashMs: directRoundTrip,
        ratioP50: round(berthRoundTrip.p50 / directRoundTrip.p50),
        target: "p50 <= 5 ms and <= 4x the spawn baseline",
        met: berthRoundTrip.p50 <= 5 && berthRoundTrip.p50 <= 4 * directRoundTrip.p50,
      },
      throughput: {
        megabytes: round(fileBytes / 2 ** 20),
        berthSdkMBps: round(berthMBps),
        pipeMBps: round(directMBps),
        fraction: round(berthMBps / directMBps),
        sdkCeilingMBps: round(median(ceiling)),
        sdkCeilingFraction: round(median(ceiling) / directMBps),
        berthServerCpuMsPerMB: round(median(throughput.serverCpuMsPerMB)),
        target: ">= 40% of the pipe baseline",
        met: berthMBps >= 0.4 * directMBps,
      },
    },
    null,
    2,
  ),
);
control.destroy();
data.destroy();
await berth.stop();
