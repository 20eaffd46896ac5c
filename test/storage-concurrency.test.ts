import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BedrockAgentCoreClient,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { RootMounts } from "../src/adapters/host/root-mounts.ts";
import { LoopVolumes } from "../src/adapters/volumes/loop-volumes.ts";
import { mountPointsUnder } from "../src/adapters/host/mount-table.ts";
import { agentSources, installAgent } from "./support/agents.ts";
import {
  hostSuite,
  makeDataDir,
  removeDir,
  startTestBerth,
  type TestBerth,
} from "./support/berth.ts";
import { runCommand, type FinishedCommand } from "./support/commands.ts";
import { createRuntime, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

describe("storage concurrency (a host suite: it tests the real parts, as root)", hostSuite, () => {
  /** Sessions started at once: well past where Berth's loop attaches used to collide. */
  const concurrentSessions = 100;
  const attachRounds = 3;

  /** Loop devices whose backing file lies under `directory`. */
  function loopDevicesUnder(directory: string): string[] {
    return readdirSync("/sys/block")
      .filter((name) => name.startsWith("loop"))
      .filter((name) => {
        try {
          return readFileSync(`/sys/block/${name}/loop/backing_file`, "utf8").startsWith(directory);
        } catch {
          return false; // not attached
        }
      });
  }

  /** Nothing of `directory` may stay mounted or attached once its user is done. */
  function assertReleased(directory: string): void {
    assert.deepEqual(mountPointsUnder(directory), [], "no mount left");
    assert.deepEqual(loopDevicesUnder(directory), [], "no loop device left");
  }

  describe("session storage attached by many sessions at once", () => {
    let berth: TestBerth | undefined;
    let runtime: { arn: string; id: string } | undefined;
    /**
     * A client that sends every request at once (the SDK's default keeps 50 sockets), each on a
     * connection of its own: a kept-alive one idle through a long round may be closed by the
     * server just as the client reuses it.
     */
    let data: BedrockAgentCoreClient | undefined;
    const harness = () => {
      if (berth === undefined || runtime === undefined || data === undefined)
        throw new Error("set up in before()");
      return { berth, runtime, data };
    };

    before(async () => {
      // A uid range of its own above the shared test slots: this server runs more sessions than
      // the 64 those slots hold.
      const uidBase = 7_000_000 + (process.pid % 10_000) * concurrentSessions;
      berth = await startTestBerth([
        "--sandbox-outbound",
        "none",
        "--max-sessions",
        String(concurrentSessions),
        "--bubblewrap-uid-base",
        String(uidBase),
        "--session-storage-bytes",
        String(16 * 2 ** 20),
      ]);
      installAgent(berth.dataDir, agentSources.probe, "probe");
      runtime = await createRuntime(berth, "probe", workspace);
      data = new BedrockAgentCoreClient({
        endpoint: berth.berth.url,
        region: berth.settings.region,
        credentials: berth.berth.credentials,
        maxAttempts: 1,
        requestHandler: { httpAgent: { maxSockets: concurrentSessions, keepAlive: false } },
      });
    });

    after(async () => {
      data?.destroy();
      if (berth === undefined) return;
      await berth.close();
      try {
        assertReleased(berth.dataDir);
      } finally {
        removeDir(berth.dataDir);
      }
    });

    it(`starts ${concurrentSessions} sessions with session storage at once, and resumes them at once`, async () => {
      const sessions = Array.from({ length: concurrentSessions }, () => newSessionId("many"));
      // The first start makes each volume (mkfs spreads the attaches out); the second finds them
      // all made, so every attach comes at once.
      const written = await allSessions(
        sessions,
        (session) => `echo ${session} > /mnt/workspace/owner`,
      );
      written.forEach((result) => {
        assert.equal(result.exitCode, 0, result.stderr);
      });
      await stopAll(sessions);
      const resumed = await allSessions(sessions, () => "cat /mnt/workspace/owner");
      resumed.forEach((result, index) => {
        assert.equal(result.stdout, `${sessions[index]}\n`, "each session has its own volume back");
      });
      await stopAll(sessions);
    });

    it("answers a server fault that keeps the data when Berth cannot attach a volume", async () => {
      const { berth, runtime } = harness();
      const session = newSessionId("held");
      const first = await runCommand(
        berth.data,
        runtime.arn,
        session,
        "echo kept > /mnt/workspace/a",
      );
      assert.equal(first.exitCode, 0, first.stderr);
      await berth.data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
      );
      // A loop device that still holds the image, as one the kernel has not let go of yet would.
      const image = join(berth.dataDir, "storage", "images", `${await volumeOf(session)}.img`);
      const device = execFileSync("losetup", ["--find", "--show", image], {
        encoding: "utf8",
      }).trim();
      try {
        await assert.rejects(
          runCommand(berth.data, runtime.arn, session, "cat /mnt/workspace/a"),
          (error: Error) => {
            assert.equal(error.name, "InternalServerException");
            assert.match(error.message, /storage at \/mnt\/workspace/);
            assert.match(error.message, /still attached/);
            assert.doesNotMatch(error.message, /delete/i, "no advice to delete intact data");
            return true;
          },
        );
      } finally {
        execFileSync("losetup", ["--detach", device]);
      }
      const again = await runCommand(berth.data, runtime.arn, session, "cat /mnt/workspace/a");
      assert.equal(again.stdout, "kept\n", "the data was never touched");
    });

    /** Runs one command in every session at once; every one must succeed. */
    async function allSessions(
      sessions: string[],
      command: (session: string) => string,
    ): Promise<FinishedCommand[]> {
      const { data, runtime } = harness();
      const results = await Promise.allSettled(
        sessions.map((session) => runCommand(data, runtime.arn, session, command(session))),
      );
      const failures = results.flatMap((result) =>
        result.status === "rejected" ? [String(result.reason)] : [],
      );
      assert.deepEqual(failures, [], `${failures.length} of ${sessions.length} sessions failed`);
      return results.flatMap((result) => (result.status === "fulfilled" ? [result.value] : []));
    }

    async function stopAll(sessions: string[]): Promise<void> {
      const { data, runtime } = harness();
      await Promise.all(
        sessions.map((session) =>
          data.send(
            new StopRuntimeSessionCommand({
              agentRuntimeArn: runtime.arn,
              runtimeSessionId: session,
            }),
          ),
        ),
      );
    }

    async function volumeOf(session: string): Promise<string> {
      const { berth, runtime } = harness();
      const answer = await sendRaw(berth.berth.url, {
        method: "GET",
        path: `/berth/v1/runtimes/${runtime.id}/storage`,
        credentials: berth.berth.credentials,
      });
      const listed = JSON.parse(answer.body) as { storage: Record<string, unknown>[] };
      const entry = listed.storage.find((candidate) => candidate["sessionId"] === session);
      return String(entry?.["volumeId"]);
    }
  });

  describe("loop volumes attached at once", () => {
    it(`attaches ${concurrentSessions} volumes concurrently through the root helper`, async () => {
      const root = makeDataDir();
      const helper = await RootMounts.start(join(root, "mounts.sock"), root);
      const volumes = new LoopVolumes(root, 1000, {
        mountImage: (image, target) => helper.mountImage(image, target),
        unmount: (target) => helper.unmount(target),
      });
      const ids = Array.from({ length: concurrentSessions }, (_, index) => `volume-${index}`);
      try {
        await Promise.all(ids.map((id) => volumes.create(id, 16 * 2 ** 20)));
        // A few rounds: each attach used to lose the race for a free loop device only sometimes.
        for (let round = 1; round <= attachRounds; round += 1) {
          const attached = await Promise.allSettled(
            ids.map((id) => volumes.attach(id, ["host-directory"])),
          );
          const failures = attached.flatMap((result) =>
            result.status === "rejected" ? [String(result.reason)] : [],
          );
          assert.deepEqual(failures, [], `round ${round}: ${failures.length} attaches failed`);
          assert.equal(loopDevicesUnder(root).length, ids.length, "a loop device each");
          await Promise.all(ids.map((id) => volumes.detach(id)));
          assertReleased(root);
        }
      } finally {
        await volumes.recover();
        await helper.close();
        removeDir(root);
      }
    });
  });
});
