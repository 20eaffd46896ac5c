import { chmodSync } from "node:fs";
import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import type {
  EndpointRecord,
  RuntimeRecord,
  RuntimeStatus,
  RuntimeSummary,
  RuntimeVersionRecord,
} from "../../core/model.ts";
import {
  DuplicateClientTokenError,
  NameTakenError,
  type IdempotencyRecord,
  type SessionStorageRecord,
  type MetadataStore,
  type TaggedResource,
  type Page,
  type PageRequest,
} from "../../core/store.ts";
import { migrations } from "./migrations.ts";

type Row = Record<string, SQLInputValue>;

/**
 * The embedded metadata store: one SQLite file in WAL mode with synchronous=FULL, so a
 * committed change survives a kill -9 of the server (and a power cut). node:sqlite is
 * synchronous, so each method's transaction runs without interleaving.
 */
export class SqliteMetadataStore implements MetadataStore {
  private readonly db: DatabaseSync;
  /** Compiled statements by SQL text: compiling costs more than running most of these queries. */
  private readonly statements = new Map<string, StatementSync>();

  constructor(path: string) {
    this.db = new DatabaseSync(path);
    chmodSync(path, 0o600);
    this.db.exec(
      "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
    );
    this.migrate();
  }

  /** The schema version the database is at, for operators and tests. */
  schemaVersion(): number {
    const row = this.db.prepare("SELECT MAX(version) AS version FROM schema_migrations").get();
    return Number(row?.["version"] ?? 0);
  }

