// Session storage replicated to an object store (issue 16), at the VolumeStore level, against real
// parts: Ceph's RADOS Gateway on loopback, XFS reflink pools, loop-mounted ext4 volumes, as root.
// Each "machine" is a ReplicatedVolumes with its own pool (its local disk) and node id, all of
// them sharing the one object store, as Berth processes on different hosts would.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, rmdirSync, type Stats } from "node:fs";
import { lstat, readdir, readFile, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, afterEach, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import { unmountAllUnder } from "../src/adapters/bubblewrap/mounts.ts";
import { mountPointsUnder } from "../src/adapters/host/mount-table.ts";
import { S3ObjectStore } from "../src/adapters/s3/object-store.ts";
import { LoopDeviceTable } from "../src/adapters/volumes/loop-devices.ts";
import { LoopVolumes } from "../src/adapters/volumes/loop-volumes.ts";
import { ReflinkPool } from "../src/adapters/volumes/reflink-pool.ts";
import {
  ReplicatedVolumes,
  type ReplicationSettings,
} from "../src/adapters/volumes/replicated-volumes.ts";
import { runCommand } from "../src/adapters/volumes/run-command.ts";
import type { LogFields, Logger } from "../src/core/logger.ts";
import type { ObjectInfo, ObjectStore, WriteCondition } from "../src/core/object-store.ts";
import { HeldElsewhereError, type HeadRecord } from "../src/core/replication/fenced-head.ts";
import {
  chunkBytes,
  decodeManifest,
  volumeKeys,
  type Manifest,
} from "../src/core/replication/manifest.ts";
import { UnreadableVolumeError, type ReplicaStatus } from "../src/core/session-storage.ts";
import { hostSuite, removeDir } from "./support/berth.ts";
import { cephMissing, startCephS3, type CephS3 } from "./support/ceph-s3.ts";

const run = promisify(execFile);
const mebibyte = 1024 * 1024;
const hostDirectory = ["host-directory"] as const;
/** The sandbox user the volumes belong to, and that writes the trees below. */
const sandboxUid = 1000;

/**
 * One machine's view of the object store: counts what it downloads and uploads, and fails its
 * requests on demand (a network partition; a process that dies at a chosen point).
 */
class WatchedStore implements ObjectStore {
  readonly location: string;
  private readonly inner: ObjectStore;
  packGets = 0;
  putBytes = 0;
  /** Keys written (successfully), in order. */
  readonly written: string[] = [];
  /** Every request fails, as if the store could not be reached. */
  unreachable = false;
  /** Checked before each write: true makes the store unreachable from then on (a death). */
  dieBeforeWriting: ((key: string) => boolean) | undefined;

  constructor(inner: ObjectStore) {
    this.inner = inner;
    this.location = inner.location;
  }

  async get(key: string, maxBytes: number) {
    this.reach();
    if (key.includes("/packs/")) this.packGets += 1;
    return this.inner.get(key, maxBytes);
  }

  async put(key: string, body: Uint8Array, condition?: WriteCondition) {
    if (this.dieBeforeWriting?.(key) === true) this.unreachable = true;
    this.reach();
    const answer = await this.inner.put(key, body, condition);
    this.putBytes += body.byteLength;
    this.written.push(key);
    return answer;
  }

  async head(key: string) {
    this.reach();
    return this.inner.head(key);
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    this.reach();
    yield* this.inner.list(prefix);
  }

  async delete(keys: readonly string[]) {
    this.reach();
    return this.inner.delete(keys);
  }

  private reach(): void {
    if (this.unreachable) throw new Error("object store: unreachable (partitioned by the test)");
  }
}

/** Log lines kept for the test to look at. */
class KeptLog implements Logger {
  readonly lines: { level: string; message: string; fields: LogFields }[] = [];
  info(message: string, fields: LogFields = {}): void {
    this.lines.push({ level: "info", message, fields });
  }
  warn(message: string, fields: LogFields = {}): void {
    this.lines.push({ level: "warn", message, fields });
  }
  error(message: string, fields: LogFields = {}): void {
    this.lines.push({ level: "error", message, fields });
  }
  find(level: string, message: RegExp) {
    return this.lines.find((line) => line.level === level && message.test(line.message));
  }
}

interface Machine {
  /** Its local disk: the data dir its pool and volumes are in. */
  dir: string;
  holder: string;
  volumes: ReplicatedVolumes;
  local: LoopVolumes;
  store: WatchedStore;
  log: KeptLog;
}

/** Settings for machines that checkpoint only when a volume is detached (within a test's life). */
const onDetachOnly: ReplicationSettings = { checkpointMs: 600_000, durableWaitMs: 60_000 };

describe("session volumes replicated to an object store", cephSuite(), () => {
  let ceph: CephS3 | undefined;
  let bucket = "";
  /** What each test opened, to let go of even when it fails midway. */
  let opened: { dir: string; volumes?: ReplicatedVolumes }[] = [];

  before(async () => {
    ceph = await startCephS3();
    bucket = await ceph.bucket("berth-volumes");
  });
  after(async () => {
    await ceph?.stop();
  });
  afterEach(async () => {
    // The gateway back for the next test, whatever this one left.
    if (gatewayStopped) await startGateway();
    for (const machine of opened) await dispose(machine);
    opened = [];
  });

  const theCeph = (): CephS3 => ceph ?? assert.fail("Ceph starts in before()");
  let gatewayStopped = false;
  const stopGateway = async (): Promise<void> => {
    gatewayStopped = true;
    await theCeph().stopGateway();
  };
  const startGateway = async (): Promise<void> => {
    await theCeph().startGateway();
    gatewayStopped = false;
  };

  /** The store of one test: its own prefix in the bucket, as each test's Berth would have. */
  const storeFor = (test: string): S3ObjectStore =>
    new S3ObjectStore(theCeph().connection(`s3://${bucket}/${test}`));

  /** A machine with its own local disk (an empty data dir) and node id, on `store`. */
  const machine = async (
    name: string,
    store: ObjectStore,
    settings: ReplicationSettings = onDetachOnly,
    restartOf?: Machine,
  ): Promise<Machine> => {
    const dir = restartOf?.dir ?? mkdtempSync(join(tmpdir(), `berth-test-replicated-${name}-`));
    const record: (typeof opened)[number] = { dir };
    opened.push(record);
    const pool = await ReflinkPool.open(dir, { initialBytes: 512 * mebibyte });
    const local = new LoopVolumes(join(pool.path, "volumes"), sandboxUid);
    const watched = new WatchedStore(store);
    const log = new KeptLog();
    // A restarted machine is the same node: its data dir's node id.
    const holder = restartOf?.holder ?? `node-${name}-${randomUUID()}`;
    const volumes = new ReplicatedVolumes({
      local,
      pool,
      store: watched,
      holder,
      settings,
      log,
    });
    record.volumes = volumes;
    await volumes.recover();
    return { dir, volumes, local, store: watched, log, holder };
  };

  it("restores a volume on another machine as the exact tree its sandbox user wrote", async (t) => {
    const store = storeFor("exact-tree");
    const [a, b] = [await machine("a", store), await machine("b", store)];
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    const written = await treeDigest(onA.path);
    assertTreeHasEverything(written);
    await a.volumes.detach(volumeId);
    assert.equal((await replicaStatus(a, volumeId)).pending, false);

    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), written);
    await assertGitHistoryWhole(join(onB.path, "repo"));
    reportRestore(t, b);

    // Edited on B: A's local copy is now older than the store's, and is not used.
    await asSandboxUser(onB.path, "echo 'edited on B' >> README.md; rm src/secret.txt");
    const edited = await treeDigest(onB.path);
    await b.volumes.detach(volumeId);
    const backOnA = await a.volumes.attach(volumeId, hostDirectory);
    assert.ok(a.store.packGets > 0, "A downloads the newer generation");
    assert.deepEqual(await treeDigest(backOnA.path), edited);
    await a.volumes.detach(volumeId);
  });

  it("uses the generation a machine holds with no download, and uploads a one-file edit in kilobytes", async (t) => {
    const store = storeFor("incremental");
    const [a, b] = [await machine("a", store), await machine("b", store)];
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 160 * mebibyte);
    const first = await a.volumes.attach(volumeId, hostDirectory);
    for (let index = 0; index < 96; index += 1) {
      await writeFile(join(first.path, `data-${index}.bin`), randomBytes(mebibyte));
    }
    await writeFile(join(first.path, "notes.txt"), "the first version\n".repeat(100));
    await a.volumes.detach(volumeId);
    const full = await replicaStatus(a, volumeId);
    t.diagnostic(`first generation: ${megabytes(full.storedBytes ?? 0)} MB stored`);

    a.store.putBytes = 0;
    const again = await a.volumes.attach(volumeId, hostDirectory);
    assert.equal(a.store.packGets, 0, "the machine holding the generation downloads nothing");
    await writeFile(join(again.path, "notes.txt"), "the second version\n");
    const written = await treeDigest(again.path);
    const stopping = performance.now();
    await a.volumes.detach(volumeId);
    const stopMs = Math.round(performance.now() - stopping);
    const edit = await replicaStatus(a, volumeId);
    assert.equal(edit.generation, full.generation + 1);
    assert.ok((edit.storedBytes ?? Infinity) < mebibyte, `${edit.storedBytes} bytes stored`);
    assert.ok(a.store.putBytes < mebibyte, `${a.store.putBytes} bytes uploaded`);
    assert.equal(a.store.packGets, 0);
    // Only the chunks the edit touched are somewhere new (one new pack); the rest keep their place.
    const [before, after] = [
      await storedManifest(store, volumeId, full.generation),
      await storedManifest(store, volumeId, edit.generation),
    ];
    const moved = [...after.chunks].filter(([index, ref]) => {
      const old = before.chunks.get(index);
      return old?.pack !== ref.pack || old.offset !== ref.offset;
    });
    assert.ok(moved.length > 0 && moved.length < 16, `${moved.length} chunks uploaded`);
    assert.equal(new Set(moved.map(([, ref]) => ref.pack)).size, 1);
    t.diagnostic(
      `one-file edit: ${moved.length} chunks, ${edit.storedBytes} bytes stored, ${a.store.putBytes} bytes uploaded in all, stop until durable ${stopMs} ms`,
    );

    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.ok(b.store.packGets > 0);
    assert.deepEqual(await treeDigest(onB.path), written);
    reportRestore(t, b);
    await b.volumes.detach(volumeId);
  });

  it("keeps the previous generation current and whole when Berth dies before moving the head", async () => {
    const store = storeFor("crash");
    const a = await machine("a", store, { checkpointMs: 1000, durableWaitMs: 500 });
    // B waits out A's lease (three of its own checkpoint intervals) before taking the volume.
    const b = await machine("b", store, { checkpointMs: 300, durableWaitMs: 30_000 });
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const first = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(first.path);
    await a.volumes.detach(volumeId);
    const durable = await replicaStatus(a, volumeId);

    const second = await a.volumes.attach(volumeId, hostDirectory);
    const { fence } = await storedHead(store, volumeId);
    const before = await treeDigest(second.path);
    // Dies as the head is about to move, at the next checkpoint (its own timer's or the
    // detach's): every pack and the manifest are stored by then.
    a.store.written.length = 0;
    a.store.dieBeforeWriting = (key) =>
      key.endsWith("/head") && a.store.written.some((written) => written.includes("/generations/"));
    await asSandboxUser(second.path, "rm -r src; head -c 2000000 /dev/urandom > new.bin");
    await a.volumes.detach(volumeId);
    assert.equal(a.store.unreachable, true, "A died at the head's write");
    assert.ok(
      a.store.written.includes(volumeKeys.generation(volumeId, durable.generation + 1, fence)),
    );
    assert.ok(a.store.written.some((key) => key.includes("/packs/")));

    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), before);
    assert.equal((await replicaStatus(b, volumeId)).generation, durable.generation);
    await assertGitHistoryWhole(join(onB.path, "repo"));
    await b.volumes.detach(volumeId);
    // B's generation after the one A never made current: A's orphaned manifest is collected.
    const manifests = await keysUnder(store, volumeKeys.generations(volumeId));
    assert.deepEqual(manifests, [
      volumeKeys.generation(volumeId, durable.generation, fence - 1),
      volumeKeys.generation(volumeId, durable.generation + 1, fence + 1),
    ]);
  });

  it("keeps two machines from both owning a volume, and a partitioned owner from moving it", async () => {
    const store = storeFor("fencing");
    const settings = { checkpointMs: 300, durableWaitMs: 1000 };
    const [a, b] = [await machine("a", store, settings), await machine("b", store, settings)];
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeFile(join(onA.path, "from-a.txt"), "written on A\n");
    await checkpointedSince(a, volumeId, onA.path);

    // A checkpoints (or renews) every 300 ms: alive, so B is refused after watching a lease.
    await assert.rejects(b.volumes.attach(volumeId, hostDirectory), HeldElsewhereError);
    assert.equal(existsSync(b.local.imagePath(volumeId)), false);

    // A cut off from the store: its sandbox goes on writing, its head stops changing.
    a.store.unreachable = true;
    await writeFile(join(onA.path, "after-partition.txt"), "only on A\n");
    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.equal(await readFile(join(onB.path, "from-a.txt"), "utf8"), "written on A\n");
    assert.equal(existsSync(join(onB.path, "after-partition.txt")), false);
    await writeFile(join(onB.path, "from-b.txt"), "written on B\n");
    await checkpointedSince(b, volumeId, onB.path);
    const taken = await storedHead(store, volumeId);

    // A's store heals: its next checkpoint cannot move the head, and says why.
    a.store.unreachable = false;
    await until(
      async () => /taken over/.test((await replicaStatus(a, volumeId)).lastError ?? ""),
      "A reports that it lost the volume",
    );
    const head = await storedHead(store, volumeId);
    assert.equal(head.holder, taken.holder);
    assert.equal(head.fence, taken.fence);
    assert.ok(head.generation >= taken.generation);
    assert.ok((await replicaStatus(a, volumeId)).generation < taken.generation);
    assert.match(String(head.payload["manifest"]), new RegExp(`-${taken.fence}$`));

    // B's tree, as B leaves it, is what any machine restores: A's stale one included.
    await writeFile(join(onB.path, "last.txt"), "B's last word\n");
    const onBAtTheEnd = await treeDigest(onB.path);
    await b.volumes.detach(volumeId);
    await a.volumes.detach(volumeId);
    assert.ok(a.log.find("error", /not durable in the object store: another Berth process owns/));
    const back = await a.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(back.path), onBAtTheEnd);
    await a.volumes.detach(volumeId);
  });

  it("never uploads, after a restart, a local copy another machine's newer generations superseded", async () => {
    const store = storeFor("superseded");
    const settings = { checkpointMs: 300, durableWaitMs: 5000 };
    const [a, b] = [await machine("a", store, settings), await machine("b", store, settings)];
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeFile(join(onA.path, "shared.txt"), "before the partition\n");
    await checkpointedSince(a, volumeId, onA.path);
    // A is cut off and goes on writing; B takes the volume, writes and stops cleanly.
    a.store.unreachable = true;
    await writeFile(join(onA.path, "only-on-a.txt"), "written while cut off\n");
    const onB = await b.volumes.attach(volumeId, hostDirectory);
    await writeFile(join(onB.path, "from-b.txt"), "written on B\n");
    const onBAtTheEnd = await treeDigest(onB.path);
    await b.volumes.detach(volumeId);
    const bsHead = await storedHead(store, volumeId);
    // A loses power with the volume attached, and restarts on the same disk and node id.
    await a.local.detach(volumeId);
    await a.volumes.close();
    const restarted = await machine("a", store, settings, a);
    await until(
      async () => !(await replicaStatus(restarted, volumeId)).pending,
      "A's restart settles what its local copy is",
    );
    const head = await storedHead(store, volumeId);
    assert.equal(head.generation, bsHead.generation, "A uploaded nothing over B's generations");
    assert.equal(head.payload["manifest"], bsHead.payload["manifest"]);
    // Any machine, A included, gets B's tree.
    const back = await restarted.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(back.path), onBAtTheEnd);
    await restarted.volumes.detach(volumeId);
  });

  it("uploads the whole volume, not what changed, to a store that holds no generation of it", async () => {
    const first = storeFor("first-prefix");
    const a = await machine("a", first);
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    await a.volumes.detach(volumeId);
    // The same machine pointed at a new, empty prefix (its bucket lost, or moved).
    await a.volumes.close();
    const second = storeFor("second-prefix");
    const moved = await machine("a", second, onDetachOnly, a);
    const again = await moved.volumes.attach(volumeId, hostDirectory);
    await writeFile(join(again.path, "one-more.txt"), "after the move\n");
    const tree = await treeDigest(again.path);
    await moved.volumes.detach(volumeId);
    const elsewhere = await machine("c", second);
    const onC = await elsewhere.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onC.path), tree);
    await assertGitHistoryWhole(join(onC.path, "repo"));
    await elsewhere.volumes.detach(volumeId);
  });

  it("never collects a pack a kept generation references, and collects every other", async () => {
    const store = storeFor("garbage");
    const settings = { checkpointMs: 200, durableWaitMs: 30_000 };
    const [a, b] = [await machine("a", store, settings), await machine("b", store, settings)];
    // Packs younger than two leases are never collected; a lease is three checkpoint intervals.
    const graceMs = 2 * 3 * settings.checkpointMs;
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    // Files written and deleted between checkpoints: chunks, and so packs, go out of use.
    for (let round = 0; round < 24; round += 1) {
      const generation = (await replicaStatus(a, volumeId)).generation;
      await writeFile(
        join(onA.path, `round-${round}.bin`),
        randomBytes(64 * 1024 * (1 + (round % 5))),
      );
      if (round >= 3) await rm(join(onA.path, `round-${round - 3}.bin`));
      await until(
        async () => (await replicaStatus(a, volumeId)).generation > generation,
        `round ${round} checkpointed`,
      );
    }
    await until(
      () => a.log.find("info", /session storage packs collected/) !== undefined,
      "a collection while attached",
    );
    await assertEveryReferencedPackStored(store, volumeId);
    const written = await treeDigest(onA.path);
    await a.volumes.detach(volumeId);
    await assertEveryReferencedPackStored(store, volumeId);

    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), written);
    await b.volumes.detach(volumeId);
    // An attach collects too: once every pack uploaded is older than the grace, none is left
    // that no kept generation references.
    await until(async () => {
      const before = Date.now() - graceMs;
      for await (const pack of store.list(volumeKeys.packs(volumeId))) {
        if (pack.lastModified.getTime() >= before) return false;
      }
      return true;
    }, "the grace passing on every pack");
    const collectedFrom = Date.now();
    await b.volumes.attach(volumeId, hostDirectory);
    await b.volumes.detach(volumeId);
    // What the attach's collection left unreferenced can only be what was younger than the
    // grace then (a generation written since, superseded): every older pack is referenced.
    const referenced = await assertEveryReferencedPackStored(store, volumeId);
    for await (const pack of store.list(volumeKeys.packs(volumeId))) {
      if (referenced.has(pack.key)) continue;
      // One second of slack: the store's clock rounds to seconds.
      assert.ok(
        pack.lastModified.getTime() >= collectedFrom - graceMs - 1000,
        `${pack.key} is unreferenced and was older than the grace when the attach collected`,
      );
    }
  });

  it("keeps a volume working while the gateway is stopped, and catches up once it is back", async () => {
    const store = storeFor("gateway-stopped");
    const a = await machine("a", store, { checkpointMs: 300, durableWaitMs: 30_000 });
    const b = await machine("b", store);
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    await checkpointedSince(a, volumeId, onA.path);

    await stopGateway();
    await asSandboxUser(onA.path, "head -c 3000000 /dev/urandom > during-outage.bin");
    await until(async () => {
      const status = await replicaStatus(a, volumeId);
      return status.lastError !== undefined && status.pending;
    }, "a failed checkpoint reported");
    assert.ok(a.log.find("warn", /checkpoint failed; retrying with backoff/));

    await startGateway();
    await until(
      async () => (await replicaStatus(a, volumeId)).lastError === undefined,
      "a checkpoint succeeding again",
      60_000,
    );
    const written = await treeDigest(onA.path);
    await a.volumes.detach(volumeId);
    assert.equal((await replicaStatus(a, volumeId)).pending, false);
    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), written);
    await b.volumes.detach(volumeId);
  });

  it("stops within the bounded wait while the store is down, keeps the copy and uploads it later", async () => {
    const store = storeFor("stop-while-down");
    const a = await machine("a", store, { checkpointMs: 300, durableWaitMs: 500 });
    const b = await machine("b", store);
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    await checkpointedSince(a, volumeId, onA.path);

    await stopGateway();
    await asSandboxUser(onA.path, "echo 'written during the outage' > outage.txt; rm -r empty");
    const written = await treeDigest(onA.path);
    await a.volumes.detach(volumeId);
    // Returned with the gateway still down: not durable, said loudly, the local copy kept.
    assert.ok(a.log.find("error", /not durable in the object store yet/));
    const stopped = await replicaStatus(a, volumeId);
    assert.equal(stopped.pending, true);
    assert.notEqual(stopped.lastError, undefined);
    assert.equal(existsSync(a.local.imagePath(volumeId)), true);

    await startGateway();
    await until(
      async () => !(await replicaStatus(a, volumeId)).pending,
      "the background upload finishing",
      60_000,
    );
    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), written);
    await b.volumes.detach(volumeId);
  });

  it("refuses to attach a volume whose stored packs are corrupt, truncated or missing, mounting nothing", async () => {
    const store = storeFor("corrupt");
    const [a, b] = [await machine("a", store), await machine("b", store)];
    const volumeId = randomUUID();
    await a.volumes.create(volumeId, 128 * mebibyte);
    const onA = await a.volumes.attach(volumeId, hostDirectory);
    await writeSandboxTree(onA.path);
    const written = await treeDigest(onA.path);
    await a.volumes.detach(volumeId);

    // A chunk of src/blob.bin's random bytes: stored raw, so a flipped byte still decompresses.
    const manifest = await storedManifest(
      store,
      volumeId,
      (await replicaStatus(a, volumeId)).generation,
    );
    const ref = [...manifest.chunks.values()].reduce((most, each) =>
      each.length > most.length ? each : most,
    );
    assert.ok(ref.length > chunkBytes, "an incompressible chunk is stored");
    const pack = volumeKeys.pack(volumeId, ref.pack);
    const original = (await store.get(pack, 2 ** 30)) ?? assert.fail("the pack is stored");
    const middle = ref.offset + Math.floor(ref.length / 2);
    const flipped = Buffer.from(original.body);
    flipped.fill(~(flipped[middle] ?? 0) & 0xff, middle, middle + 1);
    const damages: [string, () => Promise<unknown>, RegExp][] = [
      [
        "other bytes in one chunk's range",
        () => store.put(pack, flipped),
        /does not hold the bytes its hash names/,
      ],
      [
        "not zstd in one chunk's range",
        () => store.put(pack, Buffer.from(original.body).fill(0, ref.offset, ref.offset + 4)),
        /is not readable zstd/,
      ],
      [
        "truncated",
        () => store.put(pack, original.body.subarray(0, ref.offset + ref.length - 1)),
        /is shorter than its manifest says/,
      ],
      ["missing", () => store.delete([pack]), /is missing from s3:\/\//],
    ];
    for (const [damage, doDamage, message] of damages) {
      await doDamage();
      await assert.rejects(
        b.volumes.attach(volumeId, hostDirectory),
        (error: unknown) => error instanceof UnreadableVolumeError && message.test(error.message),
        damage,
      );
      assert.deepEqual(mountedUnder(b), [], `${damage}: nothing mounted`);
      assert.equal(existsSync(b.local.imagePath(volumeId)), false, `${damage}: no image kept`);
      await store.put(pack, original.body);
    }
    // The same pack put back: the volume restores, so the pack alone was what failed.
    const onB = await b.volumes.attach(volumeId, hostDirectory);
    assert.deepEqual(await treeDigest(onB.path), written);
    await b.volumes.detach(volumeId);
  });

  it("deletes every object of a removed volume from the store, and nothing of another", async () => {
    const store = storeFor("remove");
    const a = await machine("a", store);
    const [removed, kept] = [randomUUID(), randomUUID()];
    for (const volumeId of [removed, kept]) {
      await a.volumes.create(volumeId, 128 * mebibyte);
      const handle = await a.volumes.attach(volumeId, hostDirectory);
      await writeFile(join(handle.path, "file.bin"), randomBytes(mebibyte));
      await a.volumes.detach(volumeId);
    }
    const keptObjects = await keysUnder(store, volumeKeys.prefix(kept));
    assert.ok((await keysUnder(store, volumeKeys.prefix(removed))).length > 2);

    await a.volumes.remove(removed);
    assert.deepEqual(await keysUnder(store, volumeKeys.prefix(removed)), []);
    assert.deepEqual(await keysUnder(store, volumeKeys.prefix(kept)), keptObjects);
    assert.equal(existsSync(a.local.imagePath(removed)), false);
  });
});

