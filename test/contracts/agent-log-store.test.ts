import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { FileAgentLogStore } from "../../src/adapters/agent-logs/file-agent-log-store.ts";
import { MemoryAgentLogStore } from "../../src/adapters/memory/agent-log-store.ts";
import type {
  AgentLogEntry,
  AgentLogQuery,
  AgentLogStore,
  SessionLogRef,
} from "../../src/core/agent-logs.ts";
import { removeDir } from "../support/berth.ts";

/**
 * One suite, written against the AgentLogStore interface, run against every store of sessions'
 * logs: what `berth logs` and following rely on (reads that see exactly what was appended
 * before them, the latest lines first to be kept, the bounds), whichever store keeps them.
 */

interface StoreUnderTest {
  name: string;
  open(settings: { sessionBytes: number; totalBytes: number }): Promise<AgentLogStore>;
}

const folders: string[] = [];
const quietLog = { info: () => undefined, warn: () => undefined, error: () => undefined };

const stores: StoreUnderTest[] = [
  { name: "memory", open: (settings) => Promise.resolve(new MemoryAgentLogStore(settings)) },
  {
    name: "files",
    open: (settings) => {
      const folder = mkdtempSync(join(tmpdir(), "berth-agent-logs-"));
      folders.push(folder);
      return FileAgentLogStore.open(join(folder, "agent-logs"), settings, quietLog);
    },
  },
];

after(() => {
  for (const folder of folders) removeDir(folder);
});

const roomy = { sessionBytes: 1 << 20, totalBytes: 1 << 30 };
const session = (sessionId: string): SessionLogRef => ({ runtimeId: "runtime-1", sessionId });
const query = (extra: Partial<AgentLogQuery> = {}): AgentLogQuery => ({
  runtimeId: "runtime-1",
  limit: 1000,
  maxBytes: 1 << 30,
  ...extra,
});
const line = (timeMs: number, text: string, stream: "stdout" | "stderr" = "stdout") =>
  ({ timeMs, stream, line: text }) satisfies AgentLogEntry;