  private migrate(): void {
    this.db.exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    );
    const current = this.schemaVersion();
    for (const migration of migrations.filter((candidate) => candidate.version > current)) {
      this.transaction(() => {
        this.db.exec(migration.sql);
        this.db
          .prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
          .run(migration.version, new Date().toISOString());
      });
    }
  }

  private transaction<T>(work: () => T): T {
    this.db.exec("BEGIN IMMEDIATE");
    try {
      const result = work();
      this.db.exec("COMMIT");
      return result;
    } catch (error) {
      this.db.exec("ROLLBACK");
      throw error;
    }
  }

  private statement(sql: string): StatementSync {
    let statement = this.statements.get(sql);
    if (statement === undefined) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  private run(sql: string, params: Row = {}): void {
    this.statement(sql).run(params);
  }

  /** Runs a write and returns how many rows it changed. */
  private changes(sql: string, params: Row): number {
    return Number(this.statement(sql).run(params).changes);
  }

  private get(sql: string, params: Row = {}): Row | undefined {
    return this.statement(sql).get(params);
  }

  private all(sql: string, params: Row = {}): Row[] {
    return this.statement(sql).all(params);
  }

  private saveIdempotency(record: IdempotencyRecord | undefined): void {
    if (record === undefined) return;
    try {
      this.run(
        `INSERT INTO idempotency (scope, client_token, request_hash, response, created_at)
         VALUES (:scope, :token, :hash, :response, :createdAt)`,
        {
          scope: record.scope,
          token: record.clientToken,
          hash: record.requestHash,
          response: JSON.stringify(record.response),
          createdAt: record.createdAt,
        },
      );
    } catch (error) {
      if (isUniqueViolation(error)) throw new DuplicateClientTokenError();
      throw error;
    }
  }

  createRuntime(write: Parameters<MetadataStore["createRuntime"]>[0]): Promise<void> {
    const { runtime, version, defaultEndpoint, idempotency } = write;
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        try {
          this.run(
            `INSERT INTO runtimes (id, name, arn, latest_version, created_at, last_updated_at, tags)
             VALUES (:id, :name, :arn, :latest, :createdAt, :lastUpdatedAt, :tags)`,
            {
              id: runtime.id,
              name: runtime.name,
              arn: runtime.arn,
              latest: runtime.latestVersion,
              createdAt: runtime.createdAt,
              lastUpdatedAt: runtime.lastUpdatedAt,
              tags: JSON.stringify(runtime.tags),
            },
          );
        } catch (error) {
          if (isUniqueViolation(error)) throw new NameTakenError(runtime.name);
          throw error;
        }
        this.insertVersion(version);
        this.insertEndpoint(defaultEndpoint);
      });
    });
  }

  addRuntimeVersion(
    write: Parameters<MetadataStore["addRuntimeVersion"]>[0],
  ): Promise<RuntimeVersionRecord | undefined> {
    const { draft, idempotency } = write;
    return settle(() =>
      this.transaction(() => {
        const latest = this.get(
          "SELECT MAX(version) AS latest FROM runtime_versions WHERE runtime_id = :id",
          { id: draft.runtimeId },
        )?.["latest"];
        if (latest === null || latest === undefined) return undefined; // the runtime is gone
        const version: RuntimeVersionRecord = { ...draft, version: Number(latest) + 1 };
        this.saveIdempotency(idempotency(version.version));
        this.insertVersion(version);
        const params = { id: version.runtimeId, version: version.version, at: version.createdAt };
        this.run(
          "UPDATE runtimes SET latest_version = :version, last_updated_at = :at WHERE id = :id",
          params,
        );
        this.run(
          "UPDATE endpoints SET target_version = :version, last_updated_at = :at WHERE runtime_id = :id AND name = 'DEFAULT'",
          params,
        );
        return version;
      }),
    );
  }

  setVersionStatus(change: Parameters<MetadataStore["setVersionStatus"]>[0]): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        const params = { id: change.runtimeId, version: change.version, at: change.at };
        this.run(
          `UPDATE runtime_versions SET status = :status, failure_reason = :reason, last_updated_at = :at,
             artifact_digest = :digest
           WHERE runtime_id = :id AND version = :version`,
          {
            ...params,
            status: change.status,
            reason: change.failureReason ?? null,
            digest: change.artifactDigest ?? null,
          },
        );
        if (change.status === "READY") {
          this.run(
            `UPDATE endpoints SET live_version = :version, last_updated_at = :at
             WHERE runtime_id = :id AND target_version = :version`,
            params,
          );
        }
      });
    });
  }

  deleteRuntime(runtimeId: string, idempotency: IdempotencyRecord | undefined): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        this.run("DELETE FROM runtimes WHERE id = :id", { id: runtimeId });
      });
    });
  }

  deleteRuntimeVersion(
    runtimeId: string,
    version: number,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        this.run("DELETE FROM runtime_versions WHERE runtime_id = :id AND version = :version", {
          id: runtimeId,
          version,
        });
      });
    });
  }

  findRuntime(runtimeId: string): Promise<RuntimeRecord | undefined> {
    return settle(() => {
      const row = this.get("SELECT * FROM runtimes WHERE id = :id", { id: runtimeId });
      return row === undefined ? undefined : toRuntime(row);
    });
  }

  findRuntimeVersion(
    runtimeId: string,
    version: number,
  ): Promise<RuntimeVersionRecord | undefined> {
    return settle(() => {
      const row = this.get(
        "SELECT * FROM runtime_versions WHERE runtime_id = :id AND version = :version",
        {
          id: runtimeId,
          version,
        },
      );
      return row === undefined ? undefined : toVersion(row);
    });
  }

  listRuntimes(page: PageRequest): Promise<Page<RuntimeSummary>> {
    return settle(() => {
      const rows = this.all(
        `SELECT ${summaryColumns}, r.seq FROM runtimes r
         JOIN runtime_versions v ON v.runtime_id = r.id AND v.version = r.latest_version
         WHERE r.seq > :after ORDER BY r.seq LIMIT :limit`,
        { after: page.afterKey ?? 0, limit: page.limit + 1 },
      );
      return paginate(rows, page.limit, "seq", toSummary);
    });
  }

  listRuntimeVersions(runtimeId: string, page: PageRequest): Promise<Page<RuntimeSummary>> {
    return settle(() => {
      const rows = this.all(
        `SELECT ${summaryColumns} FROM runtime_versions v JOIN runtimes r ON r.id = v.runtime_id
         WHERE v.runtime_id = :id AND v.version > :after ORDER BY v.version LIMIT :limit`,
        { id: runtimeId, after: page.afterKey ?? 0, limit: page.limit + 1 },
      );
      return paginate(rows, page.limit, "version", toSummary);
    });
  }

  listArtifactDigests(): Promise<string[]> {
    return settle(() =>
      this.all(
        "SELECT DISTINCT artifact_digest FROM runtime_versions WHERE artifact_digest IS NOT NULL",
      ).map((row) => text(row, "artifact_digest")),
    );
  }

  listUnsettledVersions(): Promise<RuntimeVersionRecord[]> {
    return settle(() =>
      this.all(
        "SELECT * FROM runtime_versions WHERE status IN ('CREATING', 'UPDATING') ORDER BY created_at",
      ).map(toVersion),
    );
  }

  createEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        try {
          this.insertEndpoint(endpoint);
        } catch (error) {
          if (isUniqueViolation(error)) throw new NameTakenError(endpoint.name);
          throw error;
        }
      });
    });
  }

  updateEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        this.run(
          `UPDATE endpoints SET description = :description, target_version = :target, live_version = :live,
             last_updated_at = :lastUpdatedAt WHERE runtime_id = :runtimeId AND name = :name`,
          {
            description: endpoint.description,
            target: endpoint.targetVersion,
            live: endpoint.liveVersion ?? null,
            lastUpdatedAt: endpoint.lastUpdatedAt,
            runtimeId: endpoint.runtimeId,
            name: endpoint.name,
          },
        );
      });
    });
  }

  deleteEndpoint(
    runtimeId: string,
    name: string,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return settle(() => {
      this.transaction(() => {
        this.saveIdempotency(idempotency);
        this.run("DELETE FROM endpoints WHERE runtime_id = :id AND name = :name", {
          id: runtimeId,
          name,
        });
      });
    });
  }

  findEndpoint(runtimeId: string, name: string): Promise<EndpointRecord | undefined> {
    return settle(() => {
      const row = this.get("SELECT * FROM endpoints WHERE runtime_id = :id AND name = :name", {
        id: runtimeId,
        name,
      });
      return row === undefined ? undefined : toEndpoint(row);
    });
  }

  listEndpoints(runtimeId: string, page: PageRequest): Promise<Page<EndpointRecord>> {
    return settle(() => {
      const rows = this.all(
        "SELECT * FROM endpoints WHERE runtime_id = :id AND seq > :after ORDER BY seq LIMIT :limit",
        { id: runtimeId, after: page.afterKey ?? 0, limit: page.limit + 1 },
      );
      return paginate(rows, page.limit, "seq", toEndpoint);
    });
  }

  findTags(resource: TaggedResource): Promise<Record<string, string> | undefined> {
    return settle(() => this.readTags(resource));
  }

  updateTags(
    resource: TaggedResource,
    change: (current: Record<string, string>) => Record<string, string>,
  ): Promise<Record<string, string> | undefined> {
    return settle(() =>
      this.transaction(() => {
        const current = this.readTags(resource);
        if (current === undefined) return undefined;
        const next = change(current);
        const { sql, params } = tagsRow(resource);
        this.run(`UPDATE ${sql.table} SET tags = :tags WHERE ${sql.where}`, {
          ...params,
          tags: JSON.stringify(next),
        });
        return next;
      }),
    );
  }

  private readTags(resource: TaggedResource): Record<string, string> | undefined {
    const { sql, params } = tagsRow(resource);
    const row = this.get(`SELECT tags FROM ${sql.table} WHERE ${sql.where}`, params);
    return row === undefined ? undefined : parseTags(row);
  }

  findIdempotency(scope: string, clientToken: string): Promise<IdempotencyRecord | undefined> {
    return settle(() => {
      const row = this.get(
        "SELECT * FROM idempotency WHERE scope = :scope AND client_token = :token",
        {
          scope,
          token: clientToken,
        },
      );
      if (row === undefined) return undefined;
      return {
        scope,
        clientToken,
        requestHash: text(row, "request_hash"),
        response: JSON.parse(text(row, "response")) as unknown,
        createdAt: text(row, "created_at"),
      };
    });
  }

  expireIdempotency(before: string): Promise<void> {
    return settle(() => {
      this.run("DELETE FROM idempotency WHERE created_at < :before", { before });
    });
  }

  findSessionStorage(
    runtimeId: string,
    sessionId: string,
    mountPath: string,
  ): Promise<SessionStorageRecord | undefined> {
    return settle(() => {
      const row = this.get(
        `SELECT * FROM session_storage
         WHERE runtime_id = :runtimeId AND session_id = :sessionId AND mount_path = :mountPath`,
        { runtimeId, sessionId, mountPath },
      );
      return row === undefined ? undefined : toSessionStorage(row);
    });
  }

  listSessionStorage(runtimeId?: string): Promise<SessionStorageRecord[]> {
    return settle(() =>
      (runtimeId === undefined
        ? this.all("SELECT * FROM session_storage ORDER BY created_at")
        : this.all(
            "SELECT * FROM session_storage WHERE runtime_id = :runtimeId ORDER BY created_at",
            { runtimeId },
          )
      ).map(toSessionStorage),
    );
  }

  putSessionStorage(record: SessionStorageRecord): Promise<void> {
    return settle(() => {
      this.run(
        `INSERT INTO session_storage (volume_id, runtime_id, session_id, mount_path, version,
           size_bytes, used_bytes, created_at, last_used_at, held_by, held_since)
         VALUES (:volumeId, :runtimeId, :sessionId, :mountPath, :version, :sizeBytes, :usedBytes,
           :createdAt, :lastUsedAt, :heldBy, :heldSince)`,
        {
          volumeId: record.volumeId,
          runtimeId: record.runtimeId,
          sessionId: record.sessionId,
          mountPath: record.mountPath,
          version: record.version,
          sizeBytes: record.sizeBytes,
          usedBytes: record.usedBytes ?? null,
          createdAt: record.createdAt,
          lastUsedAt: record.lastUsedAt,
          heldBy: record.heldBy ?? null,
          // A record written already claimed was claimed when it was made.
          heldSince: record.heldBy === undefined ? null : record.createdAt,
        },
      );
    });
  }

  touchSessionStorage(
    volumeId: string,
    lastUsedAt: string,
    usedBytes: number | undefined,
  ): Promise<void> {
    return settle(() => {
      this.run(
        `UPDATE session_storage SET last_used_at = :lastUsedAt,
           used_bytes = COALESCE(:usedBytes, used_bytes) WHERE volume_id = :volumeId`,
        { volumeId, lastUsedAt, usedBytes: usedBytes ?? null },
      );
    });
  }

  setSessionStorageVersion(volumeId: string, version: number): Promise<void> {
    return settle(() => {
      this.run("UPDATE session_storage SET version = :version WHERE volume_id = :volumeId", {
        volumeId,
        version,
      });
    });
  }

  deleteSessionStorage(volumeId: string): Promise<void> {
    return settle(() => {
      this.run("DELETE FROM session_storage WHERE volume_id = :volumeId", { volumeId });
    });
  }

  claimSessionStorage(volumeId: string, holder: string, at: string): Promise<boolean> {
    // One statement: the check and the claim happen under SQLite's write lock, so two
    // processes (or two calls) racing for a free volume cannot both win.
    return settle(
      () =>
        this.changes(
          `UPDATE session_storage SET held_by = :holder, held_since = :at
           WHERE volume_id = :volumeId AND (held_by IS NULL OR held_by = :holder)`,
          { volumeId, holder, at },
        ) > 0,
    );
  }

  releaseSessionStorage(volumeId: string, holder: string): Promise<void> {
    return settle(() => {
      this.run(
        `UPDATE session_storage SET held_by = NULL, held_since = NULL
         WHERE volume_id = :volumeId AND held_by = :holder`,
        { volumeId, holder },
      );
    });
  }

  releaseSessionStorageClaims(holder: string): Promise<void> {
    return settle(() => {
      this.run(
        "UPDATE session_storage SET held_by = NULL, held_since = NULL WHERE held_by = :holder",
        { holder },
      );
    });
  }

  close(): Promise<void> {
    return settle(() => {
      if (this.db.isOpen) this.db.close();
    });
  }

  private insertVersion(version: RuntimeVersionRecord): void {
    this.run(
      `INSERT INTO runtime_versions (runtime_id, version, config, description, status, failure_reason, created_at, last_updated_at)
       VALUES (:id, :version, :config, :description, :status, :reason, :createdAt, :lastUpdatedAt)`,
      {
        description: version.config.description,
        id: version.runtimeId,
        version: version.version,
        config: JSON.stringify(version.config),
        status: version.status,
        reason: version.failureReason ?? null,
        createdAt: version.createdAt,
        lastUpdatedAt: version.lastUpdatedAt,
      },
    );
  }

  private insertEndpoint(endpoint: EndpointRecord): void {
    this.run(
      `INSERT INTO endpoints (runtime_id, name, arn, description, target_version, live_version, created_at, last_updated_at, tags)
       VALUES (:runtimeId, :name, :arn, :description, :target, :live, :createdAt, :lastUpdatedAt, :tags)`,
      {
        runtimeId: endpoint.runtimeId,
        name: endpoint.name,
        arn: endpoint.arn,
        description: endpoint.description,
        target: endpoint.targetVersion,
        live: endpoint.liveVersion ?? null,
        createdAt: endpoint.createdAt,
        lastUpdatedAt: endpoint.lastUpdatedAt,
        tags: JSON.stringify(endpoint.tags),
      },
    );
  }
}

