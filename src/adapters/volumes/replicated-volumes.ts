import { mkdirSync } from "node:fs";
import { open, readdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import type { Logger } from "../../core/logger.ts";
import type { ObjectStore } from "../../core/object-store.ts";
import { HeldElsewhereError, LostOwnershipError } from "../../core/replication/fenced-head.ts";
import {
  ReplicaDataError,
  VolumeReplica,
  type BlockSnapshot,
  type CheckpointResult,
} from "../../core/replication/volume-replica.ts";
import type { SandboxIdentity, VolumeHandle } from "../../core/sandbox.ts";
import {
  agreedHandleKind,
  UnreadableVolumeError,
  type ReplicaStatus,
  type VolumeStore,
  type VolumeUsage,
} from "../../core/session-storage.ts";
import { isMountPoint } from "../host/mount-table.ts";
import { changedChunks, cloneImage, imageExtents } from "./block-snapshots.ts";
import { reserveBlocks } from "./ext4-image.ts";
import { runCommand } from "./run-command.ts";
import type { LoopVolumes } from "./loop-volumes.ts";
import type { ReflinkPool } from "./reflink-pool.ts";
import { ReplicaStates } from "./replica-state.ts";
import { volumeFileName } from "./volume-files.ts";

export interface ReplicationSettings {
  /** How often an attached volume is checkpointed. */
  checkpointMs: number;
  /** How long a detach waits for the last generation to be durable. */
  durableWaitMs: number;
}

/** Generations between two garbage collections of an attached volume (and one at each detach). */
const collectEvery = 20;
/** The longest wait between two attempts of a checkpoint that keeps failing. */
const maxBackoffMs = 60_000;

/** One volume this store has attached: its replica and its checkpoint loop. */
interface Attached {
  replica: VolumeReplica;
  sizeBytes: number;
  timer: NodeJS.Timeout | undefined;
  failures: number;
  generationsSinceCollection: number;
  /** Another process took the volume over: no checkpoint of this one can succeed. */
  lost: boolean;
}

/**
 * Session storage kept in an object store as well as on local disk (issue 16, ADR 0007). The
 * ext4 image on local disk stays the working copy (LoopVolumes, on a reflink pool); while it is
 * attached it is checkpointed every `checkpointMs`, and once more after its sandbox is gone:
 * the image is cloned in an instant (its filesystem frozen only for the clone), the chunks that
 * differ from the last durable generation's snapshot are found from the two clones' block maps
 * and uploaded, then the volume's head in the store moves (VolumeReplica).
 *
 * Attaching on a machine whose image is older than the store's current generation (or that has
 * none) first restores the image from the store; one that holds it locally uses it as it is.
 */
export class ReplicatedVolumes implements VolumeStore {
  readonly handleKinds: VolumeStore["handleKinds"] = ["host-directory"];
  private readonly local: LoopVolumes;
  private readonly pool: ReflinkPool;
  private readonly store: ObjectStore;
  private readonly holder: string;
  private readonly leaseMs: number;
  private readonly settings: ReplicationSettings;
  private readonly log: Logger;
  private readonly states: ReplicaStates;
  private readonly snapshotDir: string;
  private readonly attached = new Map<string, Attached>();
  /** Per volume: the operation running on it (checkpoints, detach, remove never overlap). */
  private readonly busy = new Map<string, Promise<unknown>>();
  /** Detached volumes whose last changes are not durable yet, retried in the background. */
  private readonly uploading = new Map<string, Promise<boolean>>();
  private readonly lastErrors = new Map<string, string>();
  /** Where volumes made before the object store was set have their images, if anywhere. */
  private readonly legacyImageDir: string | undefined;
  private closed = false;

  constructor(options: {
    local: LoopVolumes;
    pool: ReflinkPool;
    store: ObjectStore;
    holder: string;
    settings: ReplicationSettings;
    log: Logger;
    /** LoopVolumes' image folder before the object store was set (images to adopt). */
    legacyImageDir?: string;
  }) {
    this.legacyImageDir = options.legacyImageDir;
    this.local = options.local;
    this.pool = options.pool;
    this.store = options.store;
    this.holder = options.holder;
    this.settings = options.settings;
    // The owner rewrites the head at every checkpoint; three missed in a row mean it is gone.
    this.leaseMs = 3 * options.settings.checkpointMs;
    this.log = options.log;
    this.states = new ReplicaStates(join(options.pool.path, "replica-state"));
    this.snapshotDir = join(options.pool.path, "snapshots");
    mkdirSync(this.snapshotDir, { recursive: true, mode: 0o700 });
  }

  async create(volumeId: string, sizeBytes: number, owner?: SandboxIdentity): Promise<void> {
    await this.pool.ensureFree(sizeBytes);
    await this.local.create(volumeId, sizeBytes, owner);
    await this.states.write(volumeId, {
      generation: 0,
      pending: true,
      durableAt: undefined,
      storedBytes: undefined,
    });
  }

  async attach(volumeId: string, kinds: readonly VolumeHandle["kind"][]): Promise<VolumeHandle> {
    agreedHandleKind(kinds, this.handleKinds);
    if (this.attached.has(volumeId)) throw new Error(`volume ${volumeId} is already attached`);
    // A detach's upload still running in the background finishes first: it owns the volume.
    await this.uploading.get(volumeId);
    const replica = this.replicaOf(volumeId);
    const head = await replica.acquire().catch((error: unknown) => {
      if (error instanceof HeldElsewhereError) throw error;
      throw new Error(
        `the object store ${this.store.location} could not be reached to take the volume (${String(error)})`,
        { cause: error },
      );
    });
    try {
      const state = await this.states.read(volumeId);
      const image = this.local.imagePath(volumeId);
      const sizeBytes = (await stat(image).catch(() => undefined))?.size;
      if (
        sizeBytes === undefined &&
        head.generation === 0 &&
        (await this.adoptLegacyImage(volumeId))
      ) {
        // A volume from before the object store was set: kept as it is, uploaded from now on.
      } else if (sizeBytes === undefined || state.generation < head.generation) {
        if (head.generation === 0) {
          throw new UnreadableVolumeError(
            `its image ${image} is missing and ${this.store.location} holds no generation of it`,
          );
        }
        if (sizeBytes !== undefined && state.pending) {
          this.log.warn(
            "session storage: a newer generation was written elsewhere; local changes not in it are dropped",
            {
              volumeId,
              localGeneration: state.generation,
              storeGeneration: head.generation,
            },
          );
        }
        await this.restore(replica, volumeId);
      }
      const restoredSize = (await stat(image)).size;
      // Copy-on-write room: every block of each attached volume may be rewritten once between
      // two checkpoints, while the last snapshot still holds the old one.
      await this.pool.ensureFree(restoredSize + this.attachedBytes());
      await this.states.update(volumeId, { pending: true });
      const handle = await this.local.attach(volumeId, ["host-directory"]);
      const entry: Attached = {
        replica,
        sizeBytes: restoredSize,
        timer: undefined,
        failures: 0,
        generationsSinceCollection: 0,
        lost: false,
      };
      this.attached.set(volumeId, entry);
      this.schedule(volumeId, entry, this.settings.checkpointMs);
      return handle;
    } catch (error) {
      await replica.release().catch(() => undefined);
      if (error instanceof ReplicaDataError) {
        throw new UnreadableVolumeError(
          `its copy in the object store cannot be restored: ${error.message}`,
          { cause: error },
        );
      }
      throw error;
    }
  }

  async detach(volumeId: string): Promise<number | undefined> {
    const entry = this.attached.get(volumeId);
    if (entry === undefined) return this.local.detach(volumeId);
    clearTimeout(entry.timer);
    this.attached.delete(volumeId);
    await this.busy.get(volumeId)?.catch(() => undefined);
    const usedBytes = await this.local.detach(volumeId);
    // Unmounted: nothing writes to the image any more; its last state goes up unfrozen.
    const upload = this.uploadUntilDurable(volumeId, entry.replica, usedBytes);
    this.uploading.set(volumeId, upload);
    void upload.finally(() => {
      if (this.uploading.get(volumeId) === upload) this.uploading.delete(volumeId);
    });
    const outcome = await Promise.race([
      upload.then((durable) => (durable ? "durable" : "given up")),
      delay(this.settings.durableWaitMs, "still uploading", { ref: false }),
    ]);
    if (outcome !== "durable") {
      this.log.error(
        outcome === "given up"
          ? "session storage is not durable in the object store: another Berth process owns the volume now; the local copy is kept"
          : "session storage is not durable in the object store yet: the local copy is kept and uploading goes on",
        {
          volumeId,
          objectStore: this.store.location,
          waitedMs: this.settings.durableWaitMs,
          lastError: this.lastErrors.get(volumeId),
        },
      );
    }
    return usedBytes;
  }

  async remove(volumeId: string): Promise<void> {
    const entry = this.attached.get(volumeId);
    if (entry !== undefined) {
      clearTimeout(entry.timer);
      this.attached.delete(volumeId);
    }
    await this.busy.get(volumeId)?.catch(() => undefined);
    await this.uploading.get(volumeId)?.catch(() => undefined);
    await this.local.remove(volumeId);
    await rm(this.baseSnapshot(volumeId), { force: true });
    await rm(this.nextSnapshot(volumeId), { force: true });
    await VolumeReplica.removeAll(this.store, volumeId);
    await this.states.remove(volumeId);
    this.lastErrors.delete(volumeId);
  }

  async usage(volumeId: string): Promise<VolumeUsage> {
    const usage = await this.local.usage(volumeId);
    return { ...usage, replica: await this.status(volumeId) };
  }

  list(): Promise<string[]> {
    return this.local.list();
  }

  /**
   * After a restart: unmounts what the last run left, then uploads in the background every volume whose local
   * image may hold changes the store lacks.
   */
  async recover(): Promise<void> {
    await this.local.recover();
    for (const name of await readdir(this.snapshotDir)) {
      if (name.endsWith(".next")) await rm(join(this.snapshotDir, name), { force: true });
    }
    for (const volumeId of await this.local.list()) {
      if (!(await this.states.read(volumeId)).pending) continue;
      const upload = this.uploadUntilDurable(volumeId, this.replicaOf(volumeId), undefined, {
        acquire: true,
      });
      this.uploading.set(volumeId, upload);
      void upload.finally(() => this.uploading.delete(volumeId));
    }
  }

  /** Stops the background uploads (what they had not finished stays pending for the next start). */
  async close(): Promise<void> {
    this.closed = true;
    for (const entry of this.attached.values()) clearTimeout(entry.timer);
    await Promise.allSettled([...this.uploading.values()]);
    await this.pool.close();
  }

  /** The volume's replication as `berth storage list` shows it. */
  private async status(volumeId: string): Promise<ReplicaStatus> {
    const state = await this.states.read(volumeId);
    return {
      generation: state.generation,
      durableAt: state.durableAt,
      storedBytes: state.storedBytes,
      pending: state.pending,
      lastError: this.lastErrors.get(volumeId),
      lastCheckpointMs: state.lastCheckpointMs,
    };
  }

  private replicaOf(volumeId: string): VolumeReplica {
    return new VolumeReplica({
      store: this.store,
      volumeId,
      holder: this.holder,
      leaseMs: this.leaseMs,
      log: this.log,
    });
  }

  private attachedBytes(): number {
    let total = 0;
    for (const entry of this.attached.values()) total += entry.sizeBytes;
    return total;
  }

  /** The next checkpoint of an attached volume, after `afterMs`. */
  private schedule(volumeId: string, entry: Attached, afterMs: number): void {
    entry.timer = setTimeout(() => {
      void this.checkpointAttached(volumeId, entry).finally(() => {
        if (this.attached.get(volumeId) !== entry || this.closed || entry.lost) return;
        const backoff = Math.min(
          this.settings.checkpointMs * 2 ** entry.failures,
          Math.max(maxBackoffMs, this.settings.checkpointMs),
        );
        this.schedule(volumeId, entry, entry.failures === 0 ? this.settings.checkpointMs : backoff);
      });
    }, afterMs);
    entry.timer.unref();
  }

  private async checkpointAttached(volumeId: string, entry: Attached): Promise<void> {
    try {
      const usedBytes = (await this.local.usage(volumeId)).usedBytes;
      const result = await this.exclusively(volumeId, () =>
        this.checkpoint(volumeId, entry.replica, {
          liveMount: this.local.mountPath(volumeId),
          usedBytes,
        }),
      );
      if (result.written) entry.generationsSinceCollection += 1;
      if (entry.generationsSinceCollection >= collectEvery) {
        entry.generationsSinceCollection = 0;
        await this.exclusively(volumeId, () => entry.replica.collectGarbage(2 * this.leaseMs));
      }
      this.succeeded(volumeId, entry.failures);
      entry.failures = 0;
    } catch (error) {
      entry.failures += 1;
      this.failed(volumeId, error, entry.failures);
      if (error instanceof LostOwnershipError) {
        // No checkpoint of this process can succeed again: stop trying, say so once.
        entry.lost = true;
        this.log.error(
          "session storage was taken over by another Berth process: this session's writes are no longer kept in the object store",
          { volumeId, objectStore: this.store.location },
        );
      }
    }
  }

  /**
   * Uploads a detached volume's last state, retrying with backoff until it is durable (or the
   * store is closed); then lets the volume go, so any machine may take it at once. False when it
   * gives up: closed, or the volume is another process's now (retrying could never succeed).
   */
  private async uploadUntilDurable(
    volumeId: string,
    replica: VolumeReplica,
    usedBytes: number | undefined,
    options: { acquire?: boolean } = {},
  ): Promise<boolean> {
    for (let failures = 0; !this.closed; failures += 1) {
      try {
        await this.exclusively(volumeId, async () => {
          if (options.acquire === true && replica.current === undefined) await replica.acquire();
          await this.checkpoint(volumeId, replica, { usedBytes });
          await replica.collectGarbage(2 * this.leaseMs);
          await replica.release();
          await this.states.update(volumeId, { pending: false });
        });
        this.succeeded(volumeId, failures);
        return true;
      } catch (error) {
        this.failed(volumeId, error, failures + 1);
        if (error instanceof HeldElsewhereError || error instanceof LostOwnershipError) {
          return false;
        }
        await delay(Math.min(this.settings.checkpointMs * 2 ** failures, maxBackoffMs));
      }
    }
    return false;
  }

  /** One checkpoint: clone, find what changed since the base snapshot, upload it, keep the clone. */
  private async checkpoint(
    volumeId: string,
    replica: VolumeReplica,
    options: { liveMount?: string; usedBytes: number | undefined },
  ): Promise<CheckpointResult> {
    const started = performance.now();
    const image = this.local.imagePath(volumeId);
    const base = this.baseSnapshot(volumeId);
    const next = this.nextSnapshot(volumeId);
    await rm(next, { force: true });
    // Room for the clone's copy-on-write: every attached volume may rewrite each of its blocks
    // (or fill each discarded one) once more while this clone and the last one both exist.
    await this.pool.ensureFree(2 * this.attachedBytes());
    // Still mounted (a running session): cloned live; otherwise nothing writes to it.
    const liveMount =
      options.liveMount !== undefined && isMountPoint(options.liveMount)
        ? options.liveMount
        : undefined;
    await cloneImage(image, next, liveMount === undefined ? {} : { liveMount });
    try {
      const snapshot = await snapshotOf(next, await existingFile(base));
      const result = await replica
        .checkpoint(snapshot.blocks, options.usedBytes)
        .finally(() => snapshot.close());
      // The clone is now what the current generation is: the base of the next comparison.
      await rename(next, base);
      const head = replica.current;
      await this.states.update(volumeId, {
        generation: result.generation,
        ...(result.written
          ? {
              durableAt: new Date().toISOString(),
              storedBytes: result.bytesUploaded,
              lastCheckpointMs: Math.round(performance.now() - started),
            }
          : {}),
      });
      if (!result.written && head !== undefined) await replica.renew();
      return result;
    } finally {
      await rm(next, { force: true });
    }
  }

  /**
   * Moves a volume's image made before the object store was set (on the data directory's disk,
   * outside the pool) into the pool; false when there is none.
   */
  private async adoptLegacyImage(volumeId: string): Promise<boolean> {
    if (this.legacyImageDir === undefined) return false;
    const legacy = join(this.legacyImageDir, `${volumeFileName(volumeId)}.img`);
    if ((await stat(legacy).catch(() => undefined)) === undefined) return false;
    const image = this.local.imagePath(volumeId);
    const partial = `${image}.adopting`;
    await rm(partial, { force: true });
    await runCommand("cp", ["--sparse=always", legacy, partial]);
    await rename(partial, image);
    await rm(legacy);
    this.log.info("session storage from before the object store was set moved into the pool", {
      volumeId,
    });
    return true;
  }

  /** Writes the store's current generation into a new image, then makes it the base snapshot. */
  private async restore(replica: VolumeReplica, volumeId: string): Promise<void> {
    const started = performance.now();
    const image = this.local.imagePath(volumeId);
    const partial = `${image}.restoring`;
    const manifest = await replica.currentManifest();
    if (manifest === undefined) throw new ReplicaDataError(`volume ${volumeId} has no manifest`);
    await this.pool.ensureFree(manifest.sizeBytes + this.attachedBytes());
    await rm(partial, { force: true });
    const file = await open(partial, "wx", 0o600);
    try {
      await file.truncate(manifest.sizeBytes);
      await reserveBlocks(partial, manifest.sizeBytes);
      await replica.restore({
        writeChunk: async (index, size, bytes) => {
          await file.write(
            bytes,
            0,
            Math.min(size, manifest.sizeBytes - index * size),
            index * size,
          );
        },
      });
      await file.sync();
    } catch (error) {
      await file.close();
      await rm(partial, { force: true });
      throw error;
    }
    await file.close();
    await rename(partial, image);
    await rm(this.baseSnapshot(volumeId), { force: true });
    await cloneImage(image, this.baseSnapshot(volumeId));
    await this.states.write(volumeId, {
      generation: manifest.generation,
      pending: false,
      durableAt: manifest.createdAt,
      storedBytes: undefined,
    });
    this.log.info("session storage restored from the object store", {
      volumeId,
      generation: manifest.generation,
      chunks: manifest.chunks.size,
      ms: Math.round(performance.now() - started),
    });
  }

  /** Runs `work` when no other operation on the volume runs. */
  private exclusively<T>(volumeId: string, work: () => Promise<T>): Promise<T> {
    const before = this.busy.get(volumeId) ?? Promise.resolve();
    const run = before.catch(() => undefined).then(work);
    this.busy.set(volumeId, run);
    void run
      .finally(() => {
        if (this.busy.get(volumeId) === run) this.busy.delete(volumeId);
      })
      .catch(() => undefined);
    return run;
  }

  private succeeded(volumeId: string, failuresBefore: number): void {
    if (failuresBefore > 0) {
      this.log.info("session storage checkpoints succeed again", {
        volumeId,
        failures: failuresBefore,
      });
    }
    this.lastErrors.delete(volumeId);
  }

  /** Logged at the first failure of a run of them, then every tenth: an outage is not a flood. */
  private failed(volumeId: string, error: unknown, failures: number): void {
    const message = error instanceof Error ? error.message : String(error);
    this.lastErrors.set(volumeId, message);
    if (failures === 1 || failures % 10 === 0) {
      this.log.warn("session storage checkpoint failed; retrying with backoff", {
        volumeId,
        failures,
        error: message,
      });
    }
  }

  private baseSnapshot(volumeId: string): string {
    return join(this.snapshotDir, `${volumeFileName(volumeId)}.base`);
  }

  private nextSnapshot(volumeId: string): string {
    return join(this.snapshotDir, `${volumeFileName(volumeId)}.next`);
  }
}

async function existingFile(path: string): Promise<string | undefined> {
  return (await stat(path).catch(() => undefined)) === undefined ? undefined : path;
}

/** A clone as a BlockSnapshot, compared with `base` (undefined: every written chunk changed). */
async function snapshotOf(
  clone: string,
  base: string | undefined,
): Promise<{ blocks: BlockSnapshot; close: () => Promise<void> }> {
  const file = await open(clone, "r");
  const sizeBytes = (await file.stat()).size;
  const after = await imageExtents(clone);
  const before = base === undefined ? undefined : await imageExtents(base);
  return {
    blocks: {
      sizeBytes,
      changedChunks: (size) => Promise.resolve(changedChunks(before, after, size, sizeBytes)),
      readChunk: async (index, size) => {
        const bytes = Buffer.alloc(size);
        await file.read(bytes, 0, size, index * size);
        return bytes;
      },
    },
    close: () => file.close(),
  };
}
