import type {
  EndpointRecord,
  RuntimeRecord,
  RuntimeSummary,
  RuntimeVersionRecord,
} from "../../core/model.ts";
import type { IdempotencyRecord, Page, SessionStorageRecord } from "../../core/store.ts";

/*
 * Rows as the SQLite store's tables hold them: members that are objects there (configs, tags,
 * idempotent responses) are JSON text here too. So every read builds fresh objects that no
 * caller shares with the store, and values come back exactly as SQLite gives them (members set
 * to undefined dropped). Rows are never changed in place: an update replaces the row, which is
 * what lets a transaction work on a shallow copy of the tables.
 */

export type RuntimeRow = Readonly<Omit<RuntimeRecord, "tags"> & { seq: number; tags: string }>;

export type VersionRow = Readonly<
  Omit<RuntimeVersionRecord, "config" | "artifactDigest"> & {
    config: string;
    description: string;
    artifactDigest: string | undefined;
  }
>;

export type EndpointRow = Readonly<Omit<EndpointRecord, "tags"> & { seq: number; tags: string }>;

export type IdempotencyRow = Readonly<Omit<IdempotencyRecord, "response"> & { response: string }>;

export type SessionStorageRow = Readonly<SessionStorageRecord & { heldSince: string | undefined }>;

/** Everything the store holds. Maps are keyed as the SQLite tables' unique keys are. */
export class Tables {
  readonly runtimes = new Map<string, RuntimeRow>();
  readonly versions = new Map<string, VersionRow>();
  readonly endpoints = new Map<string, EndpointRow>();
  readonly idempotency = new Map<string, IdempotencyRow>();
  readonly sessionStorage = new Map<string, SessionStorageRow>();
  /** Like SQLite's AUTOINCREMENT: a seq is never given twice, even after its row is deleted. */
  lastRuntimeSeq = 0;
  lastEndpointSeq = 0;

  /** A copy to change in a transaction: rows are shared, as they are never changed in place. */
  copy(): Tables {
    const copy = new Tables();
    copyInto(copy.runtimes, this.runtimes);
    copyInto(copy.versions, this.versions);
    copyInto(copy.endpoints, this.endpoints);
    copyInto(copy.idempotency, this.idempotency);
    copyInto(copy.sessionStorage, this.sessionStorage);
    copy.lastRuntimeSeq = this.lastRuntimeSeq;
    copy.lastEndpointSeq = this.lastEndpointSeq;
    return copy;
  }
}

function copyInto<V>(target: Map<string, V>, source: Map<string, V>): void {
  for (const [key, value] of source) target.set(key, value);
}

/** A map key made of several columns, none of which can forge another's boundary. */
export function keyOf(...columns: (string | number)[]): string {
  return JSON.stringify(columns);
}

export function runtimeRow(runtime: RuntimeRecord, seq: number): RuntimeRow {
  return {
    seq,
    id: runtime.id,
    name: runtime.name,
    arn: runtime.arn,
    latestVersion: runtime.latestVersion,
    createdAt: runtime.createdAt,
    lastUpdatedAt: runtime.lastUpdatedAt,
    tags: JSON.stringify(runtime.tags),
  };
}

export function runtimeOf(row: RuntimeRow): RuntimeRecord {
  return {
    id: row.id,
    name: row.name,
    arn: row.arn,
    latestVersion: row.latestVersion,
    createdAt: row.createdAt,
    lastUpdatedAt: row.lastUpdatedAt,
    tags: parseTags(row.tags),
  };
}

/** A new version's row. As in SQLite, artifactDigest is set only when the version is prepared. */
export function versionRow(version: RuntimeVersionRecord): VersionRow {
  return {
    runtimeId: version.runtimeId,
    version: version.version,
    config: JSON.stringify(version.config),
    description: version.config.description,
    status: version.status,
    failureReason: version.failureReason,
    createdAt: version.createdAt,
    lastUpdatedAt: version.lastUpdatedAt,
    artifactDigest: undefined,
  };
}

export function versionOf(row: VersionRow): RuntimeVersionRecord {
  return {
    runtimeId: row.runtimeId,
    version: row.version,
    config: JSON.parse(row.config) as RuntimeVersionRecord["config"],
    status: row.status,
    failureReason: row.failureReason,
    createdAt: row.createdAt,
    lastUpdatedAt: row.lastUpdatedAt,
    ...(row.artifactDigest === undefined ? {} : { artifactDigest: row.artifactDigest }),
  };
}

export function summaryOf(runtime: RuntimeRow, version: VersionRow): RuntimeSummary {
  return {
    runtimeId: runtime.id,
    name: runtime.name,
    arn: runtime.arn,
    version: version.version,
    description: version.description,
    status: version.status,
    lastUpdatedAt: version.lastUpdatedAt,
  };
}

export function endpointRow(endpoint: EndpointRecord, seq: number): EndpointRow {
  return {
    seq,
    runtimeId: endpoint.runtimeId,
    name: endpoint.name,
    arn: endpoint.arn,
    description: endpoint.description,
    targetVersion: endpoint.targetVersion,
    liveVersion: endpoint.liveVersion,
    createdAt: endpoint.createdAt,
    lastUpdatedAt: endpoint.lastUpdatedAt,
    tags: JSON.stringify(endpoint.tags),
  };
}

export function endpointOf(row: EndpointRow): EndpointRecord {
  return {
    runtimeId: row.runtimeId,
    name: row.name,
    arn: row.arn,
    description: row.description,
    targetVersion: row.targetVersion,
    liveVersion: row.liveVersion,
    createdAt: row.createdAt,
    lastUpdatedAt: row.lastUpdatedAt,
    tags: parseTags(row.tags),
  };
}

export function idempotencyRow(record: IdempotencyRecord): IdempotencyRow {
  return {
    scope: record.scope,
    clientToken: record.clientToken,
    requestHash: record.requestHash,
    response: JSON.stringify(record.response),
    createdAt: record.createdAt,
  };
}

export function idempotencyOf(row: IdempotencyRow): IdempotencyRecord {
  return { ...row, response: JSON.parse(row.response) as unknown };
}

export function sessionStorageRow(record: SessionStorageRecord): SessionStorageRow {
  return {
    ...sessionStorageOf(record),
    // A record written already claimed was claimed when it was made.
    heldSince: record.heldBy === undefined ? undefined : record.createdAt,
  };
}

/** The record's own members (a row's claim time is kept, as SQLite's held_since, not shown). */
export function sessionStorageOf(row: SessionStorageRecord): SessionStorageRecord {
  return {
    runtimeId: row.runtimeId,
    sessionId: row.sessionId,
    mountPath: row.mountPath,
    volumeId: row.volumeId,
    version: row.version,
    sizeBytes: row.sizeBytes,
    usedBytes: row.usedBytes,
    createdAt: row.createdAt,
    lastUsedAt: row.lastUsedAt,
    heldBy: row.heldBy,
  };
}

export function parseTags(json: string): Record<string, string> {
  return JSON.parse(json) as Record<string, string>;
}

/** Rows already in key order, one more than the limit when there are more: SQLite's paging. */
export function paginate<R, T>(
  rows: readonly R[],
  limit: number,
  keyOfRow: (row: R) => number,
  map: (row: R) => T,
): Page<T> {
  const pageRows = rows.slice(0, limit);
  const last = pageRows.at(-1);
  return {
    items: pageRows.map(map),
    lastKey: rows.length > limit && last !== undefined ? keyOfRow(last) : undefined,
  };
}
