import { randomUUID } from "node:crypto";
import { BerthError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import type { RuntimeRecord, RuntimeVersionRecord } from "./model.ts";
import type { SandboxIdentity } from "./sandbox.ts";
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
 * Where session storage lives: one volume per (runtime, session, mount path), a filesystem of
 * its own with a hard size limit. On one machine, a loop-mounted ext4 image on local disk.
 */
export interface VolumeStore {
  /** owner: who owns the new volume's root folder; the store's default sandbox user if absent. */
  create(volumeId: string, sizeBytes: number, owner?: SandboxIdentity): Promise<void>;
  /**
   * Mounts the volume on the host and returns its directory. Throws UnreadableVolumeError when
   * the volume itself is missing or damaged, another error when the host could not mount it.
   */
  attach(volumeId: string): Promise<string>;
  /** Flushes everything to disk and unmounts; returns the bytes in use at that moment. */
  detach(volumeId: string): Promise<number | undefined>;
  remove(volumeId: string): Promise<void>;
  usage(volumeId: string): Promise<VolumeUsage>;
  /** Volume ids present on disk, to find ones no record names. */
  list(): Promise<string[]>;
  /** Unmounts whatever a previous run of the server left mounted. */
  recover(): Promise<void>;
}

export interface VolumeUsage {
  attached: boolean;
  /** Bytes the filesystem reports used (while attached), else as measured at the last detach. */
  usedBytes: number | undefined;
  /** Bytes the volume takes on the host's disk (all of it: its blocks are reserved). */
  allocatedBytes: number;
}

/** A session's volume attached on the host, for the sandbox driver to mount at mountPath. */
export interface AttachedVolume {
  mountPath: string;
  volumeId: string;
  hostPath: string;
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
  private readonly settings: SessionStorageSettings;
  private readonly log: Logger;
  private readonly now: () => Date;
  /** Volume ids attached to a live sandbox: never swept or deleted under it. */
  private readonly inUse = new Set<string>();

  constructor(options: {
    store: MetadataStore;
    volumes: VolumeStore;
    settings: SessionStorageSettings;
    log: Logger;
    now: () => Date;
  }) {
    this.store = options.store;
    this.volumes = options.volumes;
    this.settings = options.settings;
    this.log = options.log;
    this.now = options.now;
  }

  /** After a restart: unmount what the last run left, and drop volumes no record names. */
  async recover(): Promise<void> {
    await this.volumes.recover();
    const known = new Set((await this.store.listSessionStorage()).map((record) => record.volumeId));
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
        const hostPath = await this.attachVolume(record);
        attached.push({ mountPath, volumeId: record.volumeId, hostPath });
      }
      return attached;
    } catch (error) {
      await this.detach(attached);
      throw error;
    }
  }

  /** Flushes and unmounts; call once the sandbox that used the volumes is gone. */
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
        this.inUse.delete(volume.volumeId);
      }
    }
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
        };
      }),
    );
  }

  /** Deletes one session's storage; the session must not be running. False when it had none. */
  async removeSession(runtimeId: string, sessionId: string): Promise<boolean> {
    const records = (await this.store.listSessionStorage(runtimeId)).filter(
      (record) => record.sessionId === sessionId,
    );
    if (records.some((record) => this.inUse.has(record.volumeId))) {
      throw new BerthError(
        "ConflictException",
        `Session ${sessionId} is running; stop it (StopRuntimeSession) before deleting its storage`,
      );
    }
    for (const record of records) await this.removeRecord(record, "deleted by the operator");
    return records.length > 0;
  }

  /** Deletes every volume of a runtime (it is being deleted; its sessions are stopped). */
  async removeRuntime(runtimeId: string): Promise<void> {
    for (const record of await this.store.listSessionStorage(runtimeId)) {
      await this.removeRecord(record, "runtime deleted");
    }
  }

  /** Deletes storage unused for longer than the retention setting. */
  async sweep(): Promise<void> {
    const before = new Date(this.now().getTime() - this.settings.retentionMs).toISOString();
    for (const record of await this.store.listSessionStorage()) {
      if (record.lastUsedAt >= before || this.inUse.has(record.volumeId)) continue;
      await this.removeRecord(record, "retention period passed");
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
      await this.removeRecord(existing, `the endpoint now serves version ${version.version}`);
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
    };
    await this.store.putSessionStorage(record);
    return record;
  }

  private async attachVolume(record: SessionStorageRecord): Promise<string> {
    this.inUse.add(record.volumeId);
    try {
      // lastUsedAt is recorded at detach; while attached, inUse keeps the sweeper away.
      return await this.volumes.attach(record.volumeId);
    } catch (error) {
      this.inUse.delete(record.volumeId);
      throw attachFailure(record, error);
    }
  }

  private async removeRecord(record: SessionStorageRecord, reason: string): Promise<void> {
    await this.volumes.remove(record.volumeId);
    await this.store.deleteSessionStorage(record.volumeId);
    this.log.info("session storage deleted", {
      runtimeId: record.runtimeId,
      sessionId: record.sessionId,
      mountPath: record.mountPath,
      reason,
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

/** The server's disk is full: nothing the caller sent is wrong, and a retry alone will not do. */
function noRoomFailure(mountPath: string, error: NoRoomForVolumeError): BerthError {
  return new BerthError(
    "ServiceQuotaExceededException",
    `Berth's disk has no room for this session's storage at ${mountPath} (${error.message}). ` +
      "The agent was not started; free disk space on the server, lower sessionStorageBytes, or delete unused session storage",
    { cause: error },
  );
}
