import { randomUUID } from "node:crypto";
import { BerthError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { HeldElsewhereError } from "./replication/fenced-head.ts";
import type { RuntimeRecord, RuntimeVersionRecord } from "./model.ts";
import type { SandboxIdentity, VolumeHandle } from "./sandbox.ts";
import type { SessionStorageRecord, MetadataStore } from "./store.ts";

/**
 * Thrown by VolumeStore.attach when the volume's own data is what fails: its image is gone, or
 * holds no filesystem that can be read. Any other failure to attach is the host's or Berth's,
 * and leaves the volume as it was.
 */
export class UnreadableVolumeError extends Error {
  override readonly name = "UnreadableVolumeError";
}

/**
 * Thrown by a VolumeStore that cannot reserve a volume's space on the server's disk (every
 * volume's space is reserved up front, so that no one filling the disk can take it later).
 */
export class NoRoomForVolumeError extends Error {
  override readonly name = "NoRoomForVolumeError";
}

/**
 * Where session storage lives: one volume per (runtime, session, mount path). On one machine, a
 * loop-mounted ext4 image on local disk (a filesystem of its own with a hard size limit), or a
 * plain folder (no limit; for tests and hosts without loop devices). A store hands a volume to
 * the sandbox driver as a VolumeHandle of a kind the driver attaches its own way.
 */
export interface VolumeStore {
  /** owner: who owns the new volume's root folder; the store's default sandbox user if absent. */
  create(volumeId: string, sizeBytes: number, owner?: SandboxIdentity): Promise<void>;
  /** The handle kinds this store can give, most preferred first. */
  readonly handleKinds: readonly VolumeHandle["kind"][];
  /**
   * Makes the volume ready for a sandbox and returns a handle of the first of `kinds` (the
   * driver's, most preferred first) this store can give. Throws UnreadableVolumeError when the
   * volume itself is missing or damaged, another error when the host could not attach it.
   */
  attach(volumeId: string, kinds: readonly VolumeHandle["kind"][]): Promise<VolumeHandle>;
  /** Once no sandbox uses it: flushes everything and lets go; returns the bytes in use then. */
  detach(volumeId: string): Promise<number | undefined>;
  remove(volumeId: string): Promise<void>;
  usage(volumeId: string): Promise<VolumeUsage>;
  /** Volume ids present on disk, to find ones no record names. */
  list(): Promise<string[]>;
  /** Unmounts whatever a previous run of the server left mounted. */
  recover(): Promise<void>;
  /** Stops background work and lets go of the host's resources; once every volume is detached. */
  close?(): Promise<void>;
  /**
   * Settles once what the volume's last detach left under way is over (an upload to an object
   * store: durable, given up or stopped). Stores that leave nothing under way need none.
   */
  settled?(volumeId: string): Promise<void>;
}

/**
 * The first of the driver's `accepted` handle kinds (most preferred first) that a volume store
 * `gives`; throws, naming both lists, when they share none: the driver and the volume store
 * chosen in the settings cannot work together.
 */
export function agreedHandleKind(
  accepted: readonly VolumeHandle["kind"][],
  gives: readonly VolumeHandle["kind"][],
): VolumeHandle["kind"] {
  const kind = accepted.find((candidate) => gives.includes(candidate));
  if (kind === undefined) {
    throw new Error(
      `the sandbox driver attaches volumes as ${kindList(accepted)}, but the volume store gives ` +
        `only ${kindList(gives)}: choose a volume store and a sandbox driver that share a handle kind`,
    );
  }
  return kind;
}

function kindList(kinds: readonly VolumeHandle["kind"][]): string {
  return kinds.length === 0 ? "nothing" : kinds.map((kind) => `"${kind}"`).join(", ");
}

export interface VolumeUsage {
  attached: boolean;
  /** Bytes the filesystem reports used (while attached), else as measured at the last detach. */
  usedBytes: number | undefined;
  /** Bytes the volume takes on the host's disk (all of it: its blocks are reserved). */
  allocatedBytes: number;
  /** With an object store: how much of the volume is durable there. */
  replica?: ReplicaStatus | undefined;
}

/** A running session's storage, all its volumes together (see SessionStorage.useOf). */
export interface AttachedStorageUse {
  /** Bytes the volumes' filesystems report used; undefined when none can tell. */
  usedBytes: number | undefined;
  /** With an object store: how far the volumes' copy there is behind them. */
  checkpoint?: CheckpointState;
}

export interface CheckpointState {
  /** Some volume holds changes its copy in the object store lacks. */
  pending: boolean;
  /** The oldest of the volumes' last durable generations (undefined: one has none yet). */
  durableAt: string | undefined;
  /** What the volumes' last durable generations took in the object store when written. */
  storedBytes: number;
}

/** A volume's copy in the object store, as `berth storage list` shows it. */
export interface ReplicaStatus {
  /** The last generation durable in the object store (0: none yet). */
  generation: number;
  durableAt: string | undefined;
  /** What that generation's new chunks and manifest took in the store when it was written. */
  storedBytes: number | undefined;
  /** The local volume may hold changes no durable generation has yet. */
  pending: boolean;
  /** Why the last checkpoint failed, while it has not succeeded since. */
  lastError: string | undefined;
  /** How long the last checkpoint that wrote a generation took, clone to durable. */
  lastCheckpointMs: number | undefined;
}

/** A session's volume made ready, for the sandbox driver to attach at mountPath. */
export interface AttachedVolume {
  mountPath: string;
  volumeId: string;
  handle: VolumeHandle;
}

export interface SessionStorageSettings {
  sizeBytes: number;
  retentionMs: number;
}

/** The runtime tag that keeps session storage across version changes (AgentCore resets it). */
export const keepOnVersionChangeTag = "berth:session-storage-on-version-change";

export interface StorageView extends SessionStorageRecord {
  attached: boolean;
  allocatedBytes: number;
  replica?: ReplicaStatus | undefined;
}

/**
 * Session storage: what an agent writes under a runtime's sessionStorage mount paths outlives the
 * session's sandbox and comes back when the same session id is used again. A volume whose record
 * exists but that cannot be attached fails the session loudly: an agent never starts on an empty
 * directory in place of its data.
 */
export class SessionStorage {
  private readonly store: MetadataStore;
  private readonly volumes: VolumeStore;
  /** The handle kinds the sandbox driver attaches, most preferred first. */
  private readonly kinds: readonly VolumeHandle["kind"][];
  private readonly settings: SessionStorageSettings;
  private readonly log: Logger;
  private readonly now: () => Date;
  /**
   * Who this process is when it claims volumes in the metadata store. A volume a sandbox uses is
   * claimed there, not remembered here, so no Berth process sharing the store attaches, sweeps or
   * deletes it under that sandbox.
   */
  private readonly holder: string;
  /** Who this process is when it claims a volume to delete it (a claim no sandbox can share). */
  private readonly remover: string;

  constructor(options: {
    store: MetadataStore;
    volumes: VolumeStore;
    /** The sandbox driver's volumeKinds. */
    kinds: readonly VolumeHandle["kind"][];
    settings: SessionStorageSettings;
    log: Logger;
    now: () => Date;
    /** This Berth process's name in volume claims: the same across its restarts. */
    holder: string;
  }) {
    // A driver and a volume store with no kind in common are a configuration mistake: found
    // here, at start, rather than as a failure of every session that has storage.
    agreedHandleKind(options.kinds, options.volumes.handleKinds);
    this.store = options.store;
    this.volumes = options.volumes;
    this.kinds = options.kinds;
    this.settings = options.settings;
    this.log = options.log;
    this.now = options.now;
    this.holder = options.holder;
    this.remover = `${options.holder} (deleting)`;
  }

  /**
   * After a restart: unmount what the last run left, and drop volumes no record names.
   * metadataIsOurs: no other live process shares the metadata store (a SQLite file is one
   * process's; one restored from the object store was another machine's, now gone), so every
   * claim in it is stale, whoever made it.
   */
  async recover({ metadataIsOurs }: { metadataIsOurs: boolean }): Promise<void> {
    await this.volumes.recover();
    // Whatever this process held before its restart, no sandbox of it holds now.
    await this.store.releaseSessionStorageClaims(this.holder);
    await this.store.releaseSessionStorageClaims(this.remover);
    const records = await this.store.listSessionStorage();
    if (metadataIsOurs) {
      const holders = new Set(records.flatMap((record) => record.heldBy ?? []));
      for (const holder of holders) await this.store.releaseSessionStorageClaims(holder);
    }
    const known = new Set(records.map((record) => record.volumeId));
    for (const volumeId of await this.volumes.list()) {
      if (!known.has(volumeId)) await this.volumes.remove(volumeId);
    }
  }

  /**
   * Attaches (creating or resetting as needed) every volume the version's config names. New
   * volumes belong to `owner` (an image's user), or to the driver's sandbox user.
   */
  async attach(
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    sessionId: string,
    owner?: SandboxIdentity,
  ): Promise<AttachedVolume[]> {
    const attached: AttachedVolume[] = [];
    try {
      for (const mountPath of version.config.sessionStorageMountPaths) {
        const record = await this.recordFor(runtime, version, sessionId, mountPath, owner);
        const handle = await this.attachVolume(record);
        attached.push({ mountPath, volumeId: record.volumeId, handle });
      }
      return attached;
    } catch (error) {
      await this.detach(attached);
      throw error;
    }
  }

  /** Flushes and lets go of the volumes; call once the sandbox that used them is gone. */
  async detach(volumes: AttachedVolume[]): Promise<void> {
    for (const volume of volumes) {
      try {
        const usedBytes = await this.volumes.detach(volume.volumeId);
        await this.store.touchSessionStorage(volume.volumeId, this.now().toISOString(), usedBytes);
      } catch (error) {
        this.log.error("session storage did not detach cleanly", {
          volumeId: volume.volumeId,
          error: String(error),
        });
      } finally {
        await this.release(volume.volumeId, this.holder);
      }
    }
  }

  /** Settles once what detaching these volumes left under way is over (see VolumeStore.settled). */
  async settled(volumes: AttachedVolume[]): Promise<void> {
    for (const volume of volumes) await this.volumes.settled?.(volume.volumeId);
  }

  /** What a running session's volumes hold now: their used bytes, and their copy's state. */
  async useOf(volumes: readonly AttachedVolume[]): Promise<AttachedStorageUse> {
    // A volume detaching meanwhile (its session just ended) is left out, not an error.
    const usages = await Promise.all(
      volumes.map((volume) => this.volumes.usage(volume.volumeId).catch(() => undefined)),
    );
    const used = usages.map((usage) => usage?.usedBytes).filter((bytes) => bytes !== undefined);
    const replicas = usages.flatMap((usage) =>
      usage?.replica === undefined ? [] : [usage.replica],
    );
    return {
      usedBytes: used.length === 0 ? undefined : used.reduce((sum, bytes) => sum + bytes, 0),
      ...(replicas.length === 0 ? {} : { checkpoint: checkpointOf(replicas) }),
    };
  }

  async list(runtimeId: string): Promise<StorageView[]> {
    const records = await this.store.listSessionStorage(runtimeId);
    return Promise.all(
      records.map(async (record) => {
        const usage = await this.volumes.usage(record.volumeId);
        return {
          ...record,
          usedBytes: usage.usedBytes ?? record.usedBytes,
          attached: usage.attached,
          allocatedBytes: usage.allocatedBytes,
          ...(usage.replica === undefined ? {} : { replica: usage.replica }),
        };
      }),
    );
  }

  /** Deletes one session's storage; the session must not be running. False when it had none. */
  async removeSession(runtimeId: string, sessionId: string): Promise<boolean> {
    const records = (await this.store.listSessionStorage(runtimeId)).filter(
      (record) => record.sessionId === sessionId,
    );
    for (const record of records) {
      if (!(await this.removeRecord(record, "deleted by the operator"))) {
        throw new BerthError(
          "ConflictException",
          `Session ${sessionId} is running; stop it (StopRuntimeSession) before deleting its storage`,
        );
      }
    }
    return records.length > 0;
  }

  /** Deletes every volume of a runtime (it is being deleted; its sessions are stopped). */
  async removeRuntime(runtimeId: string): Promise<void> {
    for (const record of await this.store.listSessionStorage(runtimeId)) {
      if (!(await this.removeRecord(record, "runtime deleted")))
        this.log.warn(
          "session storage of a deleted runtime is still in use; the next sweep after it is free removes it",
          {
            volumeId: record.volumeId,
            heldBy: record.heldBy,
          },
        );
    }
  }

  /** Deletes storage unused for longer than the retention setting. */
  /**
   * Deletes storage unused for longer than the retention setting, and storage whose runtime is
   * gone (deleted while a sandbox still had it).
   */
  async sweep(): Promise<void> {
    const before = new Date(this.now().getTime() - this.settings.retentionMs).toISOString();
    for (const record of await this.store.listSessionStorage()) {
      if ((await this.store.findRuntime(record.runtimeId)) === undefined) {
        await this.removeRecord(record, "runtime deleted");
      } else if (record.lastUsedAt < before) {
        // Used again since the listing? The record says so once the removal's claim holds it.
        await this.removeRecord(record, "retention period passed", async () => {
          const now = await this.store.findSessionStorage(
            record.runtimeId,
            record.sessionId,
            record.mountPath,
          );
          return now !== undefined && now.lastUsedAt < before;
        });
      }
    }
  }

  private async recordFor(
    runtime: RuntimeRecord,
    version: RuntimeVersionRecord,
    sessionId: string,
    mountPath: string,
    owner: SandboxIdentity | undefined,
  ): Promise<SessionStorageRecord> {
    const existing = await this.store.findSessionStorage(runtime.id, sessionId, mountPath);
    if (existing !== undefined && existing.version !== version.version) {
      if (runtime.tags[keepOnVersionChangeTag] === "keep") {
        await this.store.setSessionStorageVersion(existing.volumeId, version.version);
        return { ...existing, version: version.version };
      }
      const reason = `the endpoint now serves version ${version.version}`;
      if (!(await this.removeRecord(existing, reason))) throw volumeInUse(existing);
    } else if (existing !== undefined) {
      return existing;
    }
    // The volume first, then its record: a crash in between leaves an unnamed volume, which the
    // next start removes, never a record without its volume.
    const volumeId = randomUUID();
    await this.volumes.create(volumeId, this.settings.sizeBytes, owner).catch((error: unknown) => {
      throw error instanceof NoRoomForVolumeError ? noRoomFailure(mountPath, error) : error;
    });
    const now = this.now().toISOString();
    const record: SessionStorageRecord = {
      runtimeId: runtime.id,
      sessionId,
      mountPath,
      volumeId,
      version: version.version,
      sizeBytes: this.settings.sizeBytes,
      usedBytes: undefined,
      createdAt: now,
      lastUsedAt: now,
      heldBy: undefined,
    };
    await this.store.putSessionStorage(record);
    return record;
  }

  private async attachVolume(record: SessionStorageRecord): Promise<VolumeHandle> {
    // lastUsedAt is recorded at detach; while attached, the claim keeps sweeps away.
    if (!(await this.claim(record.volumeId, this.holder))) throw volumeInUse(record);
    try {
      return await this.volumes.attach(record.volumeId, this.kinds);
    } catch (error) {
      await this.release(record.volumeId, this.holder);
      throw attachFailure(record, error);
    }
  }

  /**
   * Deletes the volume and its record, unless a sandbox has it or `stillDue` (asked once the
   * claim is held) says no: then false, nothing done.
   */
  private async removeRecord(
    record: SessionStorageRecord,
    reason: string,
    stillDue: () => Promise<boolean> = () => Promise.resolve(true),
  ): Promise<boolean> {
    if (!(await this.claim(record.volumeId, this.remover))) return false;
    if (!(await stillDue())) {
      await this.release(record.volumeId, this.remover);
      return false;
    }
    try {
      await this.volumes.remove(record.volumeId);
      await this.store.deleteSessionStorage(record.volumeId);
    } catch (error) {
      await this.release(record.volumeId, this.remover);
      throw error;
    }
    this.log.info("session storage deleted", {
      runtimeId: record.runtimeId,
      sessionId: record.sessionId,
      mountPath: record.mountPath,
      reason,
    });
    return true;
  }

  private claim(volumeId: string, holder: string): Promise<boolean> {
    return this.store.claimSessionStorage(volumeId, holder, this.now().toISOString());
  }

  /** A claim that cannot be released is logged: the next start of this process releases it. */
  private async release(volumeId: string, holder: string): Promise<void> {
    await this.store.releaseSessionStorage(volumeId, holder).catch((error: unknown) => {
      this.log.error("could not release a session storage claim", {
        volumeId,
        error: String(error),
      });
    });
  }
}

/**
 * A failed attach as the caller hears it. Only a volume whose own data failed is the session's
 * problem, with the advice to start afresh by deleting it; any other failure is Berth's (its data
 * untouched, a retry may well succeed), and advice to delete intact data would be wrong.
 */
function attachFailure(record: SessionStorageRecord, error: unknown): BerthError {
  const reason = error instanceof Error ? error.message : String(error);
  if (error instanceof NoRoomForVolumeError) return noRoomFailure(record.mountPath, error);
  if (error instanceof HeldElsewhereError) {
    return new BerthError(
      "ConflictException",
      `The session's storage at ${record.mountPath} is in use by another Berth process (node ${error.holder}) sharing the object store; ` +
        "the agent was not started. Retry once the session stops there (StopRuntimeSession on that server)",
      { cause: error },
    );
  }
  if (error instanceof UnreadableVolumeError) {
    return new BerthError(
      "RuntimeClientError",
      `The session's storage at ${record.mountPath} exists but could not be attached (${reason}). ` +
        `The agent was not started on an empty directory in its place; to start afresh, delete this session's storage (DELETE /berth/v1/runtimes/${record.runtimeId}/sessions/{sessionId}/storage)`,
      { cause: error },
    );
  }
  return new BerthError(
    "InternalServerException",
    `Berth could not attach the session's storage at ${record.mountPath} (${reason}). ` +
      "Its data was not touched and the agent was not started; retry the request",
    { cause: error },
  );
}

/** Another sandbox (of this process or another sharing the store) has the volume, or it is being deleted. */
function volumeInUse(record: SessionStorageRecord): BerthError {
  return new BerthError(
    "ConflictException",
    `The session's storage at ${record.mountPath} is in use by another sandbox of this session or being deleted; ` +
      "the agent was not started. Retry once that ends (StopRuntimeSession ends a session)",
  );
}

/** The server's disk is full: nothing the caller sent is wrong, and a retry alone will not do. */
function noRoomFailure(mountPath: string, error: NoRoomForVolumeError): BerthError {
  return new BerthError(
    "ServiceQuotaExceededException",
    `Berth's disk has no room for this session's storage at ${mountPath} (${error.message}). ` +
      "The agent was not started; free disk space on the server, lower sessionStorageBytes, or delete unused session storage",
    { cause: error },
  );
}

/** The copies of one session's volumes as one: pending if any is, as durable as the oldest. */
function checkpointOf(replicas: readonly ReplicaStatus[]): CheckpointState {
  const durable = replicas.map((replica) => replica.durableAt);
  return {
    pending: replicas.some((replica) => replica.pending),
    durableAt: durable.includes(undefined) ? undefined : durable.sort()[0],
    storedBytes: replicas.reduce((sum, replica) => sum + (replica.storedBytes ?? 0), 0),
  };
}
