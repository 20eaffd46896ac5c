// Control-plane latency while a large image unpacks, against the same requests with nothing
// unpacking, in one run. Berth runs as its own process (`berth serve`); the client is the
// official SDK. Prints JSON. The image: ~120 MB in 30,000 small files, then a layer that empties
// their folder again (test/support/big-image.ts). Settings: BENCH_ROUNDS (default 3).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { bigImageLayers } from "../test/support/big-image.ts";
import { OciLayout, push, startRegistry } from "../test/support/oci-images.ts";
import { percentiles, round, sdkClients, startBenchBerth } from "./support.ts";

const rounds = Number(process.env["BENCH_ROUNDS"] ?? 3);
const workDir = mkdtempSync(join(tmpdir(), "berth-bench-unpacking-"));
const registry = await startRegistry();
const berth = await startBenchBerth({ args: ["--registry-private-hosts", "127.0.0.1"] });
const { control } = sdkClients(berth);

try {
  const layout = new OciLayout(join(workDir, "layout"));
  layout.tag(layout.image(bigImageLayers(), { Entrypoint: ["/bin/agent"] }), "big");
  const timed = async (): Promise<number> => {
    const startedAt = performance.now();
    await control.send(new ListAgentRuntimesCommand({}));
    return performance.now() - startedAt;
  };
  const whileUnpacking: number[] = [];
  const idle: number[] = [];
  for (let round = 0; round < rounds; round += 1) {
    // A new repository each round: nothing is cached, every round unpacks the whole image.
    const uri = `${registry.address}/big${round}:1`;
    push(layout, "big", uri);
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `bench_big_${round}`,
        agentRuntimeArtifact: { containerConfiguration: { containerUri: uri } },
        roleArn: undefined,
      }),
    );
    let status = created.status;
    while (status === "CREATING") {
      whileUnpacking.push(await timed());
      status = (
        await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }))
      ).status;
    }
    if (status !== "READY") throw new Error(`the image did not become READY: ${status}`);
    for (let sample = 0; sample < 200; sample += 1) idle.push(await timed());
  }
  const busy = percentiles(whileUnpacking);
  const quiet = percentiles(idle);
  console.log(
    JSON.stringify(
      {
        benchmark: "image-unpacking",
        listAgentRuntimesWhileUnpackingMs: { ...busy, max: round(Math.max(...whileUnpacking)) },
        listAgentRuntimesIdleMs: { ...quiet, max: round(Math.max(...idle)) },
        ratioP99: round(busy.p99 / quiet.p99),
      },
      null,
      2,
    ),
  );
} finally {
  control.destroy();
  await berth.stop();
  await registry.stop();
  rmSync(workDir, { recursive: true, force: true });
}
