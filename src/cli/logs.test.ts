import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { UsageError } from "./args.ts";
import { shortSession, sinceOption, visibleText } from "./logs.ts";

describe("berth logs options", () => {
  const now = Date.parse("2025-01-31T12:00:00.000Z");

  it("takes --since as a duration back from now or as a time", () => {
    assert.equal(sinceOption("30s", now), "2025-01-31T11:59:30.000Z");
    assert.equal(sinceOption("10m", now), "2025-01-31T11:50:00.000Z");
    assert.equal(sinceOption("2h", now), "2025-01-31T10:00:00.000Z");
    assert.equal(sinceOption("1d", now), "2025-01-30T12:00:00.000Z");
    assert.equal(sinceOption("2025-01-31T08:00:00+01:00", now), "2025-01-31T07:00:00.000Z");
    assert.equal(sinceOption(undefined, now), undefined);
  });

  it("refuses a --since it cannot read, saying what it takes", () => {
    for (const text of ["10 minutes", "yesterday", "5", "-1m"]) {
      assert.throws(
        () => sinceOption(text, now),
        (error: unknown) => {
          assert.ok(error instanceof UsageError);
          assert.match(error.message, /duration \(30s, 10m, 2h, 1d\) or an ISO 8601 time/);
          return true;
        },
      );
    }
  });

  it("shortens a session id to a prefix of one width", () => {
    assert.equal(shortSession("short").length, 16);
    assert.equal(shortSession("session-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"), "session-0f1e2d3…");
  });

  it("shows an agent's control characters as text, keeping tabs and the rest", () => {
    assert.equal(
      visibleText("\u001b]52;c;cHduZWQ=\u0007\r[berth] forged\u001b[2A\u009b1m\u007f"),
      "\\x1b]52;c;cHduZWQ=\\x07\\x0d[berth] forged\\x1b[2A\\x9b1m\\x7f",
    );
    assert.equal(visibleText("a\tb é 😀"), "a\tb é 😀");
  });
});
