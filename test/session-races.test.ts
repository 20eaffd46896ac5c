import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommandCommand,
  StopRuntimeSessionCommand,
  type InvokeAgentRuntimeCommandStreamOutput,
} from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { hostSuite, quickLifecycleArgs, useTestBerth } from "./support/berth.ts";
import { sandboxGroups } from "./support/cgroups.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { createRuntime, newProbeVersion, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const harness = useTestBerth(
  [
    ...quickLifecycleArgs,
    "--sandbox-outbound",
    "none",
    "--session-storage-bytes",
    String(64 * 2 ** 20),
    // Every session start prepares its sandbox then and there (no shell taken from a pool), so
    // each start goes through Berth's helper and the cgroup count is sessions alone.
    "--bubblewrap-prestart",
    "0",
  ],
  (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
  },
);

/**
 * Berth's root mount helper (native/berth-mount) of this test's server, which every sandbox start
 * and teardown asks: Berth (this process) is its parent. Each request has a process forked from
 * it, with the same command line.
 */
function mountHelperPid(): number {
  const socket = join(harness().dataDir, "mount-helper.sock");
  const pids = readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        const parent = /^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
        return (
          Number(parent) === process.pid &&
          readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(`berth-mount\0serve\0${socket}`)
        );
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
  assert.equal(pids.length, 1, "one helper per server");
  return pids[0] ?? 0;
}

/** Sandbox run folders (one per sandbox being prepared or running) in the server's run root. */
function runFolders(): string[] {
  const root = join(harness().dataDir, "sessions");
  return readdirSync(root).filter((name) => name.startsWith("sb"));
}

/**
 * A command that prints an id of the sandbox it runs in: the first command in a sandbox makes
 * it (a symlink is created whole or not at all), every later one reads it.
 */
const sandboxIdCommand =
  'ln -s "$(cat /proc/sys/kernel/random/uuid)" /tmp/sandbox-id 2>/dev/null; readlink /tmp/sandbox-id';

