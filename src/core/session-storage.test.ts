import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { MemoryMetadataStore } from "../adapters/memory/store.ts";
import { SqliteMetadataStore } from "../adapters/sqlite/store.ts";
import { DirectoryVolumes } from "../adapters/volumes/directory-volumes.ts";
import { BerthError } from "./errors.ts";
import { runtimeRecord, storeRuntime, versionRecord } from "../../test/support/records.ts";
import {
  agreedHandleKind,
  SessionStorage,
  type ReplicaStatus,
  type VolumeUsage,
} from "./session-storage.ts";
import type { MetadataStore } from "./store.ts";

describe("handle kinds agreed between a sandbox driver and a volume store", () => {
  it("takes the driver's most preferred kind that the store gives", () => {
    const store = ["host-directory", "block-image"] as const;
    assert.equal(agreedHandleKind(["block-image", "host-directory"], store), "block-image");
    assert.equal(agreedHandleKind(["host-directory", "block-image"], store), "host-directory");
    assert.equal(
      agreedHandleKind(["block-image"], ["host-directory", "block-image"]),
      "block-image",
    );
  });

  it("refuses, naming both lists, when they share no kind", () => {
    assert.throws(
      () => agreedHandleKind(["block-image"], ["host-directory"]),
      /attaches volumes as "block-image", but the volume store gives only "host-directory"/,
    );
    assert.throws(() => agreedHandleKind([], ["host-directory"]), /attaches volumes as nothing/);
  });

  describe("SessionStorage", () => {
    let folder = "";
    let store: SqliteMetadataStore | undefined;
    before(() => {
      folder = mkdtempSync(join(tmpdir(), "berth-session-storage-"));
      store = new SqliteMetadataStore(join(folder, "berth.db"));
    });
    after(async () => {
      await store?.close();
      rmSync(folder, { recursive: true, force: true });
    });

    const sessionStorage = (kinds: readonly ("host-directory" | "block-image")[]) =>
      new SessionStorage({
        store: store ?? assert.fail("opened in before()"),
        volumes: new DirectoryVolumes(join(folder, "volumes")),
        kinds,
        settings: { sizeBytes: 2 ** 20, retentionMs: 60_000 },
        log: { info: () => undefined, warn: () => undefined, error: () => undefined },
        now: () => new Date(),
        holder: "node-a",
      });

    it("adds up a running session's volumes: bytes used, and their copies as the oldest one", async () => {
      const reports: Record<string, VolumeUsage> = {
        first: {
          attached: true,
          usedBytes: 1000,
          allocatedBytes: 4096,
          replica: replica({
            pending: true,
            durableAt: "2025-01-01T00:00:10.000Z",
            storedBytes: 100,
          }),
        },
        second: {
          attached: true,
          usedBytes: 24,
          allocatedBytes: 4096,
          replica: replica({
            pending: false,
            durableAt: "2025-01-01T00:00:05.000Z",
            storedBytes: 50,
          }),
        },
        plain: { attached: true, usedBytes: 7, allocatedBytes: 7 },
      };
      // A volume store whose volumes report what the test says (one of them replicated).
      class ReportingVolumes extends DirectoryVolumes {
        override usage(volumeId: string): Promise<VolumeUsage> {
          const report = reports[volumeId];
          return report === undefined
            ? Promise.reject(new Error("detached"))
            : Promise.resolve(report);
        }
      }
      const storage = new SessionStorage({
        store: store ?? assert.fail("opened in before()"),
        volumes: new ReportingVolumes(join(folder, "reporting")),
        kinds: ["host-directory"],
        settings: { sizeBytes: 2 ** 20, retentionMs: 60_000 },
        log: { info: () => undefined, warn: () => undefined, error: () => undefined },
        now: () => new Date(),
        holder: "node-a",
      });
      const attached = (...ids: string[]) =>
        ids.map((volumeId) => ({
          mountPath: `/mnt/${volumeId}`,
          volumeId,
          handle: { kind: "host-directory" as const, volumeId, path: `/v/${volumeId}` },
        }));
      assert.deepEqual(await storage.useOf(attached("first", "second", "gone")), {
        usedBytes: 1024,
        checkpoint: { pending: true, durableAt: "2025-01-01T00:00:05.000Z", storedBytes: 150 },
      });
      assert.deepEqual(await storage.useOf(attached("plain")), { usedBytes: 7 });
      assert.deepEqual(await storage.useOf([]), { usedBytes: undefined });
    });

    it("refuses at construction a driver that attaches no kind its volume store gives", () => {
      assert.throws(
        () => sessionStorage(["block-image"]),
        /"block-image", but the volume store gives only "host-directory": choose a volume store and a sandbox driver that share a handle kind/,
      );
      assert.doesNotThrow(() => sessionStorage(["block-image", "host-directory"]));
    });
  });
});

