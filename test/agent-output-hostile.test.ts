import assert from "node:assert/strict";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, it } from "node:test";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { installAgent, waitFor } from "./support/agents.ts";
import { credentialsIn } from "./support/berth-process.ts";
import { hostSuite, quickLifecycleArgs } from "./support/berth.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";
import { startWatchedBerth, type WatchedBerth } from "./support/watched-berth.ts";

describe("agent output hostile (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // A hostile agent (test/agents/hostile-output) attacks what Berth reads from a running agent:
  // its stdout and its /ping answers. Berth runs as its own process, so its memory, its log and
  // the sessions' logs are measured from outside, as an operator would see them.

  const mebibyte = 2 ** 20;
  const maxLineBytes = 1024;
  const logBytesPerSecond = 64 * 1024;
  const logBurstBytes = 128 * 1024;
  /** Large enough that no session's log drops its older half while a test reads it. */
  const sessionLogBytes = 64 * mebibyte;
  /** Berth's own records beside the agent's output while a test runs (session start, requests). */
  const otherRecordsBytes = 32 * 1024;
  /**
   * How much Berth's memory may grow while an agent attacks it. Reading hundreds of MiB through a
   * pipe leaves some tens of MiB of buffers before the collector runs; the attacks send far more
   * (600 MiB in one line, or a /ping body without end), and before the fixes Berth kept all of it.
   */
  const memoryGrowthBound = 192 * mebibyte;

  let berth: WatchedBerth | undefined;
  const server = (): WatchedBerth => {
    if (berth === undefined) throw new Error("the server starts in before()");
    return berth;
  };

  before(async () => {
    berth = await startWatchedBerth(
      [
        ...quickLifecycleArgs,
        "--max-agent-output-line-bytes",
        String(maxLineBytes),
        "--agent-log-bytes-per-second",
        String(logBytesPerSecond),
        "--agent-log-burst-bytes",
        String(logBurstBytes),
        "--agent-log-bytes",
        String(sessionLogBytes),
      ],
      (dataDir) => {
        installAgent(
          dataDir,
          fileURLToPath(new URL("agents/hostile-output", import.meta.url)),
          "hostile-output",
        );
      },
    );
  });

  after(async () => {
    await berth?.close();
  });

  async function hostileRuntime(idleSeconds = 900, maxLifetimeSeconds = 28_800) {
    return createRuntime(server(), "hostile-output", {
      lifecycleConfiguration: {
        idleRuntimeSessionTimeout: idleSeconds,
        maxLifetime: maxLifetimeSeconds,
      },
    });
  }

  async function invoke(arn: string, sessionId: string, payload: unknown): Promise<unknown> {
    const response = await server().data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: sessionId,
        payload: Buffer.from(JSON.stringify(payload)),
        contentType: "application/json",
      }),
    );
    return JSON.parse((await response.response?.transformToString()) ?? "null") as unknown;
  }

  const recordOf = (sessionId: string, check: (record: Record<string, unknown>) => boolean) =>
    server().records.find((record) => record["sessionId"] === sessionId && check(record));

  /** What the session's agent printed, as its log (GET .../logs) has it. */
  async function sessionLines(runtimeId: string, sessionId: string): Promise<string[]> {
    const answer = await sendRaw(server().url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtimeId}/logs?sessionId=${sessionId}&limit=10000`,
      credentials: credentialsIn(server().dataDir),
    });
    assert.equal(answer.status, 200, answer.body);
    return (JSON.parse(answer.body) as { lines: { line: string }[] }).lines.map(({ line }) => line);
  }

  /** What a runtime's sessions' logs take on disk. */
  function runtimeLogBytes(runtimeId: string): number {
    const folder = join(server().dataDir, "agent-logs", runtimeId);
    return readdirSync(folder).reduce((sum, name) => sum + statSync(join(folder, name)).size, 0);
  }

  const endedBecause = (sessionId: string, reason: string) =>
    recordOf(
      sessionId,
      (record) => record["msg"] === "session ended" && record["reason"] === reason,
    );

  /** Fails at once if Berth's memory grows past the bound while waiting for `check`. */
  function withinMemory<T>(baselineBytes: number, check: () => T): () => T {
    return () => {
      const growth = server().residentBytes() - baselineBytes;
      assert.ok(growth < memoryGrowthBound, `Berth's memory grew by ${growth} bytes`);
      return check();
    };
  }

  describe("an agent's output", () => {
    it("one line of 600 MiB without a newline is cut, and Berth neither crashes nor grows", async () => {
      const runtime = await hostileRuntime();
      const flooding = newSessionId("long-line");
      const bystander = newSessionId("bystander");
      await invoke(runtime.arn, flooding, { action: "hello" });
      await invoke(runtime.arn, bystander, { action: "hello" });
      const baseline = server().residentBytes();

      const flood = (await invoke(runtime.arn, flooding, {
        action: "flood-one-line",
        bytes: 600 * mebibyte,
      })) as { written: number };
      assert.equal(flood.written, 600 * mebibyte);
      const lines = await waitFor("the line after the long one in the session's log", async () => {
        const found = await sessionLines(runtime.id, flooding);
        return found.includes("hostile: one long line written") ? found : undefined;
      });

      assert.ok(server().running(), `Berth crashed: ${server().stderrText()}`);
      assert.deepEqual(await invoke(runtime.arn, bystander, { action: "hello" }), {
        hello: "still here",
      });
      const cut = lines.find((line) => line.startsWith("xxx"));
      assert.equal(
        cut,
        `${"x".repeat(maxLineBytes)}… [cut: the line was longer than ${maxLineBytes} bytes]`,
      );
      const growth = server().peakResidentBytes() - baseline;
      assert.ok(growth < memoryGrowthBound, `Berth's memory grew by ${growth} bytes`);
    });

    it("a flood of lines costs the session's log no more than its budget, Berth's log nothing, and says what it dropped", async () => {
      const runtime = await hostileRuntime();
      const session = newSessionId("flood");
      await invoke(runtime.arn, session, { action: "hello" });
      const startedAt = performance.now();
      const logBytesBefore = server().logBytes();
      const sessionLogBytesBefore = runtimeLogBytes(runtime.id);
      const written = () => runtimeLogBytes(runtime.id) - sessionLogBytesBefore;
      // What the budget allows since the flood began (an upper bound on the time, so generous),
      // and Berth's notes beside it.
      const allowedBytes = () =>
        (logBytesPerSecond * (performance.now() - startedAt)) / 1000 + logBurstBytes + 4096;
      const droppedRecord = () =>
        recordOf(session, (record) => record["msg"] === "agent output dropped");

      const flood = (await invoke(runtime.arn, session, {
        action: "flood-lines",
        durationMs: 3000,
      })) as { lines: number; bytes: number };
      await waitFor("the record of dropped lines, or the session's log past its budget", () =>
        written() > allowedBytes() ? "over budget" : droppedRecord(),
      );

      const writtenBytes = written();
      const allowed = allowedBytes();
      assert.ok(
        writtenBytes <= allowed,
        `the session's log took ${writtenBytes} bytes (allowed ${Math.round(allowed)}); the agent wrote ${flood.bytes}`,
      );
      assert.ok(flood.bytes > 10 * allowed, "the agent wrote far more than the budget");
      assert.ok(Number(droppedRecord()?.["droppedLines"]) > 0);
      const berthLogged = server().logBytes() - logBytesBefore;
      assert.ok(
        berthLogged <= otherRecordsBytes,
        `Berth's own log took ${berthLogged} bytes: none of the agent's lines are in it`,
      );
      const lines = await sessionLines(runtime.id, session);
      assert.ok(lines.some((line) => /^\d+ lines \(\d+ bytes\) dropped: /.test(line)));
    });
  });

  describe("an agent's /ping", () => {
    it("an endless /ping answer neither fills Berth's memory nor keeps an idle session alive", async () => {
      const runtime = await hostileRuntime(1, 60);
      const session = newSessionId("endless-ping");
      await invoke(runtime.arn, session, { action: "hello" });
      const baseline = server().residentBytes();

      // From now on the agent answers /ping with {"status":"HealthyBusy", then padding forever.
      await invoke(runtime.arn, session, { action: "ping-endless" });
      await waitFor(
        "the session to end at its idle timeout",
        withinMemory(baseline, () => endedBecause(session, "idle timeout")),
      );
      const growth = server().peakResidentBytes() - baseline;
      assert.ok(growth < memoryGrowthBound, `Berth's memory grew by ${growth} bytes`);
    });

    it("a /ping that trickles holds up no other session's idle timeout or max lifetime", async () => {
      // Sessions are swept in the order they started: the trickling one goes first.
      const trickling = newSessionId("trickle");
      const idle = newSessionId("idle");
      const aging = newSessionId("aging");
      const quickIdle = await hostileRuntime(1, 60);
      const shortLived = await hostileRuntime(2, 2);
      await invoke(quickIdle.arn, trickling, { action: "ping-trickle" });
      await invoke(quickIdle.arn, idle, { action: "hello" });
      await invoke(shortLived.arn, aging, { action: "ping-trickle" });

      await waitFor("the idle session to end", () => endedBecause(idle, "idle timeout"));
      await waitFor("the aging session to end", () => endedBecause(aging, "max lifetime reached"));
      await waitFor("the trickling session to end", () => endedBecause(trickling, "idle timeout"));
      // Its slow answer was asked for once at a time: sweeps do not pile probes onto it.
      const printed = await sessionLines(quickIdle.id, trickling);
      assert.ok(printed.includes("hostile: 1 pings open at once"), "its log is read");
      assert.equal(printed.includes("hostile: 2 pings open at once"), false);
    });
  });
});