describe("a version change with concurrent requests", () => {
  it("starts exactly one new session that every request uses, its storage attached once", async () => {
    const runtime = await createRuntime(harness(), "probe", workspace);
    const session = newSessionId();
    await invokeProbe(harness().data, runtime.arn, session, { action: "remember", value: "v1" });
    const groupsBefore = sandboxGroups(harness().settings.bubblewrapCgroupParent).length;
    await newProbeVersion(harness(), runtime.id);

    const invokes = [1, 2, 3, 4, 5, 6].map((value) =>
      invokeProbe(harness().data, runtime.arn, session, { action: "remember", value }),
    );
    const commands = [1, 2, 3, 4, 5, 6].map(() =>
      runCommand(harness().data, runtime.arn, session, sandboxIdCommand),
    );
    const settled = await Promise.allSettled([...invokes, ...commands]);
    const failures = settled.flatMap((result) =>
      result.status === "rejected" ? [String(result.reason)] : [],
    );
    assert.deepEqual(failures, [], "every request was answered");
    const counts = (await Promise.all(invokes)).map((reply) => reply["count"]);
    assert.deepEqual(
      [...counts].sort(),
      [1, 2, 3, 4, 5, 6],
      "every invocation reached the same agent, which started afresh",
    );
    const sandboxIds = new Set((await Promise.all(commands)).map((done) => done.stdout));
    assert.equal(
      sandboxIds.size,
      1,
      `every command ran in one sandbox (${[...sandboxIds].join(", ")})`,
    );

    const listed = await sendRaw(harness().berth.url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtime.id}/sessions`,
      credentials: harness().berth.credentials,
    });
    const sessions = (JSON.parse(listed.body) as { sessions: { version: number }[] }).sessions;
    assert.deepEqual(
      sessions.map((info) => info.version),
      [2],
      "one session, of the new version",
    );
    assert.equal(
      sandboxGroups(harness().settings.bubblewrapCgroupParent).length,
      groupsBefore,
      "the old sandbox was replaced by exactly one new one: none runs unlisted",
    );
    const survivor = await runCommand(harness().data, runtime.arn, session, sandboxIdCommand);
    assert.deepEqual(
      [survivor.stdout],
      [...sandboxIds],
      "the listed session is the one that answered",
    );
    const memory = (await invokeProbe(harness().data, runtime.arn, session, { action: "recall" }))[
      "memory"
    ] as number[];
    assert.deepEqual([...memory].sort(), [1, 2, 3, 4, 5, 6]);
  });
});

describe("Berth's own failures while starting a session", hostSuite, () => {
  it("answers InternalServerException and logs an error when its helper dies mid-start", async () => {
    const runtime = await createRuntime(harness(), "probe");
    const session = newSessionId();
    const helper = mountHelperPid();
    const foldersBefore = new Set(runFolders());
    // Stopped, the helper takes no connection: the start waits on its first request to it.
    process.kill(helper, "SIGSTOP");
    let outcome: Promise<unknown>;
    try {
      outcome = invokeProbe(harness().data, runtime.arn, session, { action: "recall" }).then(
        () => assert.fail("the invocation should have failed"),
        (error: unknown) => error,
      );
      // The sandbox's run folder, then at once its first request to the helper.
      await waitFor("the start to reach the helper", () =>
        runFolders().some(
          (name) =>
            !foldersBefore.has(name) &&
            existsSync(join(harness().dataDir, "sessions", name, "mnt")),
        ),
      );
    } finally {
      process.kill(helper, "SIGKILL");
    }
    const error = (await outcome) as Error & { $metadata?: { httpStatusCode?: number } };
    assert.equal(error.name, "InternalServerException", error.message);
    assert.equal(error.$metadata?.httpStatusCode, 500);
    assert.match(error.message, /Berth could not start the session's sandbox/);
    const logged = harness().logLines.find(
      (line) => line["msg"] === "session failed to start" && line["sessionId"] === session,
    );
    assert.ok(logged, "the failure is in the server log");
    assert.equal(logged["level"], "error");
    assert.match(String(logged["error"]), /berth-mount|ECONNRESET/);
    // Berth's helper is started again: the same session now starts.
    assert.deepEqual(
      await invokeProbe(harness().data, runtime.arn, session, { action: "recall" }),
      { memory: [] },
    );
  });
});

describe("a command whose session is stopped", hostSuite, () => {
  it("ends with runtimeClientError naming StopRuntimeSession, however slowly the sandbox goes", async () => {
    const runtime = await createRuntime(harness(), "probe");
    const session = newSessionId();
    const response = await harness().data.send(
      new InvokeAgentRuntimeCommandCommand({
        agentRuntimeArn: runtime.arn,
        runtimeSessionId: session,
        body: { command: "echo running; sleep 600" },
      }),
    );
    assert.ok(response.stream !== undefined);
    const events = response.stream[Symbol.asyncIterator]() as AsyncIterator<
      InvokeAgentRuntimeCommandStreamOutput,
      undefined
    >;
    await events.next(); // contentStart
    assert.equal((await events.next()).value?.chunk?.contentDelta?.stdout, "running\n");
    // A busy host: the sandbox's teardown (its unmounts go through the mount helper) takes a while.
    const helper = mountHelperPid();
    process.kill(helper, "SIGSTOP");
    let stopped: Promise<unknown> | undefined;
    let ending: unknown;
    try {
      stopped = harness().data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
      );
      const rest: InvokeAgentRuntimeCommandStreamOutput[] = [];
      try {
        for (let next = await events.next(); next.done !== true; next = await events.next())
          rest.push(next.value);
        ending = rest.at(-1);
      } catch (error) {
        ending = error;
      }
    } finally {
      process.kill(helper, "SIGCONT");
    }
    await stopped;
    assert.ok(ending instanceof Error, `the stream ended with ${JSON.stringify(ending)}`);
    assert.equal(ending.name, "RuntimeClientError");
    assert.match(ending.message, /session ended.*stopped by StopRuntimeSession/);
  });
});