/** Where a resource's tags live: its own row, found by primary key and checked against its ARN. */
function tagsRow(resource: TaggedResource): {
  sql: { table: string; where: string };
  params: Row;
} {
  if (resource.endpointName === undefined) {
    return {
      sql: { table: "runtimes", where: "id = :runtimeId AND arn = :arn" },
      params: { runtimeId: resource.runtimeId, arn: resource.arn },
    };
  }
  return {
    sql: { table: "endpoints", where: "runtime_id = :runtimeId AND name = :name AND arn = :arn" },
    params: { runtimeId: resource.runtimeId, name: resource.endpointName, arn: resource.arn },
  };
}

function parseTags(row: Row): Record<string, string> {
  return JSON.parse(text(row, "tags")) as Record<string, string>;
}

function toSessionStorage(row: Row): SessionStorageRecord {
  return {
    runtimeId: text(row, "runtime_id"),
    sessionId: text(row, "session_id"),
    mountPath: text(row, "mount_path"),
    volumeId: text(row, "volume_id"),
    version: Number(row["version"]),
    sizeBytes: Number(row["size_bytes"]),
    usedBytes: row["used_bytes"] === null ? undefined : Number(row["used_bytes"]),
    createdAt: text(row, "created_at"),
    lastUsedAt: text(row, "last_used_at"),
    heldBy: row["held_by"] === null ? undefined : text(row, "held_by"),
  };
}

