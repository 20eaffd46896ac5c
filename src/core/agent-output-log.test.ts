import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { AgentOutputLog } from "./agent-output-log.ts";
import type { LogFields, Logger } from "./logger.ts";

function recordingLogger(): { log: Logger; records: { message: string; fields: LogFields }[] } {
  const records: { message: string; fields: LogFields }[] = [];
  const record = (message: string, fields: LogFields = {}) => records.push({ message, fields });
  return { log: { info: record, warn: record, error: record }, records };
}

describe("AgentOutputLog", () => {
  const ids = { runtimeId: "r", sessionId: "s" };
  // Each "x" line costs 128 bytes of record, 2 of ids and 3 of line ("x" with its quotes).
  const lineCost = 133;

  it("logs a burst, drops past it, refills with time, and reports the drops on flush", () => {
    const { log, records } = recordingLogger();
    let now = 0;
    const output = new AgentOutputLog({
      log,
      ids,
      settings: { bytesPerSecond: lineCost, burstBytes: 2 * lineCost },
      nowMs: () => now,
    });
    for (let line = 0; line < 5; line += 1) output.write("stdout", "x");
    now += 1000; // one more line's worth
    output.write("stderr", "x");
    output.write("stderr", "x");
    output.flush();
    assert.deepEqual(
      records.map((record) => record.message),
      ["agent output", "agent output", "agent output", "agent output dropped"],
    );
    assert.equal(records[3]?.fields["droppedLines"], 4);
  });

  it("charges a line what it costs in the log, escapes included", () => {
    const { log, records } = recordingLogger();
    const output = new AgentOutputLog({
      log,
      ids,
      settings: { bytesPerSecond: 1, burstBytes: 1000 },
      nowMs: () => 0,
    });
    // 200 control characters are 200 bytes on stdout but 1,200 as JSON escapes.
    output.write("stdout", "\u0001".repeat(200));
    output.flush();
    assert.equal(records[0]?.message, "agent output dropped");
  });
});