/** Skipped, saying why, without root or without Ceph. */
function cephSuite(): { skip?: string } {
  const missing = cephMissing();
  return missing === undefined ? hostSuite : { skip: missing };
}

/** Lets go of a machine whatever state a test left it in: its mounts, its pool, its folder. */
async function dispose(machine: { dir: string; volumes?: ReplicatedVolumes }): Promise<void> {
  // Stops its timers and background uploads; unmounts the pool if no volume is left in it.
  await machine.volumes?.close().catch(() => undefined);
  unmountAllUnder(machine.dir);
  for (const device of await new LoopDeviceTable().backing(join(machine.dir, "pool.xfs"))) {
    await runCommand("losetup", ["--detach", device]).catch(() => undefined);
  }
  removeDir(machine.dir);
}

function mountedUnder(machine: Machine): string[] {
  return mountPointsUnder(machine.dir).filter((point) => point !== join(machine.dir, "pool"));
}

async function replicaStatus(machine: Machine, volumeId: string): Promise<ReplicaStatus> {
  return (await machine.volumes.usage(volumeId)).replica ?? assert.fail("no replica status");
}

/** Polls `condition` every 25 ms until it holds; fails after `timeoutMs`. */
async function until(
  condition: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await delay(25);
  }
}

/**
 * Waits for a checkpoint of an attached volume that started after this call (the machine takes
 * them on its own timer): one under way now may have cloned the volume before the last write.
 * A second generation after the current one is such a checkpoint; a marker file changed in
 * between makes sure there is one.
 */
