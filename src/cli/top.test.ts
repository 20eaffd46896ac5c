import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatDuration, renderTable } from "./top.ts";
import { topRows, type SessionSample, type Snapshot } from "./top-sessions.ts";

function sample(fields: Partial<SessionSample>): SessionSample {
  return {
    runtimeName: "agent_one",
    runtimeId: "agent_one-aaaaaaaaaa",
    sessionId: "session-a",
    node: "node-1",
    state: "running",
    cpuSeconds: 10,
    memoryBytes: 100 * 1024 * 1024,
    storageUsedBytes: 2048,
    startedAt: "2025-01-01T00:00:00.000Z",
    lastActivityAt: "2025-01-01T00:00:50.000Z",
    activeRequests: 0,
    ...fields,
  };
}

const snapshot = (takenAtMs: number, sessions: SessionSample[]): Snapshot => ({
  takenAtMs,
  sessions,
  unreachableNodes: [],
});

const nowMs = Date.parse("2025-01-01T00:01:00.000Z");

describe("berth top's rows", () => {
  it("measures CPU % between two snapshots, busiest first", () => {
    const before = snapshot(1000, [
      sample({}),
      sample({ sessionId: "session-b", cpuSeconds: 5 }),
      sample({ sessionId: "session-c", cpuSeconds: undefined }),
    ]);
    const after = snapshot(3000, [
      sample({ cpuSeconds: 11 }),
      sample({ sessionId: "session-b", cpuSeconds: 8 }),
      sample({ sessionId: "session-c", cpuSeconds: undefined }),
      sample({ sessionId: "session-new", cpuSeconds: 1 }),
    ]);
    const rows = topRows(before, after, nowMs);
    assert.deepEqual(
      rows.map((row) => [row.session, row.cpuPercent]),
      [
        ["session-b", 150],
        ["session-a", 50],
        ["session-c", undefined],
        ["session-new", undefined],
      ],
    );
  });

  it("counts a session that restarted or moved afresh", () => {
    const before = snapshot(0, [sample({ cpuSeconds: 30 })]);
    const restarted = snapshot(1000, [
      sample({ cpuSeconds: 1, startedAt: "2025-01-01T00:00:59.000Z" }),
    ]);
    assert.equal(topRows(before, restarted, nowMs)[0]?.cpuPercent, undefined);
    const moved = snapshot(1000, [sample({ cpuSeconds: 31, node: "node-2" })]);
    assert.equal(topRows(before, moved, nowMs)[0]?.cpuPercent, undefined);
  });

  it("shows age and idle time, and a session in use as active", () => {
    const rows = topRows(
      undefined,
      snapshot(0, [
        sample({}),
        sample({ sessionId: "session-z", activeRequests: 1, memoryBytes: 1 }),
      ]),
      nowMs,
    );
    const [idle, busy] = rows;
    assert.ok(idle !== undefined && busy !== undefined);
    assert.equal(idle.ageSeconds, 60);
    assert.equal(idle.idleSeconds, 10);
    assert.equal(busy.idleSeconds, undefined);
    const lines = renderTable(rows, { sessionWidth: undefined });
    assert.deepEqual(lines, [
      "RUNTIME    SESSION    NODE    STATE    CPU%     MEMORY  STORAGE    AGE    IDLE",
      "agent_one  session-a  node-1  running     -  100.0 MiB  2.0 KiB  1m00s     10s",
      "agent_one  session-z  node-1  running     -        1 B  2.0 KiB  1m00s  active",
    ]);
  });

  it("cuts long session ids in the middle, in the live view only", () => {
    const long = `conversation-${"x".repeat(40)}-end`;
    const rows = topRows(undefined, snapshot(0, [sample({ sessionId: long })]), nowMs);
    assert.match(renderTable(rows, { sessionWidth: 20 })[1] ?? "", / conversat…xxxxxx-end /);
    assert.ok(renderTable(rows, { sessionWidth: undefined })[1]?.includes(long));
    assert.deepEqual(renderTable([], { sessionWidth: 20 }), ["No running sessions."]);
  });

  it("formats durations with their two largest units", () => {
    assert.equal(formatDuration(42.9), "42s");
    assert.equal(formatDuration(192), "3m12s");
    assert.equal(formatDuration(2 * 3600 + 5 * 60 + 7), "2h05m");
    assert.equal(formatDuration(86_400 + 3 * 3600), "1d03h");
  });
});
