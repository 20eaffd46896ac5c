import assert from "node:assert/strict";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { Connection } from "../src/cli/connection.ts";
import { installAgent, waitFor } from "./support/agents.ts";
import {
  onTestParts,
  quickLifecycleArgs,
  removeDir,
  startTestBerth,
  type TestBerth,
} from "./support/berth.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const printerAgent = fileURLToPath(new URL("agents/printer", import.meta.url));

/** A line as GET /berth/v1/runtimes/{id}/logs answers it. */
interface LogLine {
  time: string;
  sessionId: string;
  stream: string;
  line: string;
  event?: string;
}

/** A Berth whose sessions print through test/agents/printer, and how the tests talk to it. */
function printerBerth(berth: TestBerth) {
  installAgent(berth.dataDir, printerAgent, "printer");
  const connection = new Connection({
    endpoint: berth.berth.url,
    region: berth.settings.region,
    env: {
      AWS_ACCESS_KEY_ID: berth.berth.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: berth.berth.credentials.secretAccessKey,
    },
  });
  const invoke = async (arn: string, sessionId: string, payload: unknown): Promise<unknown> => {
    const response = await berth.data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: sessionId,
        payload: Buffer.from(JSON.stringify(payload)),
        contentType: "application/json",
      }),
    );
    return JSON.parse((await response.response?.transformToString()) ?? "null") as unknown;
  };
  const readLogs = async (runtimeId: string, query: Record<string, string> = {}) => {
    const params = new URLSearchParams(query).toString();
    return (await connection.berthApi(
      "GET",
      `/berth/v1/runtimes/${runtimeId}/logs${params === "" ? "" : `?${params}`}`,
    )) as unknown as { lines: LogLine[]; truncated: boolean };
  };
  const linesOf = async (runtimeId: string, sessionId: string) =>
    (await readLogs(runtimeId, { sessionId })).lines;
  const stop = (arn: string, sessionId: string) =>
    berth.data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: arn, runtimeSessionId: sessionId }),
    );
  return { connection, invoke, readLogs, linesOf, stop };
}

/** Every file under a runtime's folder of logs, with its size. */
function logFilesOf(dataDir: string, runtimeId: string): { name: string; size: number }[] {
  const folder = join(dataDir, "agent-logs", runtimeId);
  return readdirSync(folder).map((name) => ({ name, size: statSync(join(folder, name)).size }));
}

const sessionLogBytes = 256 * 1024;
const budgetBytesPerSecond = 64 * 1024;