async function checkpointedSince(machine: Machine, volumeId: string, path: string) {
  const start = (await replicaStatus(machine, volumeId)).generation;
  await until(
    async () => (await replicaStatus(machine, volumeId)).generation > start,
    "a checkpoint",
  );
  await writeFile(join(path, ".checkpoint-marker"), randomUUID());
  await until(
    async () => (await replicaStatus(machine, volumeId)).generation > start + 1,
    "a second checkpoint",
  );
}

async function keysUnder(store: ObjectStore, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const object of store.list(prefix)) keys.push(object.key);
  return keys;
}

async function storedHead(store: ObjectStore, volumeId: string): Promise<HeadRecord> {
  const found =
    (await store.get(volumeKeys.head(volumeId), 2 ** 30)) ?? assert.fail("no head stored");
  return JSON.parse(found.body.toString("utf8")) as HeadRecord;
}

/** The manifest of one generation, whatever fence wrote it. */
async function storedManifest(
  store: ObjectStore,
  volumeId: string,
  generation: number,
): Promise<Manifest> {
  const prefix = volumeKeys.generation(volumeId, generation, 0).replace(/0$/, "");
  const [key] = await keysUnder(store, prefix);
  const found =
    (key === undefined ? undefined : await store.get(key, 2 ** 30)) ?? assert.fail(`no ${prefix}*`);
  return decodeManifest(found.body, prefix);
}

