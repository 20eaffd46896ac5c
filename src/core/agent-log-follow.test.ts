import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { MemoryAgentLogStore } from "../adapters/memory/agent-log-store.ts";
import {
  followAgentLogs,
  followLineOverheadBytes,
  type FollowItem,
  type FollowOptions,
} from "./agent-log-follow.ts";
import { AgentLogs, type AgentLogQuery } from "./agent-logs.ts";

const quietLog = { info: () => undefined, warn: () => undefined, error: () => undefined };
const runtimeId = "runtime-1";
const query: AgentLogQuery = { runtimeId, limit: 100, maxBytes: 1 << 20 };

/** What a follow yields, as short text: "a:line", "skipped:N", "end:why". */
function describeItem(item: FollowItem): string {
  if ("line" in item) return `${item.line.sessionId}:${item.line.line}`;
  if ("skipped" in item) return `skipped:${item.skipped.lines}`;
  return `end:${item.end}`;
}

describe("followAgentLogs", () => {
  const opened: AgentLogs[] = [];
  const open = (): AgentLogs => {
    const logs = new AgentLogs({
      store: new MemoryAgentLogStore({ sessionBytes: 1 << 20, totalBytes: 1 << 30 }),
      settings: { retentionMs: 3_600_000, sweepIntervalMs: 60_000 },
      log: quietLog,
    });
    opened.push(logs);
    return logs;
  };
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((logs) => logs.close()));
  });
  const options = (extra: Partial<FollowOptions> = {}): FollowOptions => ({
    signal: new AbortController().signal,
    maxMs: 60_000,
    isRunning: () => true,
    maxQueuedBytes: 1 << 20,
    ...extra,
  });
  const line = (text: string, event?: "ended") => ({
    timeMs: Date.now(),
    stream: event === undefined ? ("stdout" as const) : ("berth" as const),
    line: text,
    ...(event === undefined ? {} : { event }),
  });

  it("sends the lines so far, then new ones as they come, until the session ends", async () => {
    const logs = open();
    logs.append({ runtimeId, sessionId: "a" }, line("earlier"));
    const follow = followAgentLogs(logs, { ...query, sessionId: "a" }, options());
    const seen: string[] = [];
    for await (const item of follow) {
      seen.push(describeItem(item));
      // Each new line is appended once the one before it has arrived.
      if (seen.length === 1) logs.append({ runtimeId, sessionId: "a" }, line("later"));
      if (seen.length === 2) {
        logs.append({ runtimeId, sessionId: "other" }, line("not followed"));
        logs.append({ runtimeId, sessionId: "a" }, line("session ended: stopped", "ended"));
      }
    }
    assert.deepEqual(seen, [
      "a:earlier",
      "a:later",
      "a:session ended: stopped",
      "end:session-ended",
    ]);
  });

  it("ends at once, after its lines, when the session does not run here", async () => {
    const logs = open();
    logs.append({ runtimeId, sessionId: "a" }, line("from its last run"));
    const seen: string[] = [];
    for await (const item of followAgentLogs(
      logs,
      { ...query, sessionId: "a" },
      options({ isRunning: () => false }),
    ))
      seen.push(describeItem(item));
    assert.deepEqual(seen, ["a:from its last run", "end:session-not-running"]);
  });

  it("follows every session of the runtime until the reader stops", async () => {
    const logs = open();
    const reader = new AbortController();
    const seen: string[] = [];
    const follow = followAgentLogs(logs, query, options({ signal: reader.signal }));
    logs.append({ runtimeId, sessionId: "a" }, line("one"));
    logs.append({ runtimeId: "runtime-2", sessionId: "a" }, line("another runtime"));
    logs.append({ runtimeId, sessionId: "b" }, line("two"));
    for await (const item of follow) {
      seen.push(describeItem(item));
      if (seen.length === 2) reader.abort();
    }
    assert.deepEqual(seen, ["a:one", "b:two", "end:stopped"]);
  });

  it("ends at its time limit", async () => {
    const logs = open();
    const seen: string[] = [];
    for await (const item of followAgentLogs(logs, query, options({ maxMs: 20 })))
      seen.push(describeItem(item));
    assert.deepEqual(seen, ["end:time-limit"]);
  });

  it("skips what a slow reader cannot hold, and says how much where the gap is", async () => {
    const logs = open();
    const maxQueuedBytes = 2 * (5 + followLineOverheadBytes);
    const follow = followAgentLogs(logs, query, options({ maxQueuedBytes }));
    // The first next() subscribes and reads; the lines below arrive before anything is taken.
    const first = follow.next();
    for (const text of ["12345", "67890", "dropped", "dropped too"])
      logs.append({ runtimeId, sessionId: "a" }, line(text));
    const firstItem = await first;
    const seen = firstItem.done === true ? [] : [describeItem(firstItem.value)];
    for await (const item of follow) {
      seen.push(describeItem(item));
      if (seen.length === 3) logs.append({ runtimeId, sessionId: "a" }, line("after the gap"));
      if (seen.length === 4) break;
    }
    assert.deepEqual(seen, ["a:12345", "a:67890", "skipped:2", "a:after the gap"]);
  });

  it("charges empty lines too: a flood of them behind a stalled reader is skipped", async () => {
    const logs = open();
    const maxQueuedBytes = 64 * 1024;
    const follow = followAgentLogs(logs, query, options({ maxQueuedBytes }));
    const first = follow.next();
    const flood = 5000;
    for (let count = 0; count < flood; count += 1)
      logs.append({ runtimeId, sessionId: "a" }, line(""));
    const firstItem = await first;
    let queued = firstItem.done === true ? 0 : 1;
    let skipped = 0;
    for await (const item of follow) {
      if ("skipped" in item) {
        skipped = item.skipped.lines;
        break;
      }
      queued += 1;
      if (queued === flood) break;
    }
    assert.equal(queued, Math.floor(maxQueuedBytes / followLineOverheadBytes));
    assert.equal(queued + skipped, flood);
  });

  it("sends what was written while its history was read when the session ended then", async () => {
    const logs = open();
    logs.append({ runtimeId, sessionId: "a" }, line("earlier"));
    const follow = followAgentLogs(
      logs,
      { ...query, sessionId: "a" },
      options({ isRunning: () => false }),
    );
    // The first next() subscribes and starts the read; the session ends before the read is done.
    const first = follow.next();
    logs.append({ runtimeId, sessionId: "a" }, line("last words"));
    logs.append({ runtimeId, sessionId: "a" }, line("session ended: stopped", "ended"));
    const firstItem = await first;
    const seen = firstItem.done === true ? [] : [describeItem(firstItem.value)];
    for await (const item of follow) seen.push(describeItem(item));
    assert.deepEqual(seen, [
      "a:earlier",
      "a:last words",
      "a:session ended: stopped",
      "end:session-ended",
    ]);
  });

  it("ends as the session did when its history ends with the ended note", async () => {
    const logs = open();
    logs.append({ runtimeId, sessionId: "a" }, line("session ended: stopped", "ended"));
    const seen: string[] = [];
    for await (const item of followAgentLogs(
      logs,
      { ...query, sessionId: "a" },
      options({ isRunning: () => false }),
    ))
      seen.push(describeItem(item));
    assert.deepEqual(seen, ["a:session ended: stopped", "end:session-ended"]);
  });
});
