// The metadata database kept in the object store (src/adapters/sqlite/replica.ts): how big a
// snapshot of a database with BENCH_RUNTIMES runtimes is (raw and gzipped), how long one takes
// after a one-row change (VACUUM INTO, gzip, PUT, head advance, old snapshots deleted), how long
// VACUUM INTO alone holds the event loop, and how long restoring it into an empty data directory
// takes. Baseline in the same run: one plain PUT of the same gzipped bytes. Against a local Ceph
// RGW (test/support/ceph-s3.ts), as root. Prints JSON. Settings: BENCH_RUNTIMES (default 100),
// BENCH_SAMPLES (default 30).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { S3ObjectStore } from "../src/adapters/s3/object-store.ts";
import { MetadataReplica } from "../src/adapters/sqlite/replica.ts";
import { SqliteMetadataStore } from "../src/adapters/sqlite/store.ts";
import type { Logger } from "../src/core/logger.ts";
import { runtimeRecord, storeRuntime, versionRecord } from "../test/support/records.ts";
import { startCephS3 } from "../test/support/ceph-s3.ts";
import { percentiles, round, timeEach } from "./support.ts";

const runtimes = Number(process.env["BENCH_RUNTIMES"] ?? 100);
const samples = Number(process.env["BENCH_SAMPLES"] ?? 30);
const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

const ceph = await startCephS3();
const dirs: string[] = [];
const dataDir = (): string => {
  const dir = mkdtempSync(join(tmpdir(), "berth-bench-metadata-"));
  dirs.push(dir);
  return dir;
};
try {
  await ceph.bucket("bench");
  const objectStore = new S3ObjectStore(ceph.connection("s3://bench/berth"));
  const options = { objectStore, leaseMs: 90_000, log: quiet, pollMs: 3_600_000 };

  const source = dataDir();
  const replica = await MetadataReplica.takeOver({ ...options, dataDir: source, holder: "a" });
  const store = new SqliteMetadataStore(join(source, "berth.db"));
  replica.start();
  for (let index = 0; index < runtimes; index += 1) {
    const runtime = runtimeRecord(`bench${index}-${"x".repeat(10)}`);
    await storeRuntime(store, runtime, versionRecord(runtime));
  }
  await replica.replicateNow();

  const changed = runtimeRecord(`bench0-${"x".repeat(10)}`);
  const resource = { arn: changed.arn, runtimeId: changed.id, endpointName: undefined };
  const snapshotMs = await timeEach(samples, async (index) => {
    await store.updateTags(resource, () => ({ change: String(index) }));
    await replica.replicateNow();
  });
  const head = JSON.parse(
    (await objectStore.get("metadata/head", 2 ** 30))?.body.toString() ?? "{}",
  ) as {
    payload: { storedBytes: number; databaseBytes: number; key: string };
  };
  const snapshotBody = (await objectStore.get(head.payload.key, 2 ** 30))?.body ?? Buffer.alloc(0);
  const putMs = await timeEach(samples, (index) =>
    objectStore.put(`baseline/${index}.db.gz`, snapshotBody),
  );

  const copyOf = new DatabaseSync(join(source, "berth.db"));
  copyOf.exec("PRAGMA synchronous = OFF");
  const vacuumMs = await timeEach(samples, (index) => {
    const file = join(source, `vacuum-${index}.db`);
    copyOf.prepare("VACUUM INTO ?").run(file);
    rmSync(file);
    return Promise.resolve();
  });
  copyOf.close();
  await store.close();
  await replica.close();

  const restoreMs = await timeEach(Math.min(samples, 10), async (index) => {
    const restored = await MetadataReplica.takeOver({
      ...options,
      dataDir: dataDir(),
      holder: `restorer-${index}`,
    });
    await restored.close();
  });

  console.log(
    JSON.stringify(
      {
        benchmark: "metadata-snapshots",
        runtimes,
        databaseBytes: head.payload.databaseBytes,
        storedBytes: head.payload.storedBytes,
        snapshotAfterOneChangeMs: percentiles(snapshotMs),
        vacuumIntoMs: percentiles(vacuumMs),
        baselinePutSameBytesMs: percentiles(putMs),
        restoreIntoEmptyDataDirMs: percentiles(restoreMs),
        snapshotOverPutP50: round(percentiles(snapshotMs).p50 / percentiles(putMs).p50),
      },
      null,
      2,
    ),
  );
} finally {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  await ceph.stop();
}