/**
 * Checks that every pack a manifest in the store references is stored; returns their keys. The
 * manifests in the store are the kept ones: collection deletes the others first.
 */
async function assertEveryReferencedPackStored(
  store: ObjectStore,
  volumeId: string,
): Promise<Set<string>> {
  const stored = new Set(await keysUnder(store, volumeKeys.packs(volumeId)));
  const referenced = new Set<string>();
  for (const key of await keysUnder(store, volumeKeys.generations(volumeId))) {
    const found = (await store.get(key, 2 ** 30)) ?? assert.fail(`${key} vanished`);
    for (const ref of decodeManifest(found.body, key).chunks.values()) {
      const pack = volumeKeys.pack(volumeId, ref.pack);
      assert.ok(stored.has(pack), `${pack}, referenced by ${key}, is not stored`);
      referenced.add(pack);
    }
  }
  return referenced;
}

/** Reports the last restore's speed (from its log line), for the numbers in the test's output. */
function reportRestore(t: { diagnostic(message: string): void }, machine: Machine): void {
  const line = machine.log.find("info", /restored from the object store/);
  const chunks = Number(line?.fields["chunks"]);
  const ms = Number(line?.fields["ms"]);
  const bytes = chunks * chunkBytes;
  t.diagnostic(
    `restore: ${megabytes(bytes)} MB in ${ms} ms (${megabytes((bytes / ms) * 1000)} MB/s), ${machine.store.packGets} packs downloaded`,
  );
}

