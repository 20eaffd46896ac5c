import { mkdirSync } from "node:fs";
import { readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import type { Logger } from "../../core/logger.ts";
import type { ObjectStore } from "../../core/object-store.ts";
import { HeldElsewhereError, LostOwnershipError } from "../../core/replication/fenced-head.ts";
import { ReplicaDataError, VolumeReplica } from "../../core/replication/volume-replica.ts";
import type { SandboxIdentity, VolumeHandle } from "../../core/sandbox.ts";
import {
  agreedHandleKind,
  UnreadableVolumeError,
  type ReplicaStatus,
  type VolumeStore,
  type VolumeUsage,
} from "../../core/session-storage.ts";
import { isMountPoint } from "../host/mount-table.ts";
import type { LoopVolumes } from "./loop-volumes.ts";
import type { ReflinkPool } from "./reflink-pool.ts";
import { ReplicaStates, type ReplicaState } from "./replica-state.ts";
import {
  checkpointImage,
  StaleLocalCopyError,
  type ImageCheckpoint,
  type ImageFiles,
} from "./volume-checkpoint.ts";
import { volumeFileName } from "./volume-files.ts";
import { adoptLegacyImage, partialImageSuffixes, restoreImage } from "./volume-restore.ts";

export interface ReplicationSettings {
  /** How often an attached volume is checkpointed. */
  checkpointMs: number;
  /** How long a detach waits for the last generation to be durable. */
  durableWaitMs: number;
}

/** Generations between two garbage collections of an attached volume (and one after each attach). */
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

/** A detached volume's last state going up in the background. */
interface Upload {
  /** True once its last state is durable and the volume let go. */
  durable: Promise<boolean>;
  /** Settled once the upload is over, the volume let go; false when it gave up. */
  done: Promise<boolean>;
  stop: AbortController;
}

/**
 * Session storage kept in an object store as well as on local disk (issue 16, ADR 0007). The
 * ext4 image on local disk stays the working copy (LoopVolumes, on a reflink pool); while it is
 * attached it is checkpointed every `checkpointMs`, and once more after its sandbox is gone
 * (volume-checkpoint.ts: a live clone, the chunks that changed since the last durable
 * generation's clone, then the volume's head moves).
 *
 * Attaching on a machine whose image is not based on the store's current generation (or that
 * has none) first restores the image from the store (volume-restore.ts); one that holds it
 * locally uses it as it is.
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
  private readonly legacyImageDir: string | undefined;
  private readonly goneHolders: ReadonlySet<string>;
  private readonly attached = new Map<string, Attached>();
  /** Per volume: the operation running on it (checkpoints, detach, remove never overlap). */
  private readonly busy = new Map<string, Promise<unknown>>();
  /** Detached volumes whose last changes are not durable yet, retried in the background. */
  private readonly uploading = new Map<string, Upload>();
  private readonly lastErrors = new Map<string, string>();
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
    /**
     * Holders known to be gone (the machine whose metadata this one took over): their volumes
     * are taken at once, without waiting out a lease.
     */
    goneHolders?: ReadonlySet<string>;
  }) {
    this.local = options.local;
    this.pool = options.pool;
    this.store = options.store;
    this.holder = options.holder;
    this.settings = options.settings;
    // The owner rewrites the head at every checkpoint; three missed in a row mean it is gone.
    this.leaseMs = 3 * options.settings.checkpointMs;
    this.log = options.log;
    this.legacyImageDir = options.legacyImageDir;
    this.goneHolders = options.goneHolders ?? new Set();
    this.states = new ReplicaStates(join(options.pool.path, "replica-state"));
    this.snapshotDir = join(options.pool.path, "snapshots");
    mkdirSync(this.snapshotDir, { recursive: true, mode: 0o700 });
  }

  async create(volumeId: string, sizeBytes: number, owner?: SandboxIdentity): Promise<void> {
    await this.pool.ensureFree(sizeBytes);
    await this.local.create(volumeId, sizeBytes, owner);
    await this.states.write(volumeId, this.unknownState());
  }

  async attach(volumeId: string, kinds: readonly VolumeHandle["kind"][]): Promise<VolumeHandle> {
    agreedHandleKind(kinds, this.handleKinds);
    if (this.attached.has(volumeId)) throw new Error(`volume ${volumeId} is already attached`);
    await this.uploadFinished(volumeId);
    const replica = this.replicaOf(volumeId);
    await replica.acquire({ goneHolders: this.goneHolders }).catch((error: unknown) => {
      if (error instanceof HeldElsewhereError) throw error;
      throw new Error(
        `the object store ${this.store.location} did not let Berth take the volume (${String(error)})`,
        { cause: error },
      );
    });
    try {
      const files = this.filesOf(volumeId);
      await this.bringUpToDate(volumeId, replica, files);
      const sizeBytes = (await stat(files.image)).size;
      // Copy-on-write room: every block of each attached volume may be rewritten once between
      // two checkpoints, while the last snapshot still holds the old one.
      await this.pool.ensureFree(sizeBytes + this.attachedBytes());
      await this.states.update(volumeId, this.unknownState(), { pending: true });
      const handle = await this.local.attach(volumeId, ["host-directory"]);
      const entry: Attached = {
        replica,
        sizeBytes,
        timer: undefined,
        failures: 0,
        generationsSinceCollection: 0,
        lost: false,
      };
      this.attached.set(volumeId, entry);
      this.schedule(volumeId, entry, this.settings.checkpointMs);
      this.collectSoon(volumeId, entry);
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
    // A checkpoint under way finishes first: it may hold the mount open.
    await this.busy.get(volumeId)?.catch(() => undefined);
    const usedBytes = await this.local.detach(volumeId);
    // Unmounted: nothing writes to the image any more; its last state goes up as it is.
    const upload = this.startUpload(volumeId, entry.replica);
    const outcome = await Promise.race([
      upload.durable.then((durable) => (durable ? "durable" : "given up")),
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
    // Its background upload, if any, is moot: stopped, not waited out.
    const upload = this.uploading.get(volumeId);
    upload?.stop.abort();
    await upload?.done;
    await this.exclusively(volumeId, async () => {
      // Only the volume's owner deletes it from the store: one that lost it deletes nothing.
      const replica = entry?.replica ?? this.replicaOf(volumeId);
      if (replica.current === undefined) await replica.acquire({ goneHolders: this.goneHolders });
      await replica.removeAll();
      await this.local.remove(volumeId);
      const files = this.filesOf(volumeId);
      await rm(files.base, { force: true });
      await rm(files.next, { force: true });
      await this.states.remove(volumeId);
      this.lastErrors.delete(volumeId);
    });
  }

  async usage(volumeId: string): Promise<VolumeUsage> {
    const usage = await this.local.usage(volumeId);
    return { ...usage, replica: await this.status(volumeId) };
  }

  list(): Promise<string[]> {
    return this.local.list();
  }

  /**
   * After a restart: unmounts what the last run left, removes images it was half-way through
   * making, then uploads in the background every volume whose local image may hold changes the
   * store lacks.
   */
  async recover(): Promise<void> {
    await this.local.recover();
    for (const name of await readdir(this.snapshotDir)) {
      if (name.endsWith(".next")) await rm(join(this.snapshotDir, name), { force: true });
    }
    for (const name of await readdir(this.local.imageDir)) {
      if (partialImageSuffixes.some((suffix) => name.endsWith(suffix))) {
        await rm(join(this.local.imageDir, name), { force: true });
      }
    }
    for (const volumeId of await this.local.list()) {
      if ((await this.states.find(volumeId))?.pending !== false) {
        this.startUpload(volumeId, this.replicaOf(volumeId));
      }
    }
  }

  /** Stops the background uploads (what they had not finished stays pending for the next start). */
  async close(): Promise<void> {
    this.closed = true;
    for (const entry of this.attached.values()) clearTimeout(entry.timer);
    for (const upload of this.uploading.values()) upload.stop.abort();
    await Promise.allSettled([...this.uploading.values()].map((upload) => upload.done));
    await this.pool.close();
  }

  /**
   * Makes the local image the store's current generation: used as it is when based on it (or
   * when the store has none yet), else restored from the store; a volume from before the object
   * store was set is moved into the pool.
   */
  private async bringUpToDate(
    volumeId: string,
    replica: VolumeReplica,
    files: ImageFiles,
  ): Promise<void> {
    const current = replica.currentManifestKey;
    const hasImage = (await stat(files.image).catch(() => undefined)) !== undefined;
    if (current === undefined) {
      if (hasImage) return;
      if (this.legacyImageDir !== undefined) {
        if (await adoptLegacyImage(this.legacyImageDir, volumeId, files.image)) {
          this.log.info(
            "session storage from before the object store was set moved into the pool",
            {
              volumeId,
            },
          );
          return;
        }
      }
      throw new UnreadableVolumeError(
        `its image ${files.image} is missing and ${this.store.location} holds no generation of it`,
      );
    }
    const state = await this.states.find(volumeId);
    if (hasImage && this.basedOn(state) === current) return;
    if (hasImage && state?.pending === true) {
      this.log.warn(
        "session storage: a newer generation was written elsewhere; local changes not in it are dropped",
        {
          volumeId,
          localGeneration: state.generation,
          storeGeneration: replica.current?.generation,
        },
      );
    }
    const started = performance.now();
    const size = (await replica.currentManifest())?.sizeBytes ?? 0;
    await this.pool.ensureFree(size + this.attachedBytes());
    const manifest = await restoreImage(replica, files);
    await this.states.write(volumeId, {
      ...this.unknownState(),
      generation: manifest.generation,
      manifestKey: current,
      pending: false,
      durableAt: manifest.createdAt,
    });
    this.log.info("session storage restored from the object store", {
      volumeId,
      generation: manifest.generation,
      chunks: manifest.chunks.size,
      ms: Math.round(performance.now() - started),
    });
  }

  /** The manifest this machine's image is based on, in this object store; undefined if none. */
  private basedOn(state: ReplicaState | undefined): string | undefined {
    return state?.objectStore === this.store.location ? state.manifestKey : undefined;
  }

  /**
   * The volume's replication as `berth storage list` shows it. A volume this machine knows
   * nothing of (a new machine, before its first use) is as its head in the store says.
   */
  private async status(volumeId: string): Promise<ReplicaStatus> {
    const state = await this.states.find(volumeId);
    if (state === undefined) {
      const head = await this.replicaOf(volumeId)
        .peek()
        .catch(() => undefined);
      return {
        generation: head?.generation ?? 0,
        durableAt: head?.writtenAt,
        storedBytes: undefined,
        pending: false,
        lastError: this.lastErrors.get(volumeId),
        lastCheckpointMs: undefined,
      };
    }
    return {
      generation: state.generation,
      durableAt: state.durableAt,
      storedBytes: state.storedBytes,
      pending: state.pending,
      lastError: this.lastErrors.get(volumeId),
      lastCheckpointMs: state.lastCheckpointMs,
    };
  }

  private unknownState(): ReplicaState {
    return {
      objectStore: this.store.location,
      generation: 0,
      manifestKey: undefined,
      pending: true,
      durableAt: undefined,
      storedBytes: undefined,
      lastCheckpointMs: undefined,
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

  private filesOf(volumeId: string): ImageFiles {
    const name = volumeFileName(volumeId);
    return {
      image: this.local.imagePath(volumeId),
      base: join(this.snapshotDir, `${name}.base`),
      next: join(this.snapshotDir, `${name}.next`),
    };
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
      await this.exclusively(volumeId, async () => {
        // Detached or removed while this one waited its turn: nothing is mounted to clone.
        if (this.attached.get(volumeId) !== entry) return;
        const result = await this.checkpoint(volumeId, entry.replica, {
          liveMount: this.local.mountPath(volumeId),
        });
        if (result.written) entry.generationsSinceCollection += 1;
        if (entry.generationsSinceCollection >= collectEvery) {
          entry.generationsSinceCollection = 0;
          await entry.replica.collectGarbage(2 * this.leaseMs);
        }
      });
      this.succeeded(volumeId, entry.failures);
      entry.failures = 0;
    } catch (error) {
      entry.failures += 1;
      this.failed(volumeId, error, entry.failures);
      if (error instanceof LostOwnershipError || error instanceof StaleLocalCopyError) {
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
   * Collects what the volume's earlier generations left (its owner is this process while it is
   * attached), in the background, between checkpoints. Also every collectEvery generations.
   */
  private collectSoon(volumeId: string, entry: Attached): void {
    // Queued before any checkpoint or detach of the volume, so it runs while this process still
    // owns it, even when the session ends at once.
    void this.exclusively(volumeId, () => entry.replica.collectGarbage(2 * this.leaseMs)).catch(
      (error: unknown) => {
        this.log.warn("session storage: collecting old packs failed; the next attach retries", {
          volumeId,
          error: String(error),
        });
      },
    );
  }

  async settled(volumeId: string): Promise<void> {
    await this.uploading.get(volumeId)?.done.catch(() => undefined);
  }

  /** Starts uploading a detached volume's last state in the background (see uploadUntilDurable). */
  private startUpload(volumeId: string, replica: VolumeReplica): Upload {
    const stop = new AbortController();
    let durable!: (outcome: boolean) => void;
    const isDurable = new Promise<boolean>((resolve) => (durable = resolve));
    const done = this.uploadUntilDurable(volumeId, replica, stop.signal, durable);
    void done.then(durable);
    const upload = { durable: isDurable, done, stop };
    this.uploading.set(volumeId, upload);
    void done.finally(() => {
      if (this.uploading.get(volumeId) === upload) this.uploading.delete(volumeId);
    });
    return upload;
  }

  /**
   * Waits, at most durableWaitMs, for a background upload of the volume to finish: it owns the
   * volume until then. Past that, the attach fails (retryably) rather than hang.
   */
  private async uploadFinished(volumeId: string): Promise<void> {
    const upload = this.uploading.get(volumeId);
    if (upload === undefined) return;
    const finished = await Promise.race([
      upload.done.then(() => true),
      delay(this.settings.durableWaitMs, false, { ref: false }),
    ]);
    if (!finished) {
      throw new Error(
        `its last state is still being uploaded to ${this.store.location} (${this.lastErrors.get(volumeId) ?? "in progress"}); retry once the object store answers`,
      );
    }
  }

  /**
   * Uploads a detached volume's last state, retrying with backoff until it is durable; then lets
   * the volume go, so any machine may take it at once. False when it gives up: stopped, or the
   * volume is another process's now (retrying could never succeed).
   */
  private async uploadUntilDurable(
    volumeId: string,
    replica: VolumeReplica,
    signal: AbortSignal,
    durable: (outcome: boolean) => void,
  ): Promise<boolean> {
    for (let failures = 0; !signal.aborted; failures += 1) {
      try {
        await this.exclusively(volumeId, async () => {
          if (replica.current === undefined) {
            await replica.acquire({ goneHolders: this.goneHolders });
          }
          await this.checkpoint(volumeId, replica, { settled: true });
          // Let go before the stop answers: another machine may take the volume at once.
          // (Old packs are collected at its next attach, not here: a stop waits for no listing.)
          await replica.release();
          durable(true);
        });
        this.succeeded(volumeId, failures);
        return true;
      } catch (error) {
        this.failed(volumeId, error, failures + 1);
        if (error instanceof StaleLocalCopyError) {
          // The next attach restores the store's generation over it: nothing to upload.
          await replica.release().catch(() => undefined);
          await this.states.update(volumeId, this.unknownState(), { pending: false });
          return false;
        }
        if (error instanceof HeldElsewhereError || error instanceof LostOwnershipError) {
          return false;
        }
        const backoffMs = Math.min(this.settings.checkpointMs * 2 ** failures, maxBackoffMs);
        await delay(backoffMs, undefined, { signal }).catch(() => undefined);
      }
    }
    return false;
  }

  /**
   * One checkpoint of the volume, its outcome recorded in its state. settled: the volume is
   * detached, so once this generation is durable nothing local is pending.
   */
  private async checkpoint(
    volumeId: string,
    replica: VolumeReplica,
    options: { liveMount?: string; settled?: boolean },
  ): Promise<ImageCheckpoint> {
    // Room for the clone's copy-on-write: every attached volume may rewrite each of its blocks
    // (or fill each discarded one) once more while this clone and the last one both exist.
    await this.pool.ensureFree(2 * this.attachedBytes());
    const state = await this.states.find(volumeId);
    const liveMount =
      options.liveMount !== undefined && isMountPoint(options.liveMount)
        ? options.liveMount
        : undefined;
    const result = await checkpointImage({
      files: this.filesOf(volumeId),
      replica,
      basedOn: this.basedOn(state),
      liveMount,
    });
    const unchanged =
      !result.written &&
      options.settled !== true &&
      state !== undefined &&
      state.manifestKey === result.manifestKey &&
      state.objectStore === this.store.location;
    // An idle volume's checkpoint changes nothing here: no durable write every interval.
    if (unchanged) return result;
    await this.states.write(volumeId, {
      ...(state ?? this.unknownState()),
      objectStore: this.store.location,
      generation: result.generation,
      manifestKey: result.manifestKey,
      ...(options.settled === true ? { pending: false } : {}),
      ...(result.written
        ? {
            durableAt: new Date().toISOString(),
            storedBytes: result.bytesUploaded,
            lastCheckpointMs: result.ms,
          }
        : {}),
    });
    return result;
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
}
