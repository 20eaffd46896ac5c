// Container images: pull + unpack against `skopeo copy` + `umoci unpack` of the same image, and
// the cold start of an image session against a code session of the same agent. Baselines are
// measured in the same run, interleaved. Prints JSON.
// Settings: BENCH_PULLS (default 3), BENCH_COLD (default 30).
//
// The image: Node (this process's binary and its libraries), busybox, and the example agent
// with its node_modules, in one gzip layer (about 50 MB compressed), on a local docker-registry.
import { execFile, execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { ContainerImages } from "../src/adapters/images/container-images.ts";
import { ImageStore } from "../src/adapters/images/image-store.ts";
import { RegistryAddressPolicy } from "../src/adapters/images/registry-addresses.ts";
import { RegistryClient } from "../src/adapters/images/registry-client.ts";
import { insecureRegistries } from "../src/adapters/images/registry-settings.ts";
import {
  nodeImageConfig,
  nodeImageRoot,
  OciLayout,
  push,
  startRegistry,
  tarOfFolder,
} from "../test/support/oci-images.ts";
import {
  createReadyRuntime,
  installExampleAgent,
  measureInterleaved,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
  timeInterleaved,
} from "./support.ts";

const run = promisify(execFile);
const pulls = Number(process.env["BENCH_PULLS"] ?? 3);
const coldSamples = Number(process.env["BENCH_COLD"] ?? 30);
const exampleAgent = fileURLToPath(new URL("../examples/node-agent", import.meta.url));
const probe = fileURLToPath(new URL("../test/agents/probe", import.meta.url));

const work = mkdtempSync(join(tmpdir(), "berth-bench-images-"));
const registry = await startRegistry();
const root = nodeImageRoot(probe);
cpSync(exampleAgent, join(root, "app"), { recursive: true });
const layout = new OciLayout(join(work, "layout"));
const manifest = layout.image([tarOfFolder(root)], nodeImageConfig);
layout.tag(manifest, "agent");
rmSync(root, { recursive: true, force: true });
const uri = `${registry.address}/bench-agent:1`;
push(layout, "agent", uri);
const layerBytes = (
  JSON.parse(
    execFileSync("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${uri}`], {
      encoding: "utf8",
    }),
  ) as {
    layers: { size: number }[];
  }
).layers.reduce((sum, layer) => sum + layer.size, 0);

// --- pull + unpack: Berth's image store against skopeo + umoci, each into a fresh folder ---
let pullCount = 0;
async function pullWithBerth(): Promise<void> {
  const dir = join(work, `berth-${(pullCount += 1)}`);
  const images = new ContainerImages({
    store: new ImageStore(dir, {
      maxImageBytes: 2 ** 34,
      maxImageMetadataBytes: 2 ** 22,
      // No sandbox runs on these roots: nothing to mount over.
      rootNeeds: { folders: [], files: [] },
    }),
    registry: new RegistryClient({
      credentials: () => undefined,
      insecure: insecureRegistries([]),
      addresses: new RegistryAddressPolicy([registry.address]),
      maxMetadataBytes: 2 ** 22,
    }),
    stagingDir: join(dir, "staging"),
    maxMetadataBytes: 2 ** 22,
  });
  await images.pull(uri, new AbortController().signal);
  rmSync(dir, { recursive: true, force: true });
}
async function pullWithSkopeoUmoci(): Promise<void> {
  const dir = join(work, `skopeo-${(pullCount += 1)}`);
  mkdirSync(dir);
  await run("skopeo", [
    "copy",
    "--quiet",
    "--src-tls-verify=false",
    `docker://${uri}`,
    `oci:${dir}/layout:agent`,
  ]);
  await run("umoci", ["unpack", "--image", `${dir}/layout:agent`, `${dir}/bundle`]);
  rmSync(dir, { recursive: true, force: true });
}
const [berthPullMs, baselinePullMs] = await timeInterleaved(
  pulls,
  pullWithBerth,
  pullWithSkopeoUmoci,
);

// --- cold start: the same agent from the image and from code, first invoke of new sessions ---
const berth = await startBenchBerth({
  args: ["--sandbox-outbound", "none", "--bubblewrap-prestart", "1"],
  prepare: (dataDir) => installExampleAgent(dataDir),
});
const { control, data } = sdkClients(berth);
const codeArn = await createReadyRuntime(control, "bench_code", "node-example");
const imageArn = await createReadyRuntime(control, "bench_image", "unused", {
  agentRuntimeArtifact: { containerConfiguration: { containerUri: uri } },
});
let sessions = 0;
function coldInvoke(arn: string): () => Promise<number> {
  return async () => {
    const runtimeSessionId = `bench-${process.pid}-${(sessions += 1)}-${"x".repeat(33)}`;
    const startedAt = performance.now();
    const response = await data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId,
        payload: Buffer.from(JSON.stringify({ prompt: "hello" })),
        contentType: "application/json",
      }),
    );
    await response.response?.transformToString();
    const elapsed = performance.now() - startedAt;
    await data.send(new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId }));
    return elapsed;
  };
}
await coldInvoke(imageArn)();
await coldInvoke(codeArn)();
const [imageColdMs, codeColdMs] = await measureInterleaved(
  coldSamples,
  coldInvoke(imageArn),
  coldInvoke(codeArn),
);
await berth.stop();
await registry.stop();
rmSync(work, { recursive: true, force: true });

const berthPull = percentiles(berthPullMs);
const baselinePull = percentiles(baselinePullMs);
const imageCold = percentiles(imageColdMs);
const codeCold = percentiles(codeColdMs);
console.log(
  JSON.stringify(
    {
      image: { compressedMiB: round(layerBytes / 2 ** 20) },
      pullAndUnpack: {
        berth: berthPull,
        skopeoCopyPlusUmociUnpack: baselinePull,
        ratioP50: round(berthPull.p50 / baselinePull.p50),
        target: "ratio <= 1 (no slower than the baseline)",
      },
      coldStart: {
        imageSession: imageCold,
        codeSession: codeCold,
        addedP50Ms: round(imageCold.p50 - codeCold.p50),
        target: "addedP50Ms <= 10",
      },
    },
    null,
    2,
  ),
);