function megabytes(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}

/**
 * Runs a shell script as the sandbox user in the volume mounted at `path`. Berth mounts volumes
 * in root-only folders, and the shell and git look their working folder up by path: the script
 * runs in a bind mount of the volume the user can reach, as a sandbox sees it at its own mount.
 */
async function asSandboxUser(path: string, script: string): Promise<void> {
  const view = mkdtempSync(join(tmpdir(), "berth-test-view-"));
  chmodSync(view, 0o755);
  await runCommand("mount", ["--bind", path, view]);
  try {
    await runScript(view, script);
  } finally {
    await runCommand("umount", [view]);
    rmdirSync(view);
  }
}

async function runScript(cwd: string, script: string): Promise<void> {
  const user = [`--reuid=${sandboxUid}`, `--regid=${sandboxUid}`, "--clear-groups"];
  await run("setpriv", [...user, "sh", "-euc", script], {
    cwd,
    env: {
      PATH: "/usr/bin:/bin",
      HOME: "/nonexistent",
      GIT_CONFIG_NOSYSTEM: "1",
      GIT_AUTHOR_NAME: "Agent",
      GIT_AUTHOR_EMAIL: "agent@example.com",
      GIT_COMMITTER_NAME: "Agent",
      GIT_COMMITTER_EMAIL: "agent@example.com",
    },
  }).catch((error: unknown) => {
    const stderr = (error as { stderr?: string }).stderr ?? "";
    throw new Error(`the sandbox user's script failed: ${stderr}`, { cause: error });
  });
}

