import { closeSync, openSync, rmSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { DatabaseSync, type StatementSync } from "node:sqlite";
import { promisify } from "node:util";
import { gzip } from "node:zlib";
import type { Logger } from "../../core/logger.ts";
import { PreconditionFailedError, type ObjectStore } from "../../core/object-store.ts";
import {
  FencedHead,
  LostOwnershipError,
  type HeadRecord,
} from "../../core/replication/fenced-head.ts";
import {
  databaseFileName,
  metadataHeadKey,
  payloadOf,
  recordGeneration,
  restoreIfBehind,
  sha256,
  snapshotFence,
  snapshotKey,
  snapshotPrefix,
  workDir,
  type SnapshotPayload,
} from "./replica-restore.ts";

export interface MetadataReplicaOptions {
  objectStore: ObjectStore;
  /** Holds berth.db. */
  dataDir: string;
  /** This Berth's node id: who holds the head. */
  holder: string;
  /** How long an unchanged head means its owner is gone; renewed every third of it. */
  leaseMs: number;
  log: Logger;
  /** How often the database is checked for commits. */
  pollMs?: number;
  /** The longest wait between two attempts while the object store fails. */
  maxRetryMs?: number;
  /** A monotonic clock in ms (tests move it to make a renewal due). */
  monotonicNow?: () => number;
  /**
   * Called once when another Berth took the metadata over (this one was partitioned or stalled
   * for a lease): this Berth no longer owns what it serves, and must stop (fail-stop).
   */
  onLost?: ((error: LostOwnershipError) => void) | undefined;
}

/** For the operator API: how far the object store's copy of the metadata is. */
export interface MetadataReplicaStatus {
  /** The generation the object store holds as current (0: none yet), and when it was stored. */
  durableGeneration: number;
  durableAt: string | undefined;
  /** The database has commits the object store does not hold yet. */
  pending: boolean;
  /** Why the last attempt failed, until one succeeds again. */
  lastError: string | undefined;
  /** False once another Berth took the object store over: this one no longer writes to it. */
  replicating: boolean;
}

const defaultPollMs = 500;
const defaultMaxRetryMs = 30_000;
const firstRetryMs = 1_000;
const gzipAsync = promisify(gzip);

/**
 * Keeps the metadata database (SQLite) in the object store as whole snapshots: control-plane
 * changes are small and rare, and a snapshot is a few hundred KB. Its own connection to
 * berth.db watches PRAGMA data_version, which changes when another connection (the store)
 * commits; a change is copied with VACUUM INTO (a consistent point in time while the store goes
 * on writing), gzipped, stored under a new key, and only then made current by advancing the
 * fenced head. A crash in between leaves the previous generation current; a Berth that lost the
 * head to another can never advance it.
 */
export class MetadataReplica {
  /**
   * The node this Berth took the metadata from because that node was gone: its head stayed
   * unchanged for a whole lease. Undefined when the head was free, let go by a clean stop, or
   * this node's own. That node's volumes need no lease of their own to wait out.
   */
  readonly tookOverFrom: string | undefined;
  private readonly options: Required<MetadataReplicaOptions>;
  private readonly head: FencedHead;
  private database: DatabaseSync | undefined;
  private dataVersionQuery: StatementSync | undefined;
  /** data_version when the object store last received everything committed. */
  private uploadedVersion = 0;
  /** The database may differ from the head's generation before any commit is seen. */
  private pendingAtStart: boolean;
  private durable: { generation: number; at: string | undefined };
  private lastHeadWriteMs: number;
  private failures = 0;
  private lastError: string | undefined;
  private replicating = true;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  /** Rounds run one at a time: the timer's and replicateNow's. */
  private rounds: Promise<void> = Promise.resolve();

  /**
   * Before the store opens: takes the head (waiting out a dead owner's lease; HeldElsewhereError
   * when its owner is alive) and restores the database into the data directory when it lacks
   * the current generation. Then open the store, and start().
   */
  static async takeOver(options: MetadataReplicaOptions): Promise<MetadataReplica> {
    const { objectStore, holder, leaseMs, log, dataDir } = options;
    const head = new FencedHead({
      store: objectStore,
      key: metadataHeadKey,
      holder,
      leaseMs,
      what: `the metadata database in ${objectStore.location}`,
    });
    const before = await head.peek();
    if (before?.holder != null && before.holder !== holder) {
      log.info("the metadata database in the object store is held by another node; waiting", {
        objectStore: objectStore.location,
        node: before.holder,
        leaseMs,
      });
    }
    const record = await head.acquire();
    if (head.tookOverFrom !== undefined) {
      log.info("took over the metadata database from a node that is gone", {
        objectStore: objectStore.location,
        node: head.tookOverFrom,
        unchangedForMs: leaseMs,
      });
    }
    try {
      const restored = await restoreIfBehind({ objectStore, head: record, dataDir, log });
      return new MetadataReplica(options, head, record, !restored);
    } catch (error) {
      await head.release().catch(() => undefined);
      throw error;
    }
  }

  private constructor(
    options: MetadataReplicaOptions,
    head: FencedHead,
    record: HeadRecord,
    pendingAtStart: boolean,
  ) {
    this.options = {
      pollMs: defaultPollMs,
      maxRetryMs: defaultMaxRetryMs,
      monotonicNow: () => performance.now(),
      onLost: undefined,
      ...options,
    };
    this.head = head;
    this.tookOverFrom = head.tookOverFrom;
    this.pendingAtStart = pendingAtStart;
    this.durable = {
      generation: record.generation,
      at: record.generation === 0 ? undefined : payloadOf(record).storedAt,
    };
    this.lastHeadWriteMs = this.options.monotonicNow();
  }

  /** Once the store has opened berth.db: watches it, and replicates every change. */
  start(): void {
    this.database = new DatabaseSync(join(this.options.dataDir, databaseFileName), {
      timeout: 5000,
    });
    // This connection writes only its snapshot files, which need not survive a crash: without
    // their fsync, VACUUM INTO holds the event loop a fraction as long.
    this.database.exec("PRAGMA synchronous = OFF");
    this.dataVersionQuery = this.database.prepare("PRAGMA data_version");
    this.uploadedVersion = this.dataVersion();
    this.schedule(0);
  }

  status(): MetadataReplicaStatus {
    return {
      durableGeneration: this.durable.generation,
      durableAt: this.durable.at,
      pending: this.hasChanges(),
      lastError: this.lastError,
      replicating: this.replicating,
    };
  }

  /** One round now, as the timer runs them: a snapshot if anything changed, else a renewal if due. */
  async replicateNow(): Promise<MetadataReplicaStatus> {
    await this.enqueue(() => this.round());
    return this.status();
  }

  /**
   * A graceful stop, after the store closed: a last snapshot if anything changed, then lets go of
   * the head so another Berth may take over at once. The object store failing does not hold the
   * stop: the changes stay in the local database, and this data directory's next start uploads
   * them.
   */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.enqueue(async () => {
      if (this.replicating) await this.lastSnapshotAndRelease();
      this.database?.close();
    });
  }

  private async lastSnapshotAndRelease(): Promise<void> {
    try {
      if (this.database !== undefined && this.hasChanges()) await this.snapshot();
    } catch (error) {
      if (this.lostOwnership(error)) return;
      this.options.log.warn(
        "the last metadata changes are not durable in the object store: they stay in the local database, and the next start here uploads them",
        { objectStore: this.options.objectStore.location, error: String(error) },
      );
    }
    await this.head.release().catch((error: unknown) => {
      this.options.log.warn(
        "could not let go of the metadata database in the object store: another Berth can take it over only once the lease has run out",
        { leaseMs: this.options.leaseMs, error: String(error) },
      );
    });
  }

  private enqueue(work: () => Promise<void>): Promise<void> {
    this.rounds = this.rounds.then(work);
    return this.rounds;
  }

  private schedule(delayMs: number): void {
    if (this.closed || !this.replicating) return;
    this.timer = setTimeout(() => {
      void this.enqueue(() => this.round()).then(() => {
        this.schedule(this.failures === 0 ? this.options.pollMs : this.retryDelayMs());
      });
    }, delayMs);
    this.timer.unref();
  }

  /** Never throws: a failure is logged (once per outage) and shown by status(). */
  private async round(): Promise<void> {
    if (this.closed || !this.replicating || this.database === undefined) return;
    try {
      if (this.hasChanges()) await this.snapshot();
      else if (this.renewalDue()) await this.renew();
      this.recovered();
    } catch (error) {
      if (!this.lostOwnership(error)) this.failed(error);
    }
  }

  private async snapshot(): Promise<void> {
    const started = performance.now();
    const version = this.dataVersion();
    const database = await this.copyDatabase();
    const body = await gzipAsync(database);
    const mine = this.owned();
    const generation = mine.generation + 1;
    const key = snapshotKey(generation, mine.fence);
    await this.upload(key, body);
    const payload: SnapshotPayload = {
      key,
      sha256: sha256(body),
      storedBytes: body.byteLength,
      databaseBytes: database.byteLength,
      storedAt: new Date().toISOString(),
    };
    const previous = mine.generation === 0 ? undefined : payloadOf(mine).key;
    await this.head.advance({ ...payload });
    this.lastHeadWriteMs = this.options.monotonicNow();
    this.uploadedVersion = version;
    this.pendingAtStart = false;
    this.durable = { generation, at: payload.storedAt };
    await recordGeneration(this.options.dataDir, this.options.objectStore.location, generation);
    this.options.log.info("metadata snapshot stored", {
      generation,
      storedBytes: body.byteLength,
      databaseBytes: database.byteLength,
      durationMs: Math.round(performance.now() - started),
    });
    await this.deleteOlderSnapshots([key, previous], mine.fence);
  }

  /**
   * A consistent copy of the database while the store goes on writing. VACUUM INTO wants an
   * absent or empty target: made empty first, 0600 in a 0700 folder, as the database is private.
   */
  private async copyDatabase(): Promise<Buffer> {
    const file = join(workDir(this.options.dataDir), "snapshot.db");
    rmSync(file, { force: true });
    closeSync(openSync(file, "wx", 0o600));
    try {
      this.connection().prepare("VACUUM INTO ?").run(file);
      return await readFile(file);
    } finally {
      rmSync(file, { force: true });
    }
  }

  /**
   * Stores a snapshot under a key no other owner writes (its fence is ours). A 412 means an
   * earlier attempt of ours stored it and lost its answer: once the head confirms we still own
   * it, the key is ours to replace.
   */
  private async upload(key: string, body: Buffer): Promise<void> {
    try {
      await this.options.objectStore.put(key, body, { ifNoneMatch: "*" });
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
      await this.renew();
      await this.options.objectStore.put(key, body);
    }
  }

  private async renew(): Promise<void> {
    await this.head.renew();
    this.lastHeadWriteMs = this.options.monotonicNow();
  }

  /**
   * Keeps the current and the previous generation. Never a snapshot of a later owner (a higher
   * fence): it may be one whose head write is still on its way.
   */
  private async deleteOlderSnapshots(keep: (string | undefined)[], fence: number): Promise<void> {
    try {
      const stale: string[] = [];
      for await (const object of this.options.objectStore.list(snapshotPrefix)) {
        const owner = snapshotFence(object.key);
        if (owner === undefined || owner > fence || keep.includes(object.key)) continue;
        stale.push(object.key);
      }
      if (stale.length > 0) await this.options.objectStore.delete(stale);
    } catch (error) {
      // The next snapshot deletes them.
      this.options.log.warn("could not delete old metadata snapshots", { error: String(error) });
    }
  }

  private hasChanges(): boolean {
    if (this.database === undefined || !this.database.isOpen) return this.pendingAtStart;
    return this.pendingAtStart || this.dataVersion() !== this.uploadedVersion;
  }

  private dataVersion(): number {
    return Number(this.dataVersionQuery?.get()?.["data_version"] ?? 0);
  }

  private connection(): DatabaseSync {
    if (this.database === undefined) throw new Error("the metadata replica has not started");
    return this.database;
  }

  private renewalDue(): boolean {
    return this.options.monotonicNow() - this.lastHeadWriteMs >= this.options.leaseMs / 3;
  }

  private owned(): HeadRecord {
    const record = this.head.record;
    if (record === undefined) throw new LostOwnershipError("the metadata head is not held");
    return record;
  }

  private failed(error: unknown): void {
    this.failures += 1;
    this.lastError = String(error);
    if (this.failures > 1) return;
    this.options.log.warn("cannot replicate the metadata database to the object store; retrying", {
      objectStore: this.options.objectStore.location,
      error: this.lastError,
      maxRetryMs: this.options.maxRetryMs,
    });
  }

  private recovered(): void {
    if (this.failures > 0) {
      this.options.log.info("replicating the metadata database to the object store again", {
        objectStore: this.options.objectStore.location,
        failedAttempts: this.failures,
        generation: this.durable.generation,
      });
    }
    this.failures = 0;
    this.lastError = undefined;
  }

  private retryDelayMs(): number {
    return Math.min(this.options.maxRetryMs, firstRetryMs * 2 ** (this.failures - 1));
  }

  /**
   * True (and replication stopped) when another Berth took the object store over; tells onLost,
   * unless this Berth is stopping anyway.
   */
  private lostOwnership(error: unknown): boolean {
    if (!(error instanceof LostOwnershipError)) return false;
    this.replicating = false;
    this.lastError = error.message;
    this.options.log.error(
      "another Berth took over the metadata database in the object store: this one stops replicating it",
      { objectStore: this.options.objectStore.location, error: error.message },
    );
    if (!this.closed) this.options.onLost?.(error);
    return true;
  }
}
