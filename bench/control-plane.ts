// Control-plane latency through the official SDK: Berth against a bare node:http server that
// replays Berth's own responses (same bytes to parse), both in their own processes. Prints JSON.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BedrockAgentCoreControlClient,
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import {
  percentiles,
  round,
  startBenchBerth,
  startProcess,
  timeEach,
  timeInterleaved,
} from "./support.ts";

const runtimeCount = Number(process.env["BENCH_RUNTIMES"] ?? 1000);
const samples = Number(process.env["BENCH_SAMPLES"] ?? 300);

const artifact = {
  codeConfiguration: {
    code: { s3: { bucket: "agents", prefix: "bench" } },
    runtime: "NODE_22" as const,
    entryPoint: ["main.js"],
  },
};
const createInput = (name: string) => ({
  agentRuntimeName: name,
  agentRuntimeArtifact: artifact,
  roleArn: undefined,
});

// The artifact exists, so created runtimes go READY as in real use.
const berth = await startBenchBerth({
  prepare: (dataDir) => {
    mkdirSync(join(dataDir, "artifacts", "agents", "bench"), { recursive: true });
    writeFileSync(join(dataDir, "artifacts", "agents", "bench", "main.js"), "// agent\n");
  },
});
const { credentials } = berth;
const clientFor = (endpoint: string) =>
  new BedrockAgentCoreControlClient({ endpoint, region: "us-east-1", credentials, maxAttempts: 1 });
const berthClient = clientFor(berth.url);

// Fill Berth with the runtimes the List measurement pages over (creates are measured as they go).
const createSamples = await timeEach(runtimeCount, (index) =>
  berthClient.send(new CreateAgentRuntimeCommand(createInput(`bench_${index}`))),
);
const someId =
  (await berthClient.send(new ListAgentRuntimesCommand({ maxResults: 1 }))).agentRuntimes?.[0]
    ?.agentRuntimeId ?? "";

const operations = {
  Get: (client: BedrockAgentCoreControlClient) => () =>
    client.send(new GetAgentRuntimeCommand({ agentRuntimeId: someId })),
  List: (client: BedrockAgentCoreControlClient) => () =>
    client.send(new ListAgentRuntimesCommand({ maxResults: 100 })),
};

// Record Berth's real responses so the echo server answers with the same bytes.
const recorded = await recordResponses(berth.url);
const echo = await startProcess(
  process.execPath,
  [fileURLToPath(new URL("./echo-server.ts", import.meta.url)), JSON.stringify(recorded)],
  "listening",
);
const echoClient = clientFor(`http://127.0.0.1:${String(echo.ready["port"])}`);

const results: Record<string, unknown> = {};
const measure = async (
  name: string,
  berthRun: () => Promise<unknown>,
  echoRun: () => Promise<unknown>,
) => {
  await timeEach(30, berthRun); // warm-up
  await timeEach(30, echoRun);
  const [berthSamples, echoSamples] = await timeInterleaved(samples, berthRun, echoRun);
  const berthStats = percentiles(berthSamples);
  const echoStats = percentiles(echoSamples);
  results[name] = {
    berth: berthStats,
    echoBaseline: echoStats,
    p50Ratio: round(berthStats.p50 / echoStats.p50),
  };
};

let extra = 0;
await measure(
  "CreateAgentRuntime",
  () => berthClient.send(new CreateAgentRuntimeCommand(createInput(`extra_${(extra += 1)}`))),
  () => echoClient.send(new CreateAgentRuntimeCommand(createInput("echo"))),
);
await measure("GetAgentRuntime", operations.Get(berthClient), operations.Get(echoClient));
await measure(
  `ListAgentRuntimes (100 of ${runtimeCount})`,
  operations.List(berthClient),
  operations.List(echoClient),
);

console.log(
  JSON.stringify(
    {
      benchmark: "control-plane",
      node: process.version,
      runtimesInStore: runtimeCount + extra,
      fillCreates: percentiles(createSamples),
      operations: results,
      target: "Berth p50 within 2x of the echo baseline",
      targetMet: Object.values(results).every(
        (result) => (result as { p50Ratio: number }).p50Ratio <= 2,
      ),
    },
    null,
    2,
  ),
);

berthClient.destroy();
echoClient.destroy();
await Promise.all([berth.stop(), echo.stop()]);

async function recordResponses(
  url: string,
): Promise<Record<string, { status: number; body: string }>> {
  const captured: Record<string, { status: number; body: string }> = {};
  const client = new BedrockAgentCoreControlClient({
    endpoint: url,
    region: "us-east-1",
    credentials,
    maxAttempts: 1,
  });
  client.middlewareStack.add(
    (next) => async (args) => {
      const result = await next(args);
      const request = args.request as { method: string; path: string };
      const response = result.response as { statusCode: number; body: NodeJS.ReadableStream };
      const chunks: Buffer[] = [];
      for await (const chunk of response.body) chunks.push(Buffer.from(chunk as Buffer));
      const body = Buffer.concat(chunks).toString("utf8");
      captured[
        `${request.method} ${request.path.split("/")[1] ?? ""}:${request.path.split("/").length}`
      ] = { status: response.statusCode, body };
      const { Readable } = await import("node:stream");
      (result.response as { body: unknown }).body = Readable.from([Buffer.from(body)]);
      return result;
    },
    { step: "deserialize", name: "record" },
  );
  await client.send(new CreateAgentRuntimeCommand(createInput("recorded")));
  await client.send(new GetAgentRuntimeCommand({ agentRuntimeId: someId }));
  await client.send(new ListAgentRuntimesCommand({ maxResults: 100 }));
  client.destroy();
  return captured;
}
