import type {
  EndpointRecord,
  RuntimeRecord,
  RuntimeStatus,
  RuntimeSummary,
  RuntimeVersionRecord,
} from "../../core/model.ts";
import type { Page, SessionStorageRecord } from "../../core/store.ts";
import type { Row } from "./pool.ts";

/*
 * Rows as pg returns them, turned into the core's records. pg gives TEXT and INTEGER as string
 * and number, BIGINT as a string (it may not fit a double; ours always do), NULL as null.
 */

/** A TEXT column's value; anything else means the schema and the code disagree. */
export function text(row: Row, column: string): string {
  const value = row[column];
  if (typeof value !== "string") {
    throw new Error(`column ${column} holds ${typeof value}, expected text`);
  }
  return value;
}

function optionalText(row: Row, column: string): string | undefined {
  return row[column] === null ? undefined : text(row, column);
}

/** An INTEGER or BIGINT column's value as a number. */
export function integer(row: Row, column: string): number {
  const value = row[column];
  if (typeof value !== "number" && typeof value !== "string") {
    throw new Error(`column ${column} holds ${typeof value}, expected a number`);
  }
  return Number(value);
}

function optionalInteger(row: Row, column: string): number | undefined {
  return row[column] === null ? undefined : integer(row, column);
}

export function parseTags(row: Row): Record<string, string> {
  return JSON.parse(text(row, "tags")) as Record<string, string>;
}

export function toRuntime(row: Row): RuntimeRecord {
  return {
    id: text(row, "id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    latestVersion: integer(row, "latest_version"),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    tags: parseTags(row),
  };
}

export function toVersion(row: Row): RuntimeVersionRecord {
  const artifactDigest = optionalText(row, "artifact_digest");
  return {
    runtimeId: text(row, "runtime_id"),
    version: integer(row, "version"),
    config: JSON.parse(text(row, "config")) as RuntimeVersionRecord["config"],
    status: text(row, "status") as RuntimeStatus,
    failureReason: optionalText(row, "failure_reason"),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    ...(artifactDigest === undefined ? {} : { artifactDigest }),
  };
}

/** The columns toSummary reads, from runtimes r joined with runtime_versions v. */
export const summaryColumns =
  "r.id, r.name, r.arn, v.version, v.description, v.status, v.last_updated_at";

export function toSummary(row: Row): RuntimeSummary {
  return {
    runtimeId: text(row, "id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    version: integer(row, "version"),
    description: text(row, "description"),
    status: text(row, "status") as RuntimeStatus,
    lastUpdatedAt: text(row, "last_updated_at"),
  };
}

export function toEndpoint(row: Row): EndpointRecord {
  return {
    runtimeId: text(row, "runtime_id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    description: text(row, "description"),
    targetVersion: integer(row, "target_version"),
    liveVersion: optionalInteger(row, "live_version"),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    tags: parseTags(row),
  };
}

export function toSessionStorage(row: Row): SessionStorageRecord {
  return {
    runtimeId: text(row, "runtime_id"),
    sessionId: text(row, "session_id"),
    mountPath: text(row, "mount_path"),
    volumeId: text(row, "volume_id"),
    version: integer(row, "version"),
    sizeBytes: integer(row, "size_bytes"),
    usedBytes: optionalInteger(row, "used_bytes"),
    createdAt: text(row, "created_at"),
    lastUsedAt: text(row, "last_used_at"),
    heldBy: optionalText(row, "held_by"),
  };
}

/** Rows fetched with LIMIT limit + 1: the extra row only says that more follow. */
export function paginate<T>(
  rows: Row[],
  limit: number,
  keyColumn: string,
  map: (row: Row) => T,
): Page<T> {
  const pageRows = rows.slice(0, limit);
  const last = pageRows.at(-1);
  return {
    items: pageRows.map(map),
    lastKey: rows.length > limit && last !== undefined ? integer(last, keyColumn) : undefined,
  };
}
