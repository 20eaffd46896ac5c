import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

/**
 * One session at a time, and no prepared sandboxes: bubblewrap gives sandboxes maxSessions + 16
 * host uids, so 17 slots in all.
 */
const sandboxSlots = 17;

const harness = useTestBerth(
  ["--max-sessions", "1", "--bubblewrap-prestart", "0", "--sandbox-outbound", "none"],
  (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
  },
);

/**
 * This server's root helpers (native/berth-exec, native/berth-mount): children of this process
 * serving a socket in its data directory.
 */
function rootHelperPids(): number[] {
  const { dataDir } = harness();
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        const parent = /^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
        const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
        return (
          Number(parent) === process.pid &&
          /\/berth-(exec|mount)$/.test(args[0] ?? "") &&
          args.some((arg) => arg.startsWith(`${dataDir}/`))
        );
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

/** Sandbox run folders: one per sandbox being prepared, running or being torn down. */
function runFolders(): string[] {
  return readdirSync(join(harness().dataDir, "sessions")).filter((name) => name.startsWith("sb"));
}

describe("sandbox slots", hostSuite, () => {
  it("answers ThrottlingException when every slot is held, logged as Berth's own warning, and starts again once they are free", async () => {
    const { data, logLines } = harness();
    const runtime = await createRuntime(harness(), "probe");
    // A host too busy to answer Berth's helpers: each sandbox waits in its set-up, its uid held.
    // Stopping its session frees the session's place at once, not the sandbox's slot.
    const helpers = rootHelperPids();
    assert.ok(helpers.length > 0, "the server's root helpers are running");
    for (const pid of helpers) process.kill(pid, "SIGSTOP");
    const heldStarts: Promise<unknown>[] = [];
    let refused: unknown;
    try {
      for (let slot = 0; slot < sandboxSlots; slot += 1) {
        const session = newSessionId("held");
        heldStarts.push(
          invokeProbe(data, runtime.arn, session, { action: "whoami" }).catch(
            (error: unknown) => error,
          ),
        );
        await waitFor(`sandbox ${slot + 1} to take its slot`, () => runFolders().length > slot);
        await data.send(
          new StopRuntimeSessionCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId: session,
          }),
        );
      }
      refused = await invokeProbe(data, runtime.arn, newSessionId("refused"), {
        action: "whoami",
      }).catch((error: unknown) => error);
    } finally {
      for (const pid of helpers) process.kill(pid, "SIGCONT");
    }

    assert.ok(refused instanceof Error, "the start with no slot left failed");
    assert.equal(refused.name, "ThrottlingException", refused.message);
    assert.equal(
      (refused as Error & { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode,
      429,
    );
    assert.match(refused.message, /no free sandbox slot/);
    assert.match(refused.message, /every sandbox uid is taken \(17 uids/);
    assert.match(refused.message, /retry in a moment.*raise maxSessions/);
    const logged = logLines.filter((line) => line["msg"] === "no sandbox slot free");
    assert.equal(logged.length, 1);
    assert.equal(logged[0]?.["level"], "warn");
    assert.equal(
      logLines.filter((line) => line["msg"] === "session failed to start").length,
      0,
      "not logged as a server fault",
    );

    // Once the helpers answer, the held sandboxes finish and go; a retry then gets a slot.
    for (const outcome of await Promise.all(heldStarts)) {
      assert.ok(outcome instanceof Error, "a stopped session's start does not succeed");
      assert.match(outcome.message, /ended before its agent was ready: stopped by StopRuntime/);
    }
    await waitFor("the held sandboxes to go", () => runFolders().length === 0);
    const answer = await invokeProbe(data, runtime.arn, newSessionId("retried"), {
      action: "whoami",
    });
    assert.equal(typeof answer["pid"], "number");
  });
});
