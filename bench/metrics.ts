// What a Prometheus scrape costs as sessions grow: `berth serve --metrics-port` as its own
// process, a runtime with session storage, and 0, 1, 16 and 64 running sessions (the default
// maxSessions); at each count, BENCH_SCRAPES scrapes of /metrics one after another (default 20).
// Prints JSON: the scrape's duration, its size, and how many series it has. The baseline is the
// scrape with no sessions (Node's own metrics and the request series only).
import { createServer } from "node:net";
import { once } from "node:events";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  createReadyRuntime,
  installExampleAgent,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
} from "./support.ts";

const scrapes = Number(process.env["BENCH_SCRAPES"] ?? 20);
const sessionCounts = [0, 1, 16, 64];

async function freePort(): Promise<number> {
  const server = createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  return typeof address === "object" && address !== null ? address.port : 0;
}

const metricsPort = await freePort();
const berth = await startBenchBerth({
  prepare: installExampleAgent,
  args: ["--metrics-port", String(metricsPort), "--max-sessions", "64"],
});
const metricsUrl = `http://127.0.0.1:${String(metricsPort)}/metrics`;
const { control, data } = sdkClients(berth);

async function scrapeOnce(): Promise<{ ms: number; text: string }> {
  const startedAt = performance.now();
  const text = await (await fetch(metricsUrl)).text();
  return { ms: performance.now() - startedAt, text };
}

try {
  const arn = await createReadyRuntime(control, "bench_metrics", "node-example", {
    filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
  });
  const results = [];
  let running = 0;
  for (const count of sessionCounts) {
    // Start the sessions up to `count`, eight at a time.
    while (running < count) {
      const batch = Array.from({ length: Math.min(8, count - running) }, (_, index) =>
        data.send(
          new InvokeAgentRuntimeCommand({
            agentRuntimeArn: arn,
            runtimeSessionId: `bench-metrics-${String(running + index)}-${"m".repeat(33)}`,
            payload: Buffer.from(JSON.stringify({ prompt: "hello" })),
            contentType: "application/json",
          }),
        ),
      );
      for (const response of await Promise.all(batch)) await response.response?.transformToString();
      running += batch.length;
    }
    await scrapeOnce(); // warms up
    const samples: number[] = [];
    let text = "";
    for (let index = 0; index < scrapes; index += 1) {
      const scraped = await scrapeOnce();
      samples.push(scraped.ms);
      text = scraped.text;
    }
    const series = text.split("\n").filter((line) => line !== "" && !line.startsWith("#"));
    results.push({
      sessions: count,
      scrapeMs: percentiles(samples),
      bytes: text.length,
      series: series.length,
      berthSeries: series.filter((line) => line.startsWith("berth_")).length,
      perSessionSeries: series.filter((line) => line.includes('session="')).length,
    });
  }
  const baseline = results[0]?.scrapeMs.p50 ?? 0;
  console.log(
    JSON.stringify(
      {
        scrapes,
        results: results.map((result) => ({
          ...result,
          vsNoSessions: round(result.scrapeMs.p50 / Math.max(baseline, 0.001)),
        })),
      },
      null,
      2,
    ),
  );
} finally {
  control.destroy();
  data.destroy();
  await berth.stop();
}