/**
 * What an agent leaves that root would not: every file its sandbox user's, modes 0600 to 2775,
 * hard links, symbolic links (relative, absolute, dangling), an empty folder, a FIFO, user
 * xattrs, and a git repository with a history.
 */
async function writeSandboxTree(path: string): Promise<void> {
  await asSandboxUser(
    path,
    `
    umask 022
    mkdir -p src/deep/er empty shared repo
    printf 'hello\\n' > README.md
    head -c 300000 /dev/urandom > src/blob.bin
    printf 'secret\\n' > src/secret.txt && chmod 0600 src/secret.txt
    printf '#!/bin/sh\\necho hi\\n' > src/run.sh && chmod 0755 src/run.sh
    printf 'read only\\n' > src/readonly.txt && chmod 0444 src/readonly.txt
    chmod 2775 shared && printf 'in a setgid folder\\n' > shared/inherits.txt
    ln src/blob.bin src/deep/er/blob-link.bin
    ln src/blob.bin shared/blob-again.bin
    ln -s ../README.md src/readme-link
    ln -s /etc/hostname absolute-link
    ln -s does/not/exist dangling-link
    mkfifo pipe
    /usr/bin/python3 -c '
import os
os.setxattr("README.md", "user.origin", b"agent")
os.setxattr("src", "user.kind", b"folder")
os.setxattr("src/blob.bin", "user.binary", bytes(range(256)))
'
    cd repo && git init -q
    for commit in 1 2 3; do
      echo "line $commit" >> history.txt
      git add history.txt && git commit -qm "commit $commit"
    done
    `,
  );
}

