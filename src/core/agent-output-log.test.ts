import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { AgentLogEntry, AgentLogWriter } from "./agent-logs.ts";
import { AgentOutputLog } from "./agent-output-log.ts";
import type { LogFields, Logger } from "./logger.ts";

function recordingLogger(): { log: Logger; records: { message: string; fields: LogFields }[] } {
  const records: { message: string; fields: LogFields }[] = [];
  const record = (message: string, fields: LogFields = {}) => records.push({ message, fields });
  return { log: { info: record, warn: record, error: record }, records };
}

function recordingWriter(): { writer: AgentLogWriter; entries: AgentLogEntry[] } {
  const entries: AgentLogEntry[] = [];
  return { writer: { append: (_session, entry) => entries.push(entry) }, entries };
}

describe("AgentOutputLog", () => {
  const ids = { runtimeId: "r", sessionId: "s" };
  // An "x" line's record, at time 0: {"time":"1970-01-01T00:00:00.000Z","stream":"stdout","line":"x"}
  // and its newline.
  const lineCost = 67;

  it("writes a burst, drops past it, refills with time, and notes the drops when the session ends", () => {
    const { log, records } = recordingLogger();
    const { writer, entries } = recordingWriter();
    let now = 0;
    const output = new AgentOutputLog({
      log,
      ids,
      writer,
      settings: { bytesPerSecond: lineCost, burstBytes: 2 * lineCost },
      nowMs: () => now,
      timeMs: () => 0,
    });
    for (let line = 0; line < 5; line += 1) output.write("stdout", "x");
    now += 1000; // one more line's worth
    output.write("stdout", "x");
    output.write("stdout", "x");
    output.end("idle timeout");
    assert.deepEqual(
      entries.map((entry) => entry.event ?? entry.stream),
      ["started", "stdout", "stdout", "stdout", "dropped", "ended"],
    );
    assert.equal(entries[4]?.line.startsWith("4 lines (4 bytes) dropped"), true);
    assert.equal(entries[5]?.line, "session ended: idle timeout");
    // Berth's own log has the drop report and nothing the agent printed.
    assert.deepEqual(
      records.map((record) => record.message),
      ["agent output dropped"],
    );
    assert.equal(records[0]?.fields["droppedLines"], 4);
  });

  it("charges a line what it costs in the log, escapes included", () => {
    const { log } = recordingLogger();
    const { writer, entries } = recordingWriter();
    const output = new AgentOutputLog({
      log,
      ids,
      writer,
      settings: { bytesPerSecond: 1, burstBytes: 1000 },
      nowMs: () => 0,
    });
    // 200 control characters are 200 bytes on stdout but 1,200 as JSON escapes.
    output.write("stdout", "\u0001".repeat(200));
    output.end("stopped");
    assert.deepEqual(
      entries.map((entry) => entry.event ?? entry.stream),
      ["started", "dropped", "ended"],
    );
  });

  it("notes the end once, whoever tells it first", () => {
    const { log } = recordingLogger();
    const { writer, entries } = recordingWriter();
    const output = new AgentOutputLog({
      log,
      ids,
      writer,
      settings: { bytesPerSecond: 1000, burstBytes: 1000 },
    });
    output.end("the agent exited (exit code 3)");
    output.end("server shutting down");
    assert.deepEqual(
      entries.filter((entry) => entry.event === "ended").map((entry) => entry.line),
      ["session ended: the agent exited (exit code 3)"],
    );
  });

  it("writes nothing after the end: the ended note stays the log's last line", () => {
    const { log } = recordingLogger();
    const { writer, entries } = recordingWriter();
    let now = 0;
    const output = new AgentOutputLog({
      log,
      ids,
      writer,
      settings: { bytesPerSecond: 1, burstBytes: lineCost },
      nowMs: () => now,
      timeMs: () => 0,
    });
    output.end("stopped");
    output.write("stdout", "x");
    now += 5000;
    output.write("stdout", "x");
    output.end("again");
    assert.deepEqual(
      entries.map((entry) => entry.event),
      ["started", "ended"],
    );
  });
});
