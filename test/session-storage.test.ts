import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  closeSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BedrockAgentCoreClient,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  BedrockAgentCoreControlClient,
  DeleteAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { LoopVolumes } from "../src/adapters/volumes/loop-volumes.ts";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { spawnBerth } from "./support/berth-process.ts";
import {
  hostSuite,
  isolationArgs,
  makeDataDir,
  removeDir,
  startTestBerth,
  quickLifecycleArgs,
  useTestBerth,
} from "./support/berth.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { createRuntime, newProbeVersion, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

describe("session storage (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const harness = useTestBerth(
    [
      ...quickLifecycleArgs,
      "--sandbox-outbound",
      "none",
      "--session-storage-bytes",
      String(64 * 2 ** 20),
    ],
    (berth) => {
      installAgent(berth.dataDir, agentSources.probe, "probe");
    },
  );

  let shared: { arn: string; id: string } | undefined;
  async function storageRuntime() {
    shared ??= await createRuntime(harness(), "probe", workspace);
    return shared;
  }

  const run = async (sessionId: string, command: string, arn?: string) =>
    runCommand(harness().data, arn ?? (await storageRuntime()).arn, sessionId, command);

  async function stop(sessionId: string, arn?: string): Promise<void> {
    await harness().data.send(
      new StopRuntimeSessionCommand({
        agentRuntimeArn: arn ?? (await storageRuntime()).arn,
        runtimeSessionId: sessionId,
      }),
    );
  }

  /** Every entry under the workspace with type, mode, size, links, mtime and content hash. */
  const describeTree =
    "cd /mnt/workspace && find . -printf '%p %y %m %s %n %T@ %l\\n' | sort && find . -type f -exec sha256sum {} + | sort";

  async function operatorRequest(method: string, path: string) {
    const berth = harness();
    const answer = await sendRaw(berth.berth.url, {
      method,
      path,
      credentials: berth.berth.credentials,
    });
    return {
      status: answer.status,
      body: JSON.parse(answer.body || "{}") as Record<string, unknown>,
    };
  }

  describe("session storage", () => {
    it("keeps what the agent and commands wrote, exactly as left, across a stop", async () => {
      const runtime = await storageRuntime();
      const session = newSessionId();
      const written = await invokeProbe(harness().data, runtime.arn, session, {
        action: "write",
        path: "/mnt/workspace/from-agent.txt",
        content: "written by the agent",
      });
      assert.equal(written["error"], undefined);
      const setUp = await run(
        session,
        [
          "cd /mnt/workspace && mkdir -p project/node_modules/pkg && echo 'module.exports = 1' > project/node_modules/pkg/index.js",
          "git init -q project && cd project && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m first && cd ..",
          "head -c 3000000 /dev/urandom > blob && chmod 640 blob && sync",
        ].join(" && "),
      );
      assert.equal(setUp.exitCode, 0, setUp.stderr);
      const before = (await run(session, describeTree)).stdout;
      await stop(session);
      const after = await run(session, describeTree);
      assert.equal(after.stdout, before, "every file, mode, size, link count and mtime as left");
      assert.match(after.stdout, /from-agent\.txt/);
      assert.match(after.stdout, /project\/\.git\/HEAD/);
      assert.equal(
        (await run(session, "git -C /mnt/workspace/project log --format=%s")).stdout,
        "first\n",
      );
    });

    it("is mounted before the agent starts, owned by the session's user", async () => {
      const runtime = await storageRuntime();
      const session = newSessionId();
      await run(session, "touch /mnt/workspace/early-bird");
      await stop(session);
      const seen = await invokeProbe(harness().data, runtime.arn, session, { action: "startup" });
      assert.deepEqual(seen, { workspace: { ok: ["early-bird"] } });
      const owner = await run(
        session,
        "stat -c '%u:%g' /mnt/workspace /mnt/workspace/early-bird; id -u",
      );
      assert.equal(owner.stdout, "1000:1000\n1000:1000\n1000\n");
    });

    it("survives the idle timeout and a kill -9 of the agent", async () => {
      const runtime = await createRuntime(harness(), "probe", {
        ...workspace,
        lifecycleConfiguration: { idleRuntimeSessionTimeout: 1, maxLifetime: 3600 },
      });
      const session = newSessionId();
      await run(session, "echo idle > /mnt/workspace/a && sync", runtime.arn);
      await waitFor("the idle session to end", async () =>
        (await harness().berth.sessions.list(runtime.id)).length === 0 ? true : undefined,
      );
      await run(session, "echo crash > /mnt/workspace/b && sync && kill -9 2", runtime.arn);
      await waitFor("the crashed session to end", async () =>
        (await harness().berth.sessions.list(runtime.id)).length === 0 ? true : undefined,
      );
      const back = await run(session, "cat /mnt/workspace/a /mnt/workspace/b", runtime.arn);
      assert.equal(back.stdout, "idle\ncrash\n");
    });

    it("supports full POSIX: hard links, symlinks, FIFOs, sockets, xattrs, fallocate, rename, modes", async () => {
      const session = newSessionId();
      const script = `
set -e
cd /mnt/workspace
echo one > file && ln file hard && ln -s file soft && mkfifo fifo
fallocate -l 1048576 reserved
echo new > replacement && mv -f replacement file
echo two > other && mv -f other hard
chmod 600 file
python3 -c "
import os, socket
s = socket.socket(socket.AF_UNIX); s.bind('sock')
os.setxattr('file', 'user.note', b'kept')
"
echo ok`;

      const made = await run(session, script);
      assert.equal(made.stdout, "ok\n", made.stderr);
      await stop(session);
      const check = await run(
        session,
        `cd /mnt/workspace
stat -c '%n %F %a %s %h' file hard soft fifo sock reserved
readlink soft
python3 -c "import os; print(os.getxattr('file', 'user.note').decode())"
cat file hard`,
      );
      assert.equal(
        check.stdout,
        [
          "file regular file 600 4 1",
          "hard regular file 644 4 1",
          "soft symbolic link 777 4 1",
          "fifo fifo 644 0 1",
          "sock socket 755 0 1",
          "reserved regular file 644 1048576 1",
          "file",
          "kept",
          "new",
          "two",
          "",
        ].join("\n"),
        check.stderr,
      );
    });

    it("has a hard quota: past it writes get ENOSPC in that session only", async () => {
      const full = newSessionId();
      const other = newSessionId();
      const filled = await run(full, "head -c 100000000 /dev/zero > /mnt/workspace/big; echo $?");
      assert.match(filled.stderr, /No space left on device/);
      assert.equal(filled.stdout, "1\n");
      const neighbour = await run(
        other,
        "head -c 10000000 /dev/zero > /mnt/workspace/ok && echo fine",
      );
      assert.equal(neighbour.stdout, "fine\n");
    });

    it("keeps each session's storage to itself", async () => {
      const first = newSessionId();
      const second = newSessionId();
      await run(first, "echo secret > /mnt/workspace/private");
      const seen = await run(second, "ls -A /mnt/workspace; ls -A /mnt");
      assert.equal(seen.stdout, "workspace\n");
      const devices = await Promise.all(
        [first, second].map(
          async (session) => (await run(session, "stat -c %d /mnt/workspace")).stdout,
        ),
      );
      assert.notEqual(devices[0], devices[1], "each session has a filesystem of its own");
    });

    it("starts empty after a version change, or keeps it when the runtime says so", async () => {
      for (const keep of [false, true]) {
        const runtime = await createRuntime(harness(), "probe", {
          ...workspace,
          ...(keep ? { tags: { "berth:session-storage-on-version-change": "keep" } } : {}),
        });
        const session = newSessionId();
        await run(session, "echo v1 > /mnt/workspace/version", runtime.arn);
        await newProbeVersion(harness(), runtime.id);
        const after = await run(session, "cat /mnt/workspace/version 2>&1", runtime.arn);
        assert.equal(
          after.stdout,
          keep ? "v1\n" : "cat: /mnt/workspace/version: No such file or directory\n",
        );
      }
    });

    it("shows size and usage to the operator and deletes one session's storage", async () => {
      const runtime = await storageRuntime();
      const session = newSessionId();
      await run(session, "head -c 5000000 /dev/urandom > /mnt/workspace/data && sync");
      const listed = await operatorRequest("GET", `/berth/v1/runtimes/${runtime.id}/storage`);
      const mine = (listed.body["storage"] as Record<string, unknown>[]).find(
        (entry) => entry["sessionId"] === session,
      );
      assert.ok(mine !== undefined);
      assert.equal(mine["mountPath"], "/mnt/workspace");
      assert.equal(mine["sizeBytes"], 64 * 2 ** 20);
      assert.equal(mine["attached"], true);
      assert.ok(Number(mine["usedBytes"]) >= 5_000_000);
      assert.ok(Number(mine["allocatedBytes"]) >= 5_000_000);
      const path = `/berth/v1/runtimes/${runtime.id}/sessions/${encodeURIComponent(session)}/storage`;
      const whileRunning = await operatorRequest("DELETE", path);
      assert.equal(whileRunning.status, 409);
      assert.match(String(whileRunning.body["message"]), /stop it/);
      await stop(session);
      assert.equal((await operatorRequest("DELETE", path)).status, 200);
      assert.equal((await operatorRequest("DELETE", path)).status, 404);
      assert.equal((await run(session, "ls -A /mnt/workspace")).stdout, "");
    });

    it("fails loudly, never starting empty, when the storage cannot be attached", async () => {
      const runtime = await storageRuntime();
      const session = newSessionId();
      await run(session, "echo precious > /mnt/workspace/data");
      await stop(session);
      const imageDir = join(harness().dataDir, "storage", "images");
      const listed = await operatorRequest("GET", `/berth/v1/runtimes/${runtime.id}/storage`);
      const volumeId = String(
        (listed.body["storage"] as Record<string, unknown>[]).find(
          (entry) => entry["sessionId"] === session,
        )?.["volumeId"],
      );
      // Zero the ext4 superblock (1 KiB in) and its first backups.
      const descriptor = openSync(join(imageDir, `${volumeId}.img`), "r+");
      for (const offset of [1024, 8193 * 1024, 32768 * 1024])
        writeSync(descriptor, Buffer.alloc(1024), 0, 1024, offset);
      closeSync(descriptor);
      await assert.rejects(run(session, "ls /mnt/workspace"), (error: Error) => {
        assert.equal(error.name, "RuntimeClientError");
        assert.match(error.message, /storage at \/mnt\/workspace exists but could not be attached/);
        assert.match(error.message, /not started on an empty directory/);
        return true;
      });
      assert.equal(
        (await harness().berth.sessions.list(runtime.id)).some((s) => s.sessionId === session),
        false,
      );
    });

    it("deletes storage unused past the retention period", async () => {
      const berth = await startTestBerth([
        "--sandbox-outbound",
        "none",
        "--session-storage-retention-seconds",
        "1",
        "--session-storage-sweep-interval-ms",
        "50",
      ]);
      try {
        installAgent(berth.dataDir, agentSources.probe, "probe");
        const runtime = await createRuntime(berth, "probe", workspace);
        const session = newSessionId();
        await runCommand(berth.data, runtime.arn, session, "echo short-lived > /mnt/workspace/a");
        const writtenAt = Date.now();
        const images = () => readdirSync(join(berth.dataDir, "storage", "images"));
        const deletion = () =>
          berth.logLines.find((line) => line["msg"] === "session storage deleted");
        assert.equal(images().length, 1);
        // In use, it is never swept, however old: past the retention and many sweeps, still there.
        await waitFor("the retention and several sweeps to pass", () =>
          Date.now() - writtenAt > 1500 ? true : undefined,
        );
        assert.equal(images().length, 1);
        assert.equal(deletion(), undefined);
        await berth.data.send(
          new StopRuntimeSessionCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId: session,
          }),
        );
        // The log line follows the deletion; waiting for the file alone raced it.
        const deleted = await waitFor("the sweep's report", deletion);
        assert.equal(deleted["reason"], "retention period passed");
        assert.deepEqual(images(), []);
      } finally {
        await berth.close();
        removeDir(berth.dataDir);
      }
    });

    it("deletes storage with its runtime", async () => {
      const runtime = await createRuntime(harness(), "probe", workspace);
      const session = newSessionId();
      await run(session, "echo bye > /mnt/workspace/a", runtime.arn);
      await stop(session, runtime.arn);
      const images = () => readdirSync(join(harness().dataDir, "storage", "images")).length;
      const before = images();
      await harness().control.send(new DeleteAgentRuntimeCommand({ agentRuntimeId: runtime.id }));
      assert.equal(images(), before - 1, "deleting the runtime deleted its volume");
    });
  });

  describe("session storage volumes", () => {
    it("reserves every block of a volume on the host's disk, sparse ones again before they attach", async () => {
      const root = makeDataDir();
      const volumes = new LoopVolumes(root, 1000);
      const image = join(root, "images", "reserved.img");
      const reserved = () => statSync(image).blocks * 512 >= statSync(image).size;
      try {
        await volumes.create("reserved", 32 * 2 ** 20);
        assert.equal(reserved(), true, "reserved when made");
        // As an image from before reservation, or restored sparse, would be.
        execFileSync("cp", ["--sparse=always", image, `${image}.sparse`]);
        renameSync(`${image}.sparse`, image);
        assert.equal(reserved(), false);
        await volumes.attach("reserved", ["host-directory"]);
        assert.equal(reserved(), true, "reserved again before it is mounted");
        await volumes.remove("reserved");
      } finally {
        await volumes.recover();
        removeDir(root);
      }
    });
  });

  describe("session storage across restarts of Berth", () => {
    // Made in before(): a folder made while the file is read outlives a run that filters out
    // every test here (their after() never runs).
    let dataDir = "";
    const isolation = isolationArgs();
    before(() => {
      dataDir = makeDataDir();
    });
    after(() => {
      removeDir(dataDir);
    });

    it("keeps fsynced data through a graceful restart and through kill -9 of Berth", async () => {
      installAgent(dataDir, agentSources.probe, "probe");
      const start = async () => {
        const berth = await spawnBerth(
          ["--data-dir", dataDir, "--sandbox-outbound", "none"],
          {},
          isolation,
        );
        const credentials = JSON.parse(readFileSync(join(dataDir, "credentials.json"), "utf8")) as {
          accessKeyId: string;
          secretAccessKey: string;
        };
        const config = { endpoint: berth.url, region: "us-east-1", credentials, maxAttempts: 1 };
        return {
          berth,
          control: new BedrockAgentCoreControlClient(config),
          data: new BedrockAgentCoreClient(config),
        };
      };
      let server = await start();
      const runtime = await createRuntime(server, "probe", workspace);
      const session = newSessionId();
      const write = async (text: string) => {
        const done = await runCommand(
          server.data,
          runtime.arn,
          session,
          `echo ${text} >> /mnt/workspace/log && python3 -c "import os; f = os.open('/mnt/workspace/log', os.O_RDONLY); os.fsync(f)"`,
        );
        assert.equal(done.exitCode, 0, done.stderr);
      };
      await write("before-sigterm");
      server.berth.child.kill("SIGTERM");
      assert.equal((await server.berth.exit).code, 0);
      server = await start();
      await write("before-sigkill");
      server.berth.child.kill("SIGKILL");
      await server.berth.exit;
      server = await start();
      const back = await runCommand(server.data, runtime.arn, session, "cat /mnt/workspace/log");
      assert.equal(back.stdout, "before-sigterm\nbefore-sigkill\n");
      server.berth.child.kill("SIGTERM");
      await server.berth.exit;
      const leftover = readFileSync("/proc/self/mountinfo", "utf8")
        .split("\n")
        .filter((line) => line.includes(dataDir));
      assert.deepEqual(leftover, [], "a stopped server leaves nothing mounted");
    });
  });
});