describe("volumes in use, as claims in the metadata store two Berth processes share", () => {
  let folder = "";
  const store = new MemoryMetadataStore();
  const runtime = runtimeRecord("agent-AAAAAAAAAA");
  const version = versionRecord(runtime);
  before(async () => {
    folder = mkdtempSync(join(tmpdir(), "berth-claims-"));
    await storeRuntime(store, runtime, version);
  });
  after(() => {
    rmSync(folder, { recursive: true, force: true });
  });

  /** One Berth process's session storage: its own volume store folder, the shared store. */
  const processNamed = (holder: string, shared: MetadataStore = store) =>
    new SessionStorage({
      store: shared,
      volumes: new DirectoryVolumes(join(folder, "volumes")),
      kinds: ["host-directory"],
      settings: { sizeBytes: 2 ** 20, retentionMs: 0 },
      log: { info: () => undefined, warn: () => undefined, error: () => undefined },
      now: () => new Date(),
      holder,
    });
  const inUse = (error: unknown) =>
    error instanceof BerthError && error.code === "ConflictException";

  it("never lets a second process attach, sweep or delete a volume the first one has attached", async () => {
    const first = processNamed("node-a");
    const second = processNamed("node-b");
    const attached = await first.attach(runtime, version, "session-1");
    await assert.rejects(second.attach(runtime, version, "session-1"), inUse);
    await assert.rejects(second.removeSession(runtime.id, "session-1"), inUse);
    await second.sweep(); // retention 0: everything unused is past it
    assert.equal((await store.listSessionStorage(runtime.id)).length, 1);
    await first.detach(attached);
    const again = await second.attach(runtime, version, "session-1");
    await second.detach(again);
    assert.equal(await first.removeSession(runtime.id, "session-1"), true);
  });

  it("takes back, after a restart, the claims its previous run held", async () => {
    const crashed = processNamed("node-a");
    await crashed.attach(runtime, version, "session-2"); // never detached: the process died
    const [record] = (await store.listSessionStorage(runtime.id)).filter(
      (entry) => entry.sessionId === "session-2",
    );
    assert.equal(record?.heldBy, "node-a");
    const restarted = processNamed("node-a");
    await restarted.recover({ metadataIsOurs: false });
    const attached = await processNamed("node-b").attach(runtime, version, "session-2");
    assert.equal(attached.length, 1);
  });

  it("keeps other processes' claims after a restart, unless the metadata is its alone", async () => {
    const elsewhere = processNamed("node-c");
    await elsewhere.attach(runtime, version, "session-3"); // node-c's machine is gone
    const heldBy = async () =>
      (await store.listSessionStorage(runtime.id)).find((entry) => entry.sessionId === "session-3")
        ?.heldBy;
    await processNamed("node-d").recover({ metadataIsOurs: false });
    assert.equal(await heldBy(), "node-c");
    // Its database restored on a new machine: no one else uses it, every claim in it is stale.
    await processNamed("node-d").recover({ metadataIsOurs: true });
    assert.equal(await heldBy(), undefined);
  });
});

function replica(fields: Partial<ReplicaStatus>): ReplicaStatus {
  return {
    generation: 1,
    durableAt: undefined,
    storedBytes: undefined,
    pending: false,
    lastError: undefined,
    lastCheckpointMs: undefined,
    ...fields,
  };
}