/** Runs synchronous database work and reports its outcome as a promise, as the interface asks. */
function settle<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (error) {
    return Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
}

function paginate<T>(rows: Row[], limit: number, keyColumn: string, map: (row: Row) => T): Page<T> {
  const pageRows = rows.slice(0, limit);
  const last = pageRows.at(-1);
  return {
    items: pageRows.map(map),
    lastKey: rows.length > limit && last !== undefined ? Number(last[keyColumn]) : undefined,
  };
}

function isUniqueViolation(error: unknown): boolean {
  return error instanceof Error && error.message.includes("UNIQUE constraint failed");
}

/** A TEXT column's value; anything else means the schema and the code disagree. */
function text(row: Row, column: string): string {
  const value = row[column];
  if (typeof value !== "string")
    throw new Error(`column ${column} holds ${typeof value}, expected text`);
  return value;
}

function optionalNumber(value: SQLInputValue | undefined): number | undefined {
  return value === null || value === undefined ? undefined : Number(value);
}

function toRuntime(row: Row): RuntimeRecord {
  return {
    id: text(row, "id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    latestVersion: Number(row["latest_version"]),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    tags: parseTags(row),
  };
}

function toVersion(row: Row): RuntimeVersionRecord {
  return {
    runtimeId: text(row, "runtime_id"),
    version: Number(row["version"]),
    config: JSON.parse(text(row, "config")) as RuntimeVersionRecord["config"],
    status: text(row, "status") as RuntimeStatus,
    failureReason: row["failure_reason"] === null ? undefined : text(row, "failure_reason"),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    ...(row["artifact_digest"] === null ? {} : { artifactDigest: text(row, "artifact_digest") }),
  };
}

const summaryColumns = "r.id, r.name, r.arn, v.version, v.description, v.status, v.last_updated_at";

function toSummary(row: Row): RuntimeSummary {
  return {
    runtimeId: text(row, "id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    version: Number(row["version"]),
    description: text(row, "description"),
    status: text(row, "status") as RuntimeStatus,
    lastUpdatedAt: text(row, "last_updated_at"),
  };
}

function toEndpoint(row: Row): EndpointRecord {
  return {
    runtimeId: text(row, "runtime_id"),
    name: text(row, "name"),
    arn: text(row, "arn"),
    description: text(row, "description"),
    targetVersion: Number(row["target_version"]),
    liveVersion: optionalNumber(row["live_version"]),
    createdAt: text(row, "created_at"),
    lastUpdatedAt: text(row, "last_updated_at"),
    tags: parseTags(row),
  };
}
