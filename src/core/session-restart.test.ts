import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { MemoryMetadataStore } from "../adapters/memory/store.ts";
import { DirectoryVolumes } from "../adapters/volumes/directory-volumes.ts";
import { runtimeRecord, storeRuntime, versionRecord } from "../../test/support/records.ts";
import type { Sandbox, SandboxDriver, SandboxExit } from "./sandbox.ts";
import { SessionStorage } from "./session-storage.ts";
import { SessionManager } from "./sessions.ts";

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };

const runtime = runtimeRecord("agent-BBBBBBBBBB");
const version = versionRecord(runtime);

/** A sandbox that runs until killed. */
function idleSandbox(name: string): Sandbox {
  let exit: (value: SandboxExit) => void = () => undefined;
  const exited = new Promise<SandboxExit>((resolve) => (exit = resolve));
  return {
    name,
    agentEndpoint: { host: "127.0.0.1", port: 1 },
    exited,
    kill: () => {
      exit({ code: null, signal: "SIGKILL" });
      return exited.then(() => undefined);
    },
    usage: () => Promise.resolve({ memoryBytes: undefined, processes: undefined }),
    exec: () => Promise.reject(new Error("no commands in this test")),
    openTerminal: () => Promise.reject(new Error("no terminals in this test")),
  };
}

/**
 * A driver whose first start takes until `letFirstStartFinish` (a slow host), ignoring its abort
 * as a driver that is mid-way through making namespaces would; later starts are at once.
 */
function slowFirstStartDriver() {
  let letFirstStartFinish: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => (letFirstStartFinish = resolve));
  let starts = 0;
  let firstStartBegan: () => void = () => undefined;
  const firstStartBegins = new Promise<void>((resolve) => (firstStartBegan = resolve));
  const driver: SandboxDriver = {
    volumeKinds: ["host-directory"],
    imageRootNeeds: { folders: [], files: [] },
    describe: () => "a test driver",
    close: () => Promise.resolve(),
    start: async () => {
      starts += 1;
      const name = `sandbox-${String(starts)}`;
      if (starts === 1) {
        firstStartBegan();
        await gate;
      }
      return idleSandbox(name);
    },
  };
  return { driver, firstStartBegins, letFirstStartFinish };
}

describe("a session ended while it still starts", () => {
  const folder = mkdtempSync(join(tmpdir(), "berth-restart-"));
  after(() => {
    rmSync(folder, { recursive: true, force: true });
  });

  it("makes the next start of its id wait until its storage is let go, then start on it", async () => {
    const store = new MemoryMetadataStore();
    await storeRuntime(store, runtime, version);
    const { driver, firstStartBegins, letFirstStartFinish } = slowFirstStartDriver();
    const sessions = new SessionManager({
      driver,
      storage: new SessionStorage({
        store,
        volumes: new DirectoryVolumes(join(folder, "volumes")),
        kinds: driver.volumeKinds,
        settings: { sizeBytes: 2 ** 20, retentionMs: 60_000 },
        log: quiet,
        now: () => new Date(),
        holder: "node-a",
      }),
      probe: () => Promise.resolve("Healthy"),
      plan: () =>
        Promise.resolve({
          filesystem: { kind: "code", codeDir: folder },
          command: ["agent"],
          environment: {},
          shell: "/bin/sh",
        }),
      log: quiet,
      settings: {
        region: "us-east-1",
        agentStartupTimeoutMs: 5_000,
        sweepIntervalMs: 60_000,
        pingTimeoutMs: 1_000,
        maxSessions: 4,
        agentLog: { bytesPerSecond: 1_000_000, burstBytes: 1_000_000 },
      },
    });
    try {
      const first = sessions.acquire(runtime, version, "session-1");
      first.catch(() => undefined);
      await firstStartBegins; // its storage is attached; its sandbox is being made
      assert.equal(await sessions.stop(runtime.id, "session-1"), true);
      const second = sessions.acquire(runtime, version, "session-1");
      letFirstStartFinish();
      await assert.rejects(first);
      const lease = await second; // before the fix: "already attached", a 500
      assert.deepEqual(lease.agentEndpoint, { host: "127.0.0.1", port: 1 });
      lease.release();
    } finally {
      await sessions.close();
    }
  });
});
