import type {
  EndpointRecord,
  RuntimeRecord,
  RuntimeStatus,
  RuntimeSummary,
  RuntimeVersionRecord,
} from "./model.ts";

/**
 * The first answer to a request that carried a clientToken, kept so a retry gets the same
 * answer. `scope` names the operation and its target, so one token can't cross operations.
 */
export interface IdempotencyRecord {
  scope: string;
  clientToken: string;
  requestHash: string;
  response: unknown;
  createdAt: string;
}

/** One session storage volume: the storage of (runtime, session id, mount path). */
export interface SessionStorageRecord {
  runtimeId: string;
  sessionId: string;
  mountPath: string;
  volumeId: string;
  /** The runtime version it was created for (or kept for, see keepOnVersionChangeTag). */
  version: number;
  sizeBytes: number;
  /** Bytes in use when it was last detached. */
  usedBytes: number | undefined;
  createdAt: string;
  lastUsedAt: string;
  /**
   * The Berth process whose sandbox has the volume attached (see claimSessionStorage), or
   * undefined while no sandbox uses it.
   */
  heldBy: string | undefined;
}

/**
 * A runtime or one of its endpoints, as a tagging request names it. `arn` must be the resource's
 * own ARN, so an ARN with the right id but another region or account names nothing.
 */
export interface TaggedResource {
  arn: string;
  runtimeId: string;
  /** undefined for the runtime itself. */
  endpointName: string | undefined;
}

/** A page of rows in insertion order, with the key to continue after the last one. */
export interface Page<T> {
  items: T[];
  lastKey: number | undefined;
}

export interface PageRequest {
  afterKey: number | undefined;
  limit: number;
}

/**
 * Metadata storage. Each mutating method is one atomic transaction, including the idempotency
 * record it is given, so a crash never leaves a created runtime without its token (or the
 * reverse). Records returned are the caller's own copies. Implementations: SQLite (embedded
 * default) and in-memory (tests); each passes test/contracts/metadata-store.test.ts, as a
 * PostgreSQL store would have to.
 */
export interface MetadataStore {
  /** Throws NameTakenError when a live runtime already has the name. */
  createRuntime(write: {
    runtime: RuntimeRecord;
    version: RuntimeVersionRecord;
    defaultEndpoint: EndpointRecord;
    idempotency: IdempotencyRecord | undefined;
  }): Promise<void>;
  /**
   * Adds the runtime's next version, makes it the latest and retargets DEFAULT at it. The store
   * numbers it (the highest version + 1) in the same transaction that inserts it, so concurrent
   * updates each get a number of their own; `idempotency` is built from that number. Resolves
   * to the new version, or undefined when the runtime is gone.
   */
  addRuntimeVersion(write: {
    draft: Omit<RuntimeVersionRecord, "version">;
    idempotency: (version: number) => IdempotencyRecord | undefined;
  }): Promise<RuntimeVersionRecord | undefined>;
  /** Settles a version's preparation; a READY version goes live on every endpoint targeting it. */
  setVersionStatus(change: {
    runtimeId: string;
    version: number;
    status: RuntimeStatus;
    failureReason: string | undefined;
    /** The image digest a container version was prepared from. */
    artifactDigest?: string;
    at: string;
  }): Promise<void>;
  deleteRuntime(runtimeId: string, idempotency: IdempotencyRecord | undefined): Promise<void>;
  deleteRuntimeVersion(
    runtimeId: string,
    version: number,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void>;

  findRuntime(runtimeId: string): Promise<RuntimeRecord | undefined>;
  findRuntimeVersion(runtimeId: string, version: number): Promise<RuntimeVersionRecord | undefined>;
  /** Runtimes with their latest version, in creation order. */
  listRuntimes(page: PageRequest): Promise<Page<RuntimeSummary>>;
  listRuntimeVersions(runtimeId: string, page: PageRequest): Promise<Page<RuntimeSummary>>;
  /** Every image digest a version still pins (see RuntimeVersionRecord.artifactDigest). */
  listArtifactDigests(): Promise<string[]>;
  /** Versions whose preparation had not finished, e.g. when the server stopped mid-way. */
  listUnsettledVersions(): Promise<RuntimeVersionRecord[]>;

  /** Throws NameTakenError when the runtime already has an endpoint of that name. */
  createEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void>;
  updateEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void>;
  deleteEndpoint(
    runtimeId: string,
    name: string,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void>;
  findEndpoint(runtimeId: string, name: string): Promise<EndpointRecord | undefined>;
  listEndpoints(runtimeId: string, page: PageRequest): Promise<Page<EndpointRecord>>;

  /** The resource's tags; undefined when no resource has that ARN. */
  findTags(resource: TaggedResource): Promise<Record<string, string> | undefined>;
  /**
   * Replaces the resource's tags with `change(current)` in one transaction, so concurrent
   * changes never lose each other's tags; an error thrown by `change` leaves them as they were.
   * Resolves to the new tags, or undefined when no resource has that ARN.
   */
  updateTags(
    resource: TaggedResource,
    change: (current: Record<string, string>) => Record<string, string>,
  ): Promise<Record<string, string> | undefined>;

  findIdempotency(scope: string, clientToken: string): Promise<IdempotencyRecord | undefined>;
  /** Forgets idempotency records created before `before`. */
  expireIdempotency(before: string): Promise<void>;

  findSessionStorage(
    runtimeId: string,
    sessionId: string,
    mountPath: string,
  ): Promise<SessionStorageRecord | undefined>;
  /** Every volume, or a runtime's, oldest first (by createdAt). */
  listSessionStorage(runtimeId?: string): Promise<SessionStorageRecord[]>;
  /**
   * Inserts a new record, held by record.heldBy. Rejects a record whose volume id, or whose
   * (runtime, session, mount path), another record already has.
   */
  putSessionStorage(record: SessionStorageRecord): Promise<void>;
  /** Records a use; usedBytes undefined keeps the last measurement. */
  touchSessionStorage(
    volumeId: string,
    lastUsedAt: string,
    usedBytes: number | undefined,
  ): Promise<void>;
  setSessionStorageVersion(volumeId: string, version: number): Promise<void>;
  /** Deletes the record whether or not it is claimed: the caller checks heldBy first. */
  deleteSessionStorage(volumeId: string): Promise<void>;

  /*
   * Claims say which volumes a sandbox is using. They live in the store, not in one process's
   * memory, so that two Berth processes sharing a store never attach one volume twice, and a
   * volume in use is never swept or deleted by a process that did not attach it.
   */

  /**
   * Claims the volume for `holder` (one Berth process), as one atomic step. True when it was
   * free or already held by `holder` (it is then held by `holder`, claimed `at`); false when
   * another holder has it, or no record names it.
   */
  claimSessionStorage(volumeId: string, holder: string, at: string): Promise<boolean>;
  /** Frees the volume if `holder` holds it; a claim held by anyone else is left alone. */
  releaseSessionStorage(volumeId: string, holder: string): Promise<void>;
  /**
   * Frees every volume `holder` holds: a process that restarts under the same name has no
   * sandbox left from its previous run, so its old claims name nothing in use.
   */
  releaseSessionStorageClaims(holder: string): Promise<void>;

  close(): Promise<void>;
}

export class NameTakenError extends Error {
  readonly takenName: string;
  constructor(takenName: string) {
    super(`name ${takenName} is taken`);
    this.takenName = takenName;
  }
}

/** Thrown by a mutation whose idempotency record lost a race to an identical retry. */
export class DuplicateClientTokenError extends Error {}