for (const store of stores) {
  describe(`agent log store contract: ${store.name}`, () => {
    it("reads back every line appended before the read, in order, with its session", async () => {
      const logs = await store.open(roomy);
      logs.append(session("a"), line(1, "one"));
      logs.append(session("a"), line(2, "two", "stderr"));
      logs.append(session("a"), { timeMs: 3, stream: "berth", line: "ended", event: "ended" });
      const page = await logs.read(query({ sessionId: "a" }));
      assert.deepEqual(page, {
        lines: [
          { timeMs: 1, stream: "stdout", line: "one", sessionId: "a" },
          { timeMs: 2, stream: "stderr", line: "two", sessionId: "a" },
          { timeMs: 3, stream: "berth", line: "ended", event: "ended", sessionId: "a" },
        ],
        truncated: false,
      });
      await logs.close();
    });

    it("sees none of the lines appended after the read was called", async () => {
      const logs = await store.open(roomy);
      logs.append(session("a"), line(1, "before"));
      const reading = logs.read(query());
      logs.append(session("a"), line(2, "after"));
      logs.append(session("b"), line(3, "after, elsewhere"));
      assert.deepEqual(
        (await reading).lines.map((entry) => entry.line),
        ["before"],
      );
      await logs.close();
    });

    it("merges a runtime's sessions by time, and keeps runtimes and sessions apart", async () => {
      const logs = await store.open(roomy);
      logs.append(session("a"), line(10, "a-10"));
      logs.append(session("b"), line(5, "b-5"));
      logs.append(session("a"), line(20, "a-20"));
      logs.append(session("b"), line(15, "b-15"));
      logs.append({ runtimeId: "runtime-2", sessionId: "a" }, line(12, "other runtime"));
      assert.deepEqual(
        (await logs.read(query())).lines.map((entry) => `${entry.sessionId}:${entry.line}`),
        ["b:b-5", "a:a-10", "b:b-15", "a:a-20"],
      );
      assert.deepEqual(
        (await logs.read(query({ sessionId: "b" }))).lines.map((entry) => entry.line),
        ["b-5", "b-15"],
      );
      assert.deepEqual((await logs.read(query({ sessionId: "nobody" }))).lines, []);
      await logs.close();
    });

    it("answers the latest lines within limit, maxBytes and since, saying when it left some out", async () => {
      const logs = await store.open(roomy);
      for (let time = 1; time <= 10; time += 1) logs.append(session("a"), line(time, `l${time}`));
      const latest = await logs.read(query({ limit: 3 }));
      assert.deepEqual(
        latest.lines.map((entry) => entry.line),
        ["l8", "l9", "l10"],
      );
      assert.equal(latest.truncated, true);
      const since = await logs.read(query({ sinceMs: 8 }));
      assert.deepEqual(
        since.lines.map((entry) => entry.line),
        ["l8", "l9", "l10"],
      );
      assert.equal(since.truncated, false);
      // "l9" and "l10" are 5 bytes of text: one more line would pass 6.
      const small = await logs.read(query({ maxBytes: 6 }));
      assert.deepEqual(
        small.lines.map((entry) => entry.line),
        ["l9", "l10"],
      );
      assert.equal(small.truncated, true);
      await logs.close();
    });

    it("keeps a session's log within its bound, the latest lines kept", async () => {
      const sessionBytes = 64 * 1024;
      const logs = await store.open({ sessionBytes, totalBytes: 1 << 30 });
      const text = "x".repeat(100);
      for (let time = 1; time <= 4000; time += 1) logs.append(session("a"), line(time, text));
      const page = await logs.read(query({ limit: 10_000 }));
      const keptBytes = page.lines.length * (text.length + 60);
      assert.ok(keptBytes <= sessionBytes, `kept about ${keptBytes} bytes`);
      assert.ok(keptBytes >= sessionBytes / 4, `kept only about ${keptBytes} bytes`);
      assert.equal(page.lines.at(-1)?.timeMs, 4000);
      await logs.close();
    });

    it("replaces a line bigger than half its bound with a note saying so", async () => {
      const logs = await store.open({ sessionBytes: 64 * 1024, totalBytes: 1 << 30 });
      logs.append(session("a"), line(1, "y".repeat(40_000)));
      const [note] = (await logs.read(query())).lines;
      assert.equal(note?.stream, "berth");
      assert.equal(note.event, "dropped");
      assert.match(note.line, /^a stdout line of \d+ bytes was left out/);
      await logs.close();
    });

    it("sweeps logs that wrote nothing since the cutoff, then the oldest beyond the total bound", async () => {
      const now = Date.now();
      const logs = await store.open({ sessionBytes: 64 * 1024, totalBytes: 24 * 1024 });
      logs.append(session("stale"), line(now - 10_000, "stale"));
      const text = "z".repeat(1000);
      for (const [index, name] of ["older", "newer"].entries()) {
        for (let count = 0; count < 15; count += 1)
          logs.append(session(name), line(now + index * 1000 + count, text));
      }
      // Read first: whatever a store batches is written by then.
      await logs.read(query());
      assert.equal(await logs.sweep(now - 5_000), 2);
      assert.deepEqual(
        [...new Set((await logs.read(query())).lines.map((entry) => entry.sessionId))],
        ["newer"],
      );
      // A session swept away starts again when it writes again.
      logs.append(session("stale"), line(now + 5000, "back"));
      assert.deepEqual(
        (await logs.read(query({ sessionId: "stale" }))).lines.map((entry) => entry.line),
        ["back"],
      );
      await logs.close();
    });

    it("removes every log of a runtime", async () => {
      const logs = await store.open(roomy);
      logs.append(session("a"), line(1, "gone"));
      logs.append({ runtimeId: "runtime-2", sessionId: "a" }, line(1, "kept"));
      await logs.removeRuntime("runtime-1");
      assert.deepEqual((await logs.read(query())).lines, []);
      assert.equal((await logs.read(query({ runtimeId: "runtime-2" }))).lines.length, 1);
      await logs.close();
    });
  });
}