describe("agents' own logs", () => {
  let berth: TestBerth;
  let client: ReturnType<typeof printerBerth>;
  let runtime: { id: string; arn: string };

  before(async () => {
    berth = await startTestBerth([
      ...quickLifecycleArgs,
      ...["--agent-log-bytes", String(sessionLogBytes)],
      ...["--agent-log-bytes-per-second", String(budgetBytesPerSecond)],
      ...["--agent-log-burst-bytes", String(budgetBytesPerSecond)],
    ]);
    client = printerBerth(berth);
    runtime = await createRuntime(berth, "printer");
  });
  after(async () => {
    client.connection.close();
    await berth.close();
    removeDir(berth.dataDir);
  });

  it("keeps what an agent prints on stdout and stderr in the session's log, not in Berth's", async () => {
    const session = newSessionId("print");
    await client.invoke(runtime.arn, session, {
      action: "print",
      stdout: ["OUT-LINE-1", "OUT-LINE-2"],
      stderr: ["ERR-LINE-1"],
    });
    const lines = await waitFor("the lines in the session's log", async () => {
      const found = await client.linesOf(runtime.id, session);
      return found.some((line) => line.line === "ERR-LINE-1") ? found : undefined;
    });
    assert.deepEqual(
      lines.map((line) => [line.stream, line.line, line.sessionId]),
      [
        ["berth", "session starting", session],
        ["stdout", "OUT-LINE-1", session],
        ["stdout", "OUT-LINE-2", session],
        ["stderr", "ERR-LINE-1", session],
      ],
    );
    assert.ok(lines.every((line) => !Number.isNaN(Date.parse(line.time))));
    assert.equal(
      berth.logLines.find((record) => JSON.stringify(record).includes("OUT-LINE-1")),
      undefined,
      "Berth's own log has none of the agent's lines",
    );
  });

  it("keeps a crashed agent's last lines, with why its session ended", async () => {
    const session = newSessionId("crash");
    await client.invoke(runtime.arn, session, { action: "crash", code: 3, lastWords: "LAST" });
    const lines = await waitFor("the session's end in its log", async () => {
      const found = await client.linesOf(runtime.id, session);
      return found.at(-1)?.event === "ended" ? found : undefined;
    });
    assert.deepEqual(
      lines.slice(-3).map((line) => `${line.stream}: ${line.line}`),
      [
        "stdout: LAST (stdout)",
        "stderr: LAST (stderr)",
        "berth: session ended: the agent exited (exit code 3)",
      ],
    );
  });

  it("reads a session's lines after it ended, and every session's of the runtime", async () => {
    const first = newSessionId("first");
    const second = newSessionId("second");
    await client.invoke(runtime.arn, first, { action: "print", stdout: ["FROM-FIRST"] });
    await client.invoke(runtime.arn, second, { action: "print", stdout: ["FROM-SECOND"] });
    await client.stop(runtime.arn, first);
    const lines = await waitFor("the first session's end", async () => {
      const found = await client.linesOf(runtime.id, first);
      return found.at(-1)?.event === "ended" ? found : undefined;
    });
    assert.deepEqual(
      lines.map((line) => line.line),
      ["session starting", "FROM-FIRST", "session ended: stopped by StopRuntimeSession"],
    );
    const everyone = (await client.readLogs(runtime.id)).lines;
    const printed = everyone.filter((line) => line.line.startsWith("FROM-"));
    assert.deepEqual(
      printed.map((line) => [line.sessionId, line.line]),
      [
        [first, "FROM-FIRST"],
        [second, "FROM-SECOND"],
      ],
    );
  });

  it("answers the latest lines within limit and since", async () => {
    const session = newSessionId("limit");
    const stdout = Array.from({ length: 20 }, (_, index) => `NUMBERED-${index + 1}`);
    await client.invoke(runtime.arn, session, { action: "print", stdout });
    await waitFor("the last numbered line", async () =>
      (await client.linesOf(runtime.id, session)).some((line) => line.line === "NUMBERED-20"),
    );
    const latest = await client.readLogs(runtime.id, { sessionId: session, limit: "3" });
    assert.deepEqual(
      latest.lines.map((line) => line.line),
      ["NUMBERED-18", "NUMBERED-19", "NUMBERED-20"],
    );
    assert.equal(latest.truncated, true);
    const future = new Date(Date.now() + 60_000).toISOString();
    assert.deepEqual(
      (await client.readLogs(runtime.id, { sessionId: session, since: future })).lines,
      [],
    );
  });

  it("streams a session's lines as the agent prints them, until the session ends", async () => {
    const session = newSessionId("follow");
    await client.invoke(runtime.arn, session, { action: "print", stdout: ["BEFORE-FOLLOW"] });
    const response = await client.connection.berthRequest(
      "GET",
      `/berth/v1/runtimes/${runtime.id}/logs?sessionId=${session}&follow=true`,
    );
    assert.equal(response.statusCode, 200);
    assert.equal(response.headers["content-type"], "application/x-ndjson");
    const records = createInterface({ input: response })[Symbol.asyncIterator]();
    const next = async (): Promise<Record<string, unknown>> => {
      const read = await records.next();
      assert.equal(read.done, false, "the follow ended early");
      return JSON.parse(read.value) as Record<string, unknown>;
    };
    assert.equal((await next())["line"], "session starting");
    assert.equal((await next())["line"], "BEFORE-FOLLOW");
    // Each line printed from here arrives while the follow is open.
    await client.invoke(runtime.arn, session, { action: "print", stderr: ["DURING-FOLLOW"] });
    assert.deepEqual(
      [await next()].map((record) => [record["stream"], record["line"]]),
      [["stderr", "DURING-FOLLOW"]],
    );
    await client.stop(runtime.arn, session);
    assert.equal((await next())["line"], "session ended: stopped by StopRuntimeSession");
    assert.equal((await next())["end"], "session-ended");
    assert.equal((await records.next()).done, true);
  });

  it("keeps a flooding agent's log within its bound, says what it dropped, and serves on meanwhile", async () => {
    const flooding = await createRuntime(berth, "printer");
    const session = newSessionId("flood");
    await client.invoke(flooding.arn, session, { action: "print", stdout: ["FLOOD-START"] });
    const flood = client.invoke(flooding.arn, session, { action: "flood", durationMs: 3000 });
    // Berth answers other requests while the agent floods it.
    const bystander = newSessionId("bystander");
    assert.deepEqual(
      await client.invoke(runtime.arn, bystander, { action: "print", stdout: ["STILL-HERE"] }),
      { printed: 1 },
    );
    const listed = await client.connection.berthApi(
      "GET",
      `/berth/v1/runtimes/${flooding.id}/sessions`,
    );
    assert.equal((listed["sessions"] as unknown[]).length, 1);
    const written = (await flood) as { lines: number; bytes: number };
    await client.stop(flooding.arn, session);
    const lines = await waitFor("the flooding session's end", async () => {
      const found = await client.linesOf(flooding.id, session);
      return found.at(-1)?.event === "ended" ? found : undefined;
    });
    const dropNotes = lines.filter((line) => line.event === "dropped");
    assert.ok(dropNotes.length > 0, "the session's log says lines were dropped");
    assert.match(
      dropNotes[0]?.line ?? "",
      /^\d+ lines \(\d+ bytes\) dropped: the agent wrote more/,
    );
    assert.ok(
      berth.logLines.some(
        (record) =>
          record["msg"] === "agent output dropped" &&
          record["sessionId"] === session &&
          Number(record["droppedLines"]) > 0,
      ),
      "Berth's log reports the drops",
    );
    const onDisk = logFilesOf(berth.dataDir, flooding.id).reduce((sum, file) => sum + file.size, 0);
    assert.ok(onDisk <= sessionLogBytes, `the session's log takes ${onDisk} bytes`);
    assert.ok(written.bytes > 10 * sessionLogBytes, "the agent wrote far more than the bound");
  });

  it("refuses unsigned requests, and says which parameter is wrong", async () => {
    const path = `/berth/v1/runtimes/${runtime.id}/logs`;
    const unsigned = await sendRaw(berth.berth.url, { method: "GET", path, unsigned: true });
    assert.equal(unsigned.status, 403);
    assert.doesNotMatch(unsigned.body, /lines/);
    const credentials = berth.berth.credentials;
    for (const [query, field] of [
      ["limit=0", "limit"],
      ["limit=10001", "limit"],
      ["limit=ten", "limit"],
      ["since=yesterday", "since"],
      ["follow=yes", "follow"],
    ] as const) {
      const answer = await sendRaw(berth.berth.url, {
        method: "GET",
        path: `${path}?${query}`,
        credentials,
      });
      assert.equal(answer.status, 400, query);
      assert.equal(answer.headers["x-amzn-errortype"], "ValidationException");
      assert.match(answer.body, new RegExp(`${field}: must be`));
    }
    const atMost = await sendRaw(berth.berth.url, {
      method: "GET",
      path: `${path}?limit=10000`,
      credentials,
    });
    assert.equal(atMost.status, 200);
    const unknown = await sendRaw(berth.berth.url, {
      method: "GET",
      path: "/berth/v1/runtimes/nobody-0123456789/logs",
      credentials,
    });
    assert.equal(unknown.status, 404);
  });
});

