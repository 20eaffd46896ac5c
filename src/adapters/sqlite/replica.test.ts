import assert from "node:assert/strict";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { DatabaseSync } from "node:sqlite";
import { runtimeRecord, storeRuntime, versionRecord } from "../../../test/support/records.ts";
import type { Logger } from "../../core/logger.ts";
import {
  HeldElsewhereError,
  LostOwnershipError,
  type HeadRecord,
} from "../../core/replication/fenced-head.ts";
import { MemoryObjectStore } from "../memory/object-store.ts";
import { MetadataReplica, type MetadataReplicaOptions } from "./replica.ts";
import { SqliteMetadataStore } from "./store.ts";

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "berth-replica-"));
  dirs.push(dir);
  return dir;
}

function recordingLogger(): { log: Logger; lines: { level: string; message: string }[] } {
  const lines: { level: string; message: string }[] = [];
  const record = (level: string) => (message: string) => {
    lines.push({ level, message });
  };
  return { log: { info: record("info"), warn: record("warn"), error: record("error") }, lines };
}

/**
 * A Berth's metadata as startBerth opens it: the head taken (and the database restored), the
 * store opened, the replica started. Rounds run only when a test calls replicateNow.
 */
async function openBerth(
  objectStore: MemoryObjectStore,
  options: Partial<MetadataReplicaOptions> & { holder: string },
) {
  const dir = options.dataDir ?? dataDir();
  const { log, lines } = recordingLogger();
  let clockMs = 0;
  const replica = await MetadataReplica.takeOver({
    objectStore,
    dataDir: dir,
    leaseMs: 3000,
    log,
    pollMs: 3_600_000,
    monotonicNow: () => clockMs,
    ...options,
  });
  const store = new SqliteMetadataStore(join(dir, "berth.db"));
  replica.start();
  return {
    dir,
    replica,
    store,
    lines,
    advanceClock: (ms: number) => (clockMs += ms),
    close: async () => {
      await store.close();
      await replica.close();
    },
  };
}

async function headOf(objectStore: MemoryObjectStore): Promise<HeadRecord & { etag: string }> {
  const found = await objectStore.get("metadata/head", 2 ** 30);
  assert.ok(found !== undefined, "the head exists");
  return { ...(JSON.parse(found.body.toString("utf8")) as HeadRecord), etag: found.etag };
}

/** The runtime ids in the snapshot the head names. */
async function runtimesInCurrentSnapshot(objectStore: MemoryObjectStore): Promise<string[]> {
  const head = await headOf(objectStore);
  const found = await objectStore.get(String(head.payload["key"]), 2 ** 30);
  assert.ok(found !== undefined, "the head's snapshot exists");
  const file = join(dataDir(), "snapshot.db");
  writeFileSync(file, gunzipSync(found.body));
  const database = new DatabaseSync(file, { readOnly: true });
  try {
    return database
      .prepare("SELECT id FROM runtimes ORDER BY id")
      .all()
      .map((row) => String(row["id"]));
  } finally {
    database.close();
  }
}

const snapshotKeys = (objectStore: MemoryObjectStore): string[] =>
  objectStore.keys().filter((key) => key.startsWith("metadata/generations/"));

async function addRuntime(store: SqliteMetadataStore, id: string): Promise<void> {
  const runtime = runtimeRecord(id);
  await storeRuntime(store, runtime, versionRecord(runtime));
}

