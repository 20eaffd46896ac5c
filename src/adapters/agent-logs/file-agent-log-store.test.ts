import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import type { AgentLogQuery } from "../../core/agent-logs.ts";
import { FileAgentLogStore } from "./file-agent-log-store.ts";

const quietLog = { info: () => undefined, warn: () => undefined, error: () => undefined };
const ref = { runtimeId: "runtime-1", sessionId: "session-with-a-long-enough-identifier-0001" };
const everything: AgentLogQuery = { runtimeId: "runtime-1", limit: 100_000, maxBytes: 1 << 30 };

/** Every file under a folder, with its size and mode. */
function filesUnder(folder: string): { path: string; size: number; mode: number }[] {
  return readdirSync(folder, { recursive: true, encoding: "utf8" })
    .map((name) => join(folder, name))
    .filter((path) => statSync(path).isFile())
    .map((path) => ({ path, size: statSync(path).size, mode: statSync(path).mode & 0o777 }));
}

describe("FileAgentLogStore", () => {
  let root = "";
  let folder = "";
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), "berth-file-logs-"));
    folder = join(root, "agent-logs");
  });
  afterEach(() => {
    rmSync(root, { recursive: true, force: true });
  });

  it("finds the logs written before a restart, and goes on writing after them", async () => {
    const first = await FileAgentLogStore.open(
      folder,
      { sessionBytes: 1 << 20, totalBytes: 1 << 30 },
      quietLog,
    );
    first.append(ref, { timeMs: 1, stream: "stdout", line: "before the restart" });
    await first.close();
    const second = await FileAgentLogStore.open(
      folder,
      { sessionBytes: 1 << 20, totalBytes: 1 << 30 },
      quietLog,
    );
    second.append(ref, { timeMs: 2, stream: "stderr", line: "after it" });
    const page = await second.read({ ...everything, sessionId: ref.sessionId });
    assert.deepEqual(
      page.lines.map((entry) => entry.line),
      ["before the restart", "after it"],
    );
    await second.close();
  });

  it("never takes more than its bound on disk, and keeps its files root's alone", async () => {
    const sessionBytes = 64 * 1024;
    const logs = await FileAgentLogStore.open(
      folder,
      { sessionBytes, totalBytes: 1 << 30 },
      quietLog,
    );
    for (let time = 0; time < 5000; time += 1)
      logs.append(ref, { timeMs: time, stream: "stdout", line: `line ${time} ${"x".repeat(90)}` });
    await logs.close();
    const files = filesUnder(folder);
    assert.equal(files.length, 2, "the current file and the one before it");
    const onDisk = files.reduce((sum, file) => sum + file.size, 0);
    assert.ok(onDisk <= sessionBytes, `${onDisk} bytes on disk`);
    assert.deepEqual(
      files.map((file) => file.mode),
      [0o600, 0o600],
    );
    assert.equal(statSync(folder).mode & 0o777, 0o700);
  });

  it("does not write through a symbolic link put where a log goes", async () => {
    const logs = await FileAgentLogStore.open(
      folder,
      { sessionBytes: 1 << 20, totalBytes: 1 << 30 },
      quietLog,
    );
    logs.append(ref, { timeMs: 1, stream: "stdout", line: "first" });
    await logs.read(everything);
    const [file] = filesUnder(folder);
    const target = join(root, "elsewhere");
    writeFileSync(target, "");
    rmSync(file?.path ?? "");
    symlinkSync(target, file?.path ?? "");
    logs.append(ref, { timeMs: 2, stream: "stdout", line: "second" });
    await logs.close();
    assert.equal(statSync(target).size, 0);
  });

  it("reads a runtime's sessions newest first, and no further than the answer needs", async () => {
    const logs = await FileAgentLogStore.open(
      folder,
      { sessionBytes: 1 << 20, totalBytes: 1 << 30 },
      quietLog,
    );
    const session = (name: string) => ({ runtimeId: "runtime-1", sessionId: name });
    logs.append(session("old"), { timeMs: 1, stream: "stdout", line: "old" });
    await logs.read(everything);
    // The old session's log can no longer be read: a read that opened it would fail.
    const [oldFile] = filesUnder(folder);
    writeFileSync(join(root, "elsewhere"), "");
    rmSync(oldFile?.path ?? "");
    symlinkSync(join(root, "elsewhere"), oldFile?.path ?? "");
    logs.append(session("middle"), { timeMs: 2, stream: "stdout", line: "middle" });
    logs.append(session("new"), { timeMs: 3, stream: "stdout", line: "new" });
    const page = await logs.read({ ...everything, limit: 2 });
    assert.deepEqual(
      page.lines.map((entry) => entry.line),
      ["middle", "new"],
    );
    assert.equal(page.truncated, true);
    await logs.close();
  });
});