describe("agents' logs over time", () => {
  it(
    "are read again after a restart of Berth",
    { skip: onTestParts ? "the test-only parts keep no runtimes across a restart" : false },
    async () => {
      let berth = await startTestBerth();
      const client = printerBerth(berth);
      try {
        const runtime = await createRuntime(berth, "printer");
        const session = newSessionId("restart");
        await client.invoke(runtime.arn, session, { action: "print", stdout: ["BEFORE-RESTART"] });
        await berth.close();
        berth = await startTestBerth([], berth.dataDir);
        const again = printerBerth(berth);
        const lines = await again.linesOf(runtime.id, session);
        again.connection.close();
        assert.deepEqual(
          lines.map((line) => line.line),
          ["session starting", "BEFORE-RESTART", "session ended: server shutting down"],
        );
      } finally {
        client.connection.close();
        await berth.close();
        removeDir(berth.dataDir);
      }
    },
  );

  it("are deleted past their retention", async () => {
    const berth = await startTestBerth([
      ...["--agent-log-retention-seconds", "1", "--agent-log-sweep-interval-ms", "50"],
    ]);
    const client = printerBerth(berth);
    try {
      const runtime = await createRuntime(berth, "printer");
      const session = newSessionId("retention");
      await client.invoke(runtime.arn, session, { action: "print", stdout: ["SHORT-LIVED"] });
      await client.stop(runtime.arn, session);
      await waitFor("the log to be swept away", () =>
        logFilesOf(berth.dataDir, runtime.id).length === 0 ? true : undefined,
      );
      assert.deepEqual(await client.linesOf(runtime.id, session), []);
    } finally {
      client.connection.close();
      await berth.close();
      removeDir(berth.dataDir);
    }
  });
});