interface TreeEntry {
  path: string;
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  /** Every path of a file with several hard links, this one included. */
  hardLinks?: string[];
  xattrs?: Record<string, string>;
}

/**
 * Everything a restore must keep of a tree, entry by entry in path order: type, mode, owner,
 * size and content hash, link target, hard-link groups, user xattrs.
 */
async function treeDigest(root: string): Promise<TreeEntry[]> {
  const entries: TreeEntry[] = [];
  const byInode = new Map<number, string[]>();
  const visit = async (relative: string): Promise<void> => {
    const path = join(root, relative);
    const stats = await lstat(path);
    const entry: TreeEntry = {
      path: relative,
      type: typeOf(stats),
      mode: (stats.mode & 0o7777).toString(8),
      uid: stats.uid,
      gid: stats.gid,
    };
    if (stats.isFile()) {
      entry.size = stats.size;
      entry.sha256 = createHash("sha256")
        .update(await readFile(path))
        .digest("hex");
      if (stats.nlink > 1) byInode.set(stats.ino, [...(byInode.get(stats.ino) ?? []), relative]);
    }
    if (stats.isSymbolicLink()) entry.target = await readlink(path);
    entries.push(entry);
    if (!stats.isDirectory()) return;
    for (const name of (await readdir(path)).sort()) {
      await visit(relative === "." ? name : join(relative, name));
    }
  };
  await visit(".");
  const xattrs = await userXattrs(
    root,
    entries.filter((entry) => entry.type !== "symlink").map((entry) => entry.path),
  );
  for (const entry of entries) {
    const group = [...byInode.values()].find((paths) => paths.includes(entry.path));
    if (group !== undefined) entry.hardLinks = [...group].sort();
    const found = xattrs[entry.path];
    if (found !== undefined) entry.xattrs = found;
  }
  return entries;
}