describe("MetadataReplica", () => {
  it("snapshots the database after a commit, made current by the head", async () => {
    const objectStore = new MemoryObjectStore();
    const berth = await openBerth(objectStore, { holder: "node-a" });
    // A data directory the object store has never seen is uploaded once at start.
    assert.equal((await berth.replica.replicateNow()).durableGeneration, 1);
    assert.deepEqual(await runtimesInCurrentSnapshot(objectStore), []);

    await addRuntime(berth.store, "first-aaaaaaaaaa");
    assert.equal(berth.replica.status().pending, true);
    const status = await berth.replica.replicateNow();
    assert.equal(status.durableGeneration, 2);
    assert.equal(status.pending, false);
    assert.deepEqual(await runtimesInCurrentSnapshot(objectStore), ["first-aaaaaaaaaa"]);
    assert.deepEqual((await headOf(objectStore)).payload["key"], "metadata/generations/2-1.db.gz");
    const recorded = JSON.parse(
      readFileSync(join(berth.dir, "metadata-replica.json"), "utf8"),
    ) as unknown;
    assert.deepEqual(recorded, { objectStore: "memory://", generation: 2 });
    await berth.close();
  });

  it("uploads nothing while nothing changes, but renews the head every third of the lease", async () => {
    const objectStore = new MemoryObjectStore();
    const berth = await openBerth(objectStore, { holder: "node-a", leaseMs: 3000 });
    await berth.replica.replicateNow();
    const keys = objectStore.keys();
    const head = await headOf(objectStore);

    await berth.replica.replicateNow();
    assert.deepEqual(objectStore.keys(), keys);
    assert.equal((await headOf(objectStore)).etag, head.etag, "the head is not rewritten");

    berth.advanceClock(1000);
    await berth.replica.replicateNow();
    const renewed = await headOf(objectStore);
    assert.notEqual(renewed.etag, head.etag, "the head is rewritten: its owner is alive");
    assert.equal(renewed.generation, head.generation);
    assert.deepEqual(objectStore.keys(), keys, "no new snapshot");
    await berth.close();
  });

  it("keeps the current and the previous snapshot only", async () => {
    const objectStore = new MemoryObjectStore();
    const berth = await openBerth(objectStore, { holder: "node-a" });
    for (const id of ["one-aaaaaaaaaa", "two-aaaaaaaaaa", "three-aaaaaaaa"]) {
      await addRuntime(berth.store, id);
      await berth.replica.replicateNow();
    }
    // Generation 1 was the first commit's; 3 is current and 2 the one before.
    assert.deepEqual(snapshotKeys(objectStore), [
      "metadata/generations/2-1.db.gz",
      "metadata/generations/3-1.db.gz",
    ]);
    await berth.close();
  });

  it("never lets a stale owner advance the head, and stops replicating from it", async () => {
    const objectStore = new MemoryObjectStore();
    const stale = await openBerth(objectStore, { holder: "node-a", leaseMs: 200 });
    await stale.replica.replicateNow();
    // node-a stops renewing (stalled, partitioned): after a lease, node-b takes over.
    const taker = await openBerth(objectStore, { holder: "node-b", leaseMs: 200 });
    const head = await headOf(objectStore);
    assert.equal(head.holder, "node-b");
    assert.equal(head.fence, 2);

    await addRuntime(stale.store, "lost-aaaaaaaaaa");
    const status = await stale.replica.replicateNow();
    assert.equal(status.replicating, false);
    assert.equal((await headOf(objectStore)).etag, head.etag, "the head is node-b's still");
    assert.ok(
      stale.lines.some((line) => line.level === "error" && /another Berth/.test(line.message)),
    );
    // node-a's snapshot that never became current is node-b's to delete.
    assert.ok(snapshotKeys(objectStore).includes("metadata/generations/2-1.db.gz"));
    await addRuntime(taker.store, "kept-aaaaaaaaaa");
    await taker.replica.replicateNow();
    assert.deepEqual(snapshotKeys(objectStore), [
      "metadata/generations/1-1.db.gz",
      "metadata/generations/2-2.db.gz",
    ]);
    await stale.close();
    assert.equal(
      (await headOf(objectStore)).holder,
      "node-b",
      "closing did not release node-b's head",
    );
    await taker.close();
  });

  it("tells onLost, once, that another Berth took the metadata over, naming whom it took it from", async () => {
    const objectStore = new MemoryObjectStore();
    const lost: LostOwnershipError[] = [];
    const stale = await openBerth(objectStore, {
      holder: "node-a",
      leaseMs: 200,
      onLost: (error) => lost.push(error),
    });
    await stale.replica.replicateNow();
    assert.equal(stale.replica.tookOverFrom, undefined, "the object store was empty");
    // node-a stalls for a lease (a partition): node-b waits it out and takes over.
    const taker = await openBerth(objectStore, { holder: "node-b", leaseMs: 200 });
    assert.equal(taker.replica.tookOverFrom, "node-a");
    assert.ok(taker.lines.some((line) => /from a node that is gone/.test(line.message)));

    await addRuntime(stale.store, "after-loss-aaaaa");
    await stale.replica.replicateNow();
    await stale.replica.replicateNow();
    assert.equal(lost.length, 1);
    assert.ok(lost[0] instanceof LostOwnershipError);
    assert.match(lost[0].message, /taken over by another Berth process/);
    await stale.close();
    assert.equal(lost.length, 1);
    await taker.close();
  });

  it("names no gone node when it took the metadata from one that stopped cleanly", async () => {
    const objectStore = new MemoryObjectStore();
    const first = await openBerth(objectStore, { holder: "node-a" });
    await first.close();
    const lost: LostOwnershipError[] = [];
    const second = await openBerth(objectStore, {
      holder: "node-b",
      onLost: (error) => lost.push(error),
    });
    assert.equal(second.replica.tookOverFrom, undefined);
    await second.close();
    assert.deepEqual(lost, [], "a clean stop of its own is no loss");
  });

  it("refuses to take the head from a live owner, naming it", async () => {
    const objectStore = new MemoryObjectStore();
    const owner = await openBerth(objectStore, {
      holder: "node-a",
      leaseMs: 300,
      pollMs: 20,
      monotonicNow: () => performance.now(),
    });
    await assert.rejects(
      openBerth(objectStore, { holder: "node-b", leaseMs: 300 }),
      (error: unknown) => error instanceof HeldElsewhereError && /node node-a/.test(error.message),
    );
    await owner.close();
  });

  it("restores the current generation into an empty data directory", async () => {
    const objectStore = new MemoryObjectStore();
    const first = await openBerth(objectStore, { holder: "node-a" });
    await addRuntime(first.store, "restored-aaaaaa");
    await first.close();
    assert.equal((await headOf(objectStore)).holder, null, "a graceful stop lets go of the head");

    const second = await openBerth(objectStore, { holder: "node-b" });
    assert.equal(statSync(join(second.dir, "berth.db")).mode & 0o777, 0o600);
    assert.equal((await second.store.findRuntime("restored-aaaaaa"))?.id, "restored-aaaaaa");
    assert.deepEqual(second.replica.status(), {
      durableGeneration: 1,
      durableAt: second.replica.status().durableAt,
      pending: false,
      lastError: undefined,
      replicating: true,
    });
    await second.close();
  });

  it("replaces an older local database, keeping it beside the restored one", async () => {
    const objectStore = new MemoryObjectStore();
    const dir = dataDir();
    const here = await openBerth(objectStore, { holder: "node-a", dataDir: dir });
    await here.replica.replicateNow();
    await here.close();
    // Another machine takes over and goes on.
    const elsewhere = await openBerth(objectStore, { holder: "node-b" });
    await addRuntime(elsewhere.store, "newer-aaaaaaaaa");
    await elsewhere.close();

    const back = await openBerth(objectStore, { holder: "node-a", dataDir: dir });
    assert.equal((await back.store.findRuntime("newer-aaaaaaaaa"))?.id, "newer-aaaaaaaaa");
    const replaced = readdirSync(dir).filter((name) => name.startsWith("berth.db.replaced-"));
    assert.equal(replaced.length, 1, `the old database is kept: ${readdirSync(dir).join(", ")}`);
    await back.close();
  });

  it("refuses a damaged snapshot: no database in place, the head let go", async () => {
    const objectStore = new MemoryObjectStore();
    const first = await openBerth(objectStore, { holder: "node-a" });
    await first.close();
    const key = String((await headOf(objectStore)).payload["key"]);
    await objectStore.put(key, Buffer.from("not what was stored"));

    const dir = dataDir();
    await assert.rejects(
      MetadataReplica.takeOver({
        objectStore,
        dataDir: dir,
        holder: "node-b",
        leaseMs: 3000,
        log: recordingLogger().log,
      }),
      /generation 1 .* is damaged/,
    );
    assert.equal(existsSync(join(dir, "berth.db")), false);
    assert.equal((await headOf(objectStore)).holder, null);
  });

  it("keeps changes pending while the object store is unreachable, says so once, then catches up", async () => {
    const objectStore = new MemoryObjectStore();
    const berth = await openBerth(objectStore, { holder: "node-a" });
    await berth.replica.replicateNow();
    objectStore.failing = true;
    await addRuntime(berth.store, "waiting-aaaaaaa");
    await berth.replica.replicateNow();
    const status = await berth.replica.replicateNow();
    assert.equal(status.pending, true);
    assert.equal(status.durableGeneration, 1);
    assert.match(status.lastError ?? "", /unreachable/);
    assert.equal(berth.lines.filter((line) => line.level === "warn").length, 1);

    objectStore.failing = false;
    const recovered = await berth.replica.replicateNow();
    assert.equal(recovered.durableGeneration, 2);
    assert.equal(recovered.lastError, undefined);
    assert.deepEqual(await runtimesInCurrentSnapshot(objectStore), ["waiting-aaaaaaa"]);
    assert.ok(berth.lines.some((line) => /again/.test(line.message)));
    await berth.close();
  });

  it("stores the last changes when it closes", async () => {
    const objectStore = new MemoryObjectStore();
    const berth = await openBerth(objectStore, { holder: "node-a" });
    await berth.replica.replicateNow();
    await addRuntime(berth.store, "at-close-aaaaaa");
    await berth.close();
    assert.deepEqual(await runtimesInCurrentSnapshot(objectStore), ["at-close-aaaaaa"]);
    assert.equal((await headOf(objectStore)).generation, 2);
  });
});
