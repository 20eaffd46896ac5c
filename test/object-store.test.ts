import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { after, before, describe, it } from "node:test";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { S3ObjectStore } from "../src/adapters/s3/object-store.ts";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import {
  berthBin,
  clientsOf,
  killAll,
  spawnBerth,
  type BerthProcess,
} from "./support/berth-process.ts";
import { hostSuite, makeDataDir, removeDir } from "./support/berth.ts";
import { cephMissing, putProbeZip, startCephS3, type CephS3 } from "./support/ceph-s3.ts";
import { runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const runFile = promisify(execFile);

/**
 * Issue 16 end to end: real `berth serve` processes, real sandboxes and volumes, a real S3
 * server (Ceph RGW). A machine's disk is thrown away (its data directory never used again) or
 * Berth is killed outright, and what comes back is checked file by file.
 */
describe(
  "session storage, code and metadata in an object store (real Berth, Ceph RGW, as root)",
  { skip: hostSuite.skip ?? cephMissing() },
  () => {
    const bucket = "berth-e2e";
    const dirs: string[] = [];
    const running: BerthProcess[] = [];
    let ceph: CephS3 | undefined;

    before(async () => {
      const server = (ceph = await startCephS3());
      await server.bucket(bucket);
      await putProbeZip(server, bucket, "code/probe.zip");
    });

    after(async () => {
      await killAll(running);
      for (const dir of dirs) removeDir(dir);
      await ceph?.stop();
    });

    function emptyDataDir(): string {
      const dir = makeDataDir();
      dirs.push(dir);
      return dir;
    }

    /** A Berth on `dataDir` keeping everything under s3://berth-e2e/<prefix>, checkpointing every second. */
    async function start(dataDir: string, prefix: string, extra: string[] = []) {
      const berth = await spawnBerth([
        "--data-dir",
        dataDir,
        ...(ceph?.berthArgs(`s3://${bucket}/${prefix}`) ?? []),
        "--session-storage-checkpoint-seconds",
        "1",
        "--session-storage-bytes",
        String(128 * 2 ** 20),
        "--sandbox-outbound",
        "none",
        ...extra,
      ]);
      running.push(berth);
      return { berth, ...clientsOf(berth.url, dataDir), dataDir };
    }

    type Started = Awaited<ReturnType<typeof start>>;

    async function storageRuntime(on: Started) {
      return createRuntime({ control: on.control }, "probe", {
        agentRuntimeArtifact: {
          codeConfiguration: {
            code: { s3: { bucket, prefix: "code/probe.zip" } },
            runtime: "NODE_22",
            entryPoint: ["main.js"],
          },
        },
        ...workspace,
      });
    }

    async function run(on: Started, arn: string, sessionId: string, command: string) {
      const finished = await runCommand(on.data, arn, sessionId, command, 120);
      assert.equal(finished.exitCode, 0, `${command}\n${finished.stdout}\n${finished.stderr}`);
      return finished.stdout;
    }

    async function storageOf(on: Started, runtimeId: string) {
      const answer = await sendRaw(on.berth.url, {
        method: "GET",
        path: `/berth/v1/runtimes/${runtimeId}/storage`,
        credentials: on.credentials,
      });
      return (JSON.parse(answer.body) as { storage: Record<string, unknown>[] }).storage;
    }

    /** Runs the `berth` CLI against `on` as its operator would; its stdout. */
    async function berthCli(on: Started, args: string[]): Promise<string> {
      const { stdout } = await runFile(process.execPath, [berthBin, ...args], {
        env: {
          PATH: process.env["PATH"],
          HOME: process.env["HOME"],
          BERTH_ENDPOINT: on.berth.url,
          AWS_ACCESS_KEY_ID: on.credentials.accessKeyId,
          AWS_SECRET_ACCESS_KEY: on.credentials.secretAccessKey,
          AWS_REGION: "us-east-1",
        },
      });
      return stdout;
    }

    /** Every entry under the workspace: type, mode, owner, size, links, target and content hash. */
    const describeTree =
      "cd /mnt/workspace && find . -printf '%p %y %m %U %G %s %n %l\\n' | sort && find . -type f -exec sha256sum {} + | sort";

    /** A tree with every kind of entry the issue names, and a git history of three commits. */
    const buildTree = [
      "cd /mnt/workspace",
      "mkdir -p src/deep/er empty && chmod 0750 src/deep",
      "printf 'hello\\n' > src/hello.txt && chmod 0640 src/hello.txt",
      "printf '#!/bin/sh\\necho run\\n' > run.sh && chmod 0755 run.sh",
      "ln src/hello.txt hardlink.txt && ln -s src/hello.txt symlink.txt && ln -s /nowhere dangling",
      "head -c 3000000 /dev/urandom > src/deep/er/blob.bin",
      "export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t",
      "git init -q && git add -A && git commit -qm one",
      "echo two >> src/hello.txt && git commit -qam two",
      "echo three >> run.sh && git commit -qam three",
    ].join(" && ");

    /**
     * A writer that runs until killed, as careful applications write: each file under a temporary
     * name, flushed (fsync), then renamed, so a whole file is the only kind that can exist after
     * a crash; each holds its own name 2,000 times. (Without the fsync a crash, and so a
     * checkpoint, may keep the rename without the data: ext4 allocates data later.)
     */
    const writeFilesUntilKilled =
      "cd /mnt/workspace && mkdir -p w && i=0; while true; do i=$((i+1)); yes f$i | head -n 2000 > w/.t && sync w/.t && mv w/.t w/f$i; done";

    /** Fails unless every written file holds exactly what its name says; prints how many there are. */
    const checkWrittenFiles =
      'cd /mnt/workspace/w && n=0; for f in f*; do [ "$(sort -u $f)" = "$f" ] && [ $(wc -l < $f) = 2000 ] || { echo torn $f; exit 1; }; n=$((n+1)); done; echo $n';

    it("a machine's disk thrown away: a new Berth on an empty data directory serves the same runtimes and every workspace as of its last checkpoint", async () => {
      const first = await start(emptyDataDir(), "disk-lost");
      const runtime = await storageRuntime(first);
      const stopped = newSessionId("stopped");
      await run(first, runtime.arn, stopped, buildTree);
      const tree = await run(first, runtime.arn, stopped, describeTree);
      await first.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: stopped }),
      );
      // A graceful stop answers once the last generation is durable.
      const afterStop = (await storageOf(first, runtime.id)).find(
        (volume) => volume["sessionId"] === stopped,
      );
      const replica = afterStop?.["replica"] as Record<string, unknown>;
      assert.equal(replica["pending"], false);
      assert.ok(Number(replica["generation"]) >= 1);
      // The operator's view: the last durable generation, its time and size, nothing pending.
      const listed = await berthCli(first, ["storage", "list", runtime.id]);
      assert.match(listed, /^SESSION ID .* DURABLE\s+DURABLE AT\s+STORED\s+PENDING$/m);
      assert.match(
        listed.split("\n").find((line) => line.startsWith(stopped)) ?? "",
        new RegExp(`generation ${String(replica["generation"])}\\s+\\S+\\s+\\S+ \\S+\\s+no$`),
      );

      // A running session writing all the time, checkpointed every second.
      const busy = newSessionId("busy");
      await run(first, runtime.arn, busy, "mkdir -p /mnt/workspace/w");
      void runCommand(first.data, runtime.arn, busy, writeFilesUntilKilled, 600).catch(
        () => undefined,
      );
      const written = await waitFor(
        "checkpoints of the busy session",
        async () => {
          const volume = (await storageOf(first, runtime.id)).find(
            (entry) => entry["sessionId"] === busy,
          );
          const generation = Number((volume?.["replica"] as Record<string, unknown>)["generation"]);
          return generation >= 3 ? generation : undefined;
        },
        30_000,
      );
      assert.ok(written >= 3);

      first.berth.child.kill("SIGKILL");
      await first.berth.exit;
      // The first machine is gone with its disk: a new one starts from nothing but the bucket.
      const second = await start(emptyDataDir(), "disk-lost");
      assert.equal(await run(second, runtime.arn, stopped, describeTree), tree);
      assert.match(
        await run(
          second,
          runtime.arn,
          stopped,
          "cd /mnt/workspace && git -c safe.directory='*' fsck --strict 2>&1 && git log --format=%s",
        ),
        /three\ntwo\none\n$/,
      );
      // The busy session comes back as of a checkpoint: whole files only, and some of them.
      const count = Number((await run(second, runtime.arn, busy, checkWrittenFiles)).trim());
      assert.ok(count > 0, "the checkpoints held written files");
    });

    it("Berth killed with kill -9 mid-writes and mid-checkpoint loses nothing on its own disk, and the object store stays whole", async () => {
      const dataDir = emptyDataDir();
      const first = await start(dataDir, "killed");
      const runtime = await storageRuntime(first);
      const session = newSessionId("killed");
      await run(first, runtime.arn, session, "mkdir -p /mnt/workspace/w");
      void runCommand(first.data, runtime.arn, session, writeFilesUntilKilled, 600).catch(
        () => undefined,
      );
      await waitFor(
        "two checkpoints",
        async () => {
          const volume = (await storageOf(first, runtime.id))[0];
          return (
            Number((volume?.["replica"] as Record<string, unknown>)["generation"]) >= 2 || undefined
          );
        },
        30_000,
      );
      first.berth.child.kill("SIGKILL");
      await first.berth.exit;
      // The same machine, restarted: its disk has every file written before the kill.
      const again = await start(dataDir, "killed");
      const local = Number((await run(again, runtime.arn, session, checkWrittenFiles)).trim());
      await again.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
      );
      again.berth.child.kill("SIGTERM");
      assert.equal((await again.berth.exit).code, 0);
      // What it stopped with is what the object store holds.
      const elsewhere = await start(emptyDataDir(), "killed");
      const restored = Number(
        (await run(elsewhere, runtime.arn, session, checkWrittenFiles)).trim(),
      );
      assert.equal(restored, local);
      assert.ok(local > 0);
    });

    it("keeps the storage a Berth made before its object store was set, and replicates it from then on", async () => {
      const dataDir = emptyDataDir();
      const localOnly = await spawnBerth([
        "--data-dir",
        dataDir,
        "--session-storage-bytes",
        String(128 * 2 ** 20),
        "--sandbox-outbound",
        "none",
      ]);
      running.push(localOnly);
      const before = { berth: localOnly, ...clientsOf(localOnly.url, dataDir), dataDir };
      // Its code from the local artifact store, as a Berth without an object store reads it.
      installAgent(dataDir, agentSources.probe, "probe");
      const runtime = await createRuntime({ control: before.control }, "probe", workspace);
      const session = newSessionId("upgraded");
      await run(before, runtime.arn, session, "echo from-before > /mnt/workspace/kept.txt");
      localOnly.child.kill("SIGTERM");
      assert.equal((await localOnly.exit).code, 0);
      const upgraded = await start(dataDir, "upgraded");
      assert.equal(
        await run(upgraded, runtime.arn, session, "cat /mnt/workspace/kept.txt"),
        "from-before\n",
      );
      await upgraded.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
      );
      const replica = (await storageOf(upgraded, runtime.id))[0]?.["replica"] as Record<
        string,
        unknown
      >;
      assert.ok(Number(replica["generation"]) >= 1, "kept in the object store since");
    });

    it("retention and a version reset delete the storage's objects from the object store", async () => {
      const on = await start(emptyDataDir(), "deletion", [
        "--session-storage-retention-seconds",
        "3",
        "--session-storage-sweep-interval-ms",
        "200",
      ]);
      const store = new S3ObjectStore(ceph?.connection(`s3://${bucket}/deletion`) ?? assert.fail());
      const volumeObjects = async (volumeId: string) => {
        let count = 0;
        for await (const object of store.list(`volumes/${volumeId}/`))
          count += object.size >= 0 ? 1 : 0;
        return count;
      };
      const runtime = await storageRuntime(on);
      const reset = newSessionId("reset");
      await run(on, runtime.arn, reset, "echo kept > /mnt/workspace/file");
      await on.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: reset }),
      );
      const before = String((await storageOf(on, runtime.id))[0]?.["volumeId"]);
      assert.ok((await volumeObjects(before)) > 0);
      await on.control.send(
        new UpdateAgentRuntimeCommand({
          agentRuntimeId: runtime.id,
          agentRuntimeArtifact: {
            codeConfiguration: {
              code: { s3: { bucket, prefix: "code/probe.zip" } },
              runtime: "NODE_22",
              entryPoint: ["main.js"],
            },
          },
          roleArn: undefined,
          networkConfiguration: { networkMode: "PUBLIC" },
          ...workspace,
        }),
      );
      await waitFor("version 2 to be ready", async () => {
        const got = await on.control.send(
          new GetAgentRuntimeCommand({ agentRuntimeId: runtime.id }),
        );
        return (got.status === "READY" && got.agentRuntimeVersion === "2") || undefined;
      });
      // AgentCore's reset: the session's next use gets a new, empty volume.
      assert.equal((await run(on, runtime.arn, reset, "ls -A /mnt/workspace | wc -l")).trim(), "0");
      assert.equal(await volumeObjects(before), 0, "the reset volume's objects are gone");
      const after = String((await storageOf(on, runtime.id))[0]?.["volumeId"]);
      await on.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: reset }),
      );
      assert.ok((await volumeObjects(after)) > 0);
      await waitFor(
        "retention to delete the volume",
        async () => (await volumeObjects(after)) === 0 || undefined,
        20_000,
      );
    });
  },
);