function typeOf(stats: Stats): string {
  if (stats.isFile()) return "file";
  if (stats.isDirectory()) return "directory";
  if (stats.isSymbolicLink()) return "symlink";
  if (stats.isFIFO()) return "fifo";
  if (stats.isSocket()) return "socket";
  return "device";
}

/** The user.* xattrs of each path (hex values), read with Python: Node has no xattr calls. */
async function userXattrs(
  root: string,
  paths: string[],
): Promise<Record<string, Record<string, string>>> {
  const script = `
import json, os, sys
found = {}
for path in sys.argv[1:]:
    names = sorted(n for n in os.listxattr(path, follow_symlinks=False) if n.startswith("user."))
    if names:
        found[path] = {n: os.getxattr(path, n, follow_symlinks=False).hex() for n in names}
print(json.dumps(found))
`;
  const { stdout } = await run("/usr/bin/python3", ["-c", script, ...paths], { cwd: root });
  return JSON.parse(stdout) as Record<string, Record<string, string>>;
}

/** The tree writeSandboxTree made holds what it should (so comparing two of them means much). */
function assertTreeHasEverything(tree: TreeEntry[]): void {
  const entry = (path: string) =>
    tree.find((candidate) => candidate.path === path) ?? assert.fail(`${path} is missing`);
  assert.ok(tree.every((each) => each.uid === sandboxUid && each.gid === sandboxUid));
  assert.equal(entry("src/secret.txt").mode, "600");
  assert.equal(entry("src/run.sh").mode, "755");
  assert.equal(entry("shared").mode, "2775");
  assert.equal(entry("pipe").type, "fifo");
  assert.equal(entry("empty").type, "directory");
  assert.equal(entry("dangling-link").target, "does/not/exist");
  assert.equal(entry("absolute-link").target, "/etc/hostname");
  assert.deepEqual(entry("src/blob.bin").hardLinks, [
    "shared/blob-again.bin",
    "src/blob.bin",
    "src/deep/er/blob-link.bin",
  ]);
  assert.equal(entry("README.md").xattrs?.["user.origin"], Buffer.from("agent").toString("hex"));
  assert.equal(Object.keys(entry("src/blob.bin").xattrs ?? {}).length, 1);
}

/** git fsck finds nothing wrong, and the three commits are there (read as root: safe.directory). */
async function assertGitHistoryWhole(repo: string): Promise<void> {
  const git = (...args: string[]) => run("git", ["-c", "safe.directory=*", "-C", repo, ...args]);
  const fsck = await git("fsck", "--full", "--strict");
  assert.equal(fsck.stdout, "");
  assert.equal(fsck.stderr, "");
  const log = await git("log", "--format=%s");
  assert.equal(log.stdout, "commit 3\ncommit 2\ncommit 1\n");
}
