import type {
  EndpointRecord,
  RuntimeRecord,
  RuntimeSummary,
  RuntimeVersionRecord,
} from "../../core/model.ts";
import {
  DuplicateClientTokenError,
  NameTakenError,
  type IdempotencyRecord,
  type MetadataStore,
  type Page,
  type PageRequest,
  type SessionStorageRecord,
  type TaggedResource,
} from "../../core/store.ts";
import { sqlState, uniqueViolation } from "./database-errors.ts";
import { isLive, touchNode } from "./leases.ts";
import { PooledStore, type Queryable } from "./pool.ts";
import {
  integer,
  paginate,
  parseTags,
  summaryColumns,
  text,
  toEndpoint,
  toRuntime,
  toSessionStorage,
  toSummary,
  toVersion,
} from "./rows.ts";

/**
 * The metadata store of a cluster: the SQLite store's behaviour (the contract suite holds both
 * to it) on PostgreSQL, shared by every node. Each mutation is one transaction with its
 * idempotency record; where one reads before it writes, it locks what it read (FOR UPDATE), so
 * two nodes never both act on the same reading.
 */
export class PostgresMetadataStore extends PooledStore implements MetadataStore {
  /** A change and its idempotency record, in one transaction. */
  private mutation(
    idempotency: IdempotencyRecord | undefined,
    change: (client: Queryable) => Promise<unknown>,
  ): Promise<void> {
    return this.pool.transaction(async (client) => {
      await saveIdempotency(client, idempotency);
      await change(client);
    });
  }

  createRuntime(write: Parameters<MetadataStore["createRuntime"]>[0]): Promise<void> {
    const { runtime, version, defaultEndpoint, idempotency } = write;
    return this.mutation(idempotency, async (client) => {
      await refuseTakenName(runtime.name, () =>
        client.query(
          `INSERT INTO runtimes (id, name, arn, latest_version, created_at, last_updated_at, tags)
           VALUES ($1, $2, $3, $4, $5, $6, $7)`,
          [
            runtime.id,
            runtime.name,
            runtime.arn,
            runtime.latestVersion,
            runtime.createdAt,
            runtime.lastUpdatedAt,
            JSON.stringify(runtime.tags),
          ],
        ),
      );
      await insertVersion(client, version);
      await insertEndpoint(client, defaultEndpoint);
    });
  }

  addRuntimeVersion(
    write: Parameters<MetadataStore["addRuntimeVersion"]>[0],
  ): Promise<RuntimeVersionRecord | undefined> {
    const { draft, idempotency } = write;
    return this.pool.transaction(async (client) => {
      // The runtime's row, locked: concurrent updates (on any node) number one after another.
      const runtime = await client.query("SELECT 1 FROM runtimes WHERE id = $1 FOR NO KEY UPDATE", [
        draft.runtimeId,
      ]);
      if (runtime.rows.length === 0) return undefined; // the runtime is gone
      const latest = await client.query(
        "SELECT MAX(version) AS latest FROM runtime_versions WHERE runtime_id = $1",
        [draft.runtimeId],
      );
      const latestRow = latest.rows[0];
      if (latestRow === undefined || latestRow["latest"] === null) return undefined;
      const version: RuntimeVersionRecord = {
        ...draft,
        version: integer(latestRow, "latest") + 1,
      };
      await saveIdempotency(client, idempotency(version.version));
      await insertVersion(client, version);
      const parameters = [version.runtimeId, version.version, version.createdAt];
      await client.query(
        "UPDATE runtimes SET latest_version = $2, last_updated_at = $3 WHERE id = $1",
        parameters,
      );
      await client.query(
        `UPDATE endpoints SET target_version = $2, last_updated_at = $3
         WHERE runtime_id = $1 AND name = 'DEFAULT'`,
        parameters,
      );
      return version;
    });
  }

  setVersionStatus(change: Parameters<MetadataStore["setVersionStatus"]>[0]): Promise<void> {
    return this.pool.transaction(async (client) => {
      await client.query(
        `UPDATE runtime_versions SET status = $3, failure_reason = $4, last_updated_at = $5,
           artifact_digest = $6
         WHERE runtime_id = $1 AND version = $2`,
        [
          change.runtimeId,
          change.version,
          change.status,
          change.failureReason ?? null,
          change.at,
          change.artifactDigest ?? null,
        ],
      );
      if (change.status === "READY") {
        await client.query(
          `UPDATE endpoints SET live_version = $2, last_updated_at = $3
           WHERE runtime_id = $1 AND target_version = $2`,
          [change.runtimeId, change.version, change.at],
        );
      }
    });
  }

  deleteRuntime(runtimeId: string, idempotency: IdempotencyRecord | undefined): Promise<void> {
    return this.mutation(idempotency, (client) =>
      client.query("DELETE FROM runtimes WHERE id = $1", [runtimeId]),
    );
  }

  deleteRuntimeVersion(
    runtimeId: string,
    version: number,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (client) =>
      client.query("DELETE FROM runtime_versions WHERE runtime_id = $1 AND version = $2", [
        runtimeId,
        version,
      ]),
    );
  }

  async findRuntime(runtimeId: string): Promise<RuntimeRecord | undefined> {
    const [row] = await this.rows("SELECT * FROM runtimes WHERE id = $1", [runtimeId]);
    return row === undefined ? undefined : toRuntime(row);
  }

  async findRuntimeVersion(
    runtimeId: string,
    version: number,
  ): Promise<RuntimeVersionRecord | undefined> {
    const [row] = await this.rows(
      "SELECT * FROM runtime_versions WHERE runtime_id = $1 AND version = $2",
      [runtimeId, version],
    );
    return row === undefined ? undefined : toVersion(row);
  }

  async listRuntimes(page: PageRequest): Promise<Page<RuntimeSummary>> {
    const rows = await this.rows(
      `SELECT ${summaryColumns}, r.seq FROM runtimes r
       JOIN runtime_versions v ON v.runtime_id = r.id AND v.version = r.latest_version
       WHERE r.seq > $1 ORDER BY r.seq LIMIT $2`,
      [page.afterKey ?? 0, page.limit + 1],
    );
    return paginate(rows, page.limit, "seq", toSummary);
  }

  async listRuntimeVersions(runtimeId: string, page: PageRequest): Promise<Page<RuntimeSummary>> {
    const rows = await this.rows(
      `SELECT ${summaryColumns} FROM runtime_versions v JOIN runtimes r ON r.id = v.runtime_id
       WHERE v.runtime_id = $1 AND v.version > $2 ORDER BY v.version LIMIT $3`,
      [runtimeId, page.afterKey ?? 0, page.limit + 1],
    );
    return paginate(rows, page.limit, "version", toSummary);
  }

  async listArtifactDigests(): Promise<string[]> {
    const rows = await this.rows(
      "SELECT DISTINCT artifact_digest FROM runtime_versions WHERE artifact_digest IS NOT NULL",
    );
    return rows.map((row) => text(row, "artifact_digest"));
  }

  async listUnsettledVersions(): Promise<RuntimeVersionRecord[]> {
    const rows = await this.rows(
      "SELECT * FROM runtime_versions WHERE status IN ('CREATING', 'UPDATING') ORDER BY created_at",
    );
    return rows.map(toVersion);
  }

  createEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (client) =>
      refuseTakenName(endpoint.name, () => insertEndpoint(client, endpoint)),
    );
  }

  updateEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (client) =>
      client.query(
        `UPDATE endpoints SET description = $3, target_version = $4, live_version = $5,
           last_updated_at = $6 WHERE runtime_id = $1 AND name = $2`,
        [
          endpoint.runtimeId,
          endpoint.name,
          endpoint.description,
          endpoint.targetVersion,
          endpoint.liveVersion ?? null,
          endpoint.lastUpdatedAt,
        ],
      ),
    );
  }

  deleteEndpoint(
    runtimeId: string,
    name: string,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (client) =>
      client.query("DELETE FROM endpoints WHERE runtime_id = $1 AND name = $2", [runtimeId, name]),
    );
  }

  async findEndpoint(runtimeId: string, name: string): Promise<EndpointRecord | undefined> {
    const [row] = await this.rows("SELECT * FROM endpoints WHERE runtime_id = $1 AND name = $2", [
      runtimeId,
      name,
    ]);
    return row === undefined ? undefined : toEndpoint(row);
  }

  async listEndpoints(runtimeId: string, page: PageRequest): Promise<Page<EndpointRecord>> {
    const rows = await this.rows(
      "SELECT * FROM endpoints WHERE runtime_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
      [runtimeId, page.afterKey ?? 0, page.limit + 1],
    );
    return paginate(rows, page.limit, "seq", toEndpoint);
  }

  findTags(resource: TaggedResource): Promise<Record<string, string> | undefined> {
    return readTags(this.pool, resource, "");
  }

  updateTags(
    resource: TaggedResource,
    change: (current: Record<string, string>) => Record<string, string>,
  ): Promise<Record<string, string> | undefined> {
    return this.pool.transaction(async (client) => {
      // Locked until commit: a concurrent change (on any node) reads what this one wrote.
      const current = await readTags(client, resource, "FOR NO KEY UPDATE");
      if (current === undefined) return undefined;
      const next = change(current);
      const { table, where, parameters } = tagsRow(resource);
      await client.query(`UPDATE ${table} SET tags = $${parameters.length + 1} WHERE ${where}`, [
        ...parameters,
        JSON.stringify(next),
      ]);
      return next;
    });
  }

  async findIdempotency(
    scope: string,
    clientToken: string,
  ): Promise<IdempotencyRecord | undefined> {
    const [row] = await this.rows(
      "SELECT * FROM idempotency WHERE scope = $1 AND client_token = $2",
      [scope, clientToken],
    );
    if (row === undefined) return undefined;
    return {
      scope,
      clientToken,
      requestHash: text(row, "request_hash"),
      response: JSON.parse(text(row, "response")) as unknown,
      createdAt: text(row, "created_at"),
    };
  }

  async expireIdempotency(before: string): Promise<void> {
    await this.changes("DELETE FROM idempotency WHERE created_at < $1", [before]);
  }

  async findSessionStorage(
    runtimeId: string,
    sessionId: string,
    mountPath: string,
  ): Promise<SessionStorageRecord | undefined> {
    const [row] = await this.rows(
      `SELECT * FROM session_storage
       WHERE runtime_id = $1 AND session_id = $2 AND mount_path = $3`,
      [runtimeId, sessionId, mountPath],
    );
    return row === undefined ? undefined : toSessionStorage(row);
  }

  async listSessionStorage(runtimeId?: string): Promise<SessionStorageRecord[]> {
    const rows =
      runtimeId === undefined
        ? await this.rows("SELECT * FROM session_storage ORDER BY created_at")
        : await this.rows(
            "SELECT * FROM session_storage WHERE runtime_id = $1 ORDER BY created_at",
            [runtimeId],
          );
    return rows.map(toSessionStorage);
  }

  async putSessionStorage(record: SessionStorageRecord): Promise<void> {
    await this.changes(
      `INSERT INTO session_storage (volume_id, runtime_id, session_id, mount_path, version,
         size_bytes, used_bytes, created_at, last_used_at, held_by, held_since)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
      [
        record.volumeId,
        record.runtimeId,
        record.sessionId,
        record.mountPath,
        record.version,
        record.sizeBytes,
        record.usedBytes ?? null,
        record.createdAt,
        record.lastUsedAt,
        record.heldBy ?? null,
        // A record written already claimed was claimed when it was made.
        record.heldBy === undefined ? null : record.createdAt,
      ],
    );
  }

  async touchSessionStorage(
    volumeId: string,
    lastUsedAt: string,
    usedBytes: number | undefined,
  ): Promise<void> {
    await this.changes(
      `UPDATE session_storage SET last_used_at = $2, used_bytes = COALESCE($3, used_bytes)
       WHERE volume_id = $1`,
      [volumeId, lastUsedAt, usedBytes ?? null],
    );
  }

  async setSessionStorageVersion(volumeId: string, version: number): Promise<void> {
    await this.changes("UPDATE session_storage SET version = $2 WHERE volume_id = $1", [
      volumeId,
      version,
    ]);
  }

  async deleteSessionStorage(volumeId: string): Promise<void> {
    await this.changes("DELETE FROM session_storage WHERE volume_id = $1", [volumeId]);
  }

  /**
   * Unlike SQLite's, also takes a volume whose holder is a node presumed gone (its heartbeat
   * older than the lease, by PostgreSQL's clock, or it left the cluster): that node's sandboxes
   * may run elsewhere now, and it holds nothing, to use or to delete. A holder with no row in
   * nodes keeps its claim.
   */
  async claimSessionStorage(volumeId: string, holder: string, at: string): Promise<boolean> {
    // One statement. A racing claim waits for the volume's row, then checks held_by again. The
    // holder presumed gone has its row touched (leases.ts): it cannot renew past this claim.
    const claimed = await this.changes(
      `WITH gone AS (
         ${touchNode}
         WHERE id = (SELECT ${holderNode} FROM session_storage WHERE volume_id = $1)
           AND NOT ${isLive("$4")}
         RETURNING id
       )
       UPDATE session_storage SET held_by = $2, held_since = $3
       WHERE volume_id = $1
         AND (held_by IS NULL OR held_by = $2 OR ${holderNode} IN (SELECT id FROM gone))`,
      [volumeId, holder, at, this.leaseMs],
    );
    return claimed > 0;
  }

  async releaseSessionStorage(volumeId: string, holder: string): Promise<void> {
    await this.changes(
      `UPDATE session_storage SET held_by = NULL, held_since = NULL
       WHERE volume_id = $1 AND held_by = $2`,
      [volumeId, holder],
    );
  }

  async releaseSessionStorageClaims(holder: string): Promise<void> {
    await this.changes(
      "UPDATE session_storage SET held_by = NULL, held_since = NULL WHERE held_by = $1",
      [holder],
    );
  }
}

/**
 * The node a claim's holder names: held_by as it is, or without the " (deleting)" a node adds
 * when it claims a volume to delete it (SessionStorage's remover, src/core/session-storage.ts).
 */
const holderNode = "regexp_replace(held_by, ' [(]deleting[)]$', '')";

async function saveIdempotency(
  client: Queryable,
  record: IdempotencyRecord | undefined,
): Promise<void> {
  if (record === undefined) return;
  try {
    await client.query(
      `INSERT INTO idempotency (scope, client_token, request_hash, response, created_at)
       VALUES ($1, $2, $3, $4, $5)`,
      [
        record.scope,
        record.clientToken,
        record.requestHash,
        JSON.stringify(record.response),
        record.createdAt,
      ],
    );
  } catch (error) {
    if (sqlState(error) === uniqueViolation) throw new DuplicateClientTokenError();
    throw error;
  }
}

/** Runs an insert, turning a unique violation into NameTakenError, as SQLite's store does. */
async function refuseTakenName(name: string, insert: () => Promise<unknown>): Promise<void> {
  try {
    await insert();
  } catch (error) {
    if (sqlState(error) === uniqueViolation) throw new NameTakenError(name);
    throw error;
  }
}

async function insertVersion(client: Queryable, version: RuntimeVersionRecord): Promise<void> {
  await client.query(
    `INSERT INTO runtime_versions (runtime_id, version, config, description, status,
       failure_reason, created_at, last_updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [
      version.runtimeId,
      version.version,
      JSON.stringify(version.config),
      version.config.description,
      version.status,
      version.failureReason ?? null,
      version.createdAt,
      version.lastUpdatedAt,
    ],
  );
}

async function insertEndpoint(client: Queryable, endpoint: EndpointRecord): Promise<void> {
  await client.query(
    `INSERT INTO endpoints (runtime_id, name, arn, description, target_version, live_version,
       created_at, last_updated_at, tags)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    [
      endpoint.runtimeId,
      endpoint.name,
      endpoint.arn,
      endpoint.description,
      endpoint.targetVersion,
      endpoint.liveVersion ?? null,
      endpoint.createdAt,
      endpoint.lastUpdatedAt,
      JSON.stringify(endpoint.tags),
    ],
  );
}

/** Where a resource's tags live: its own row, found by primary key and checked against its ARN. */
function tagsRow(resource: TaggedResource): {
  table: string;
  where: string;
  parameters: unknown[];
} {
  if (resource.endpointName === undefined) {
    return {
      table: "runtimes",
      where: "id = $1 AND arn = $2",
      parameters: [resource.runtimeId, resource.arn],
    };
  }
  return {
    table: "endpoints",
    where: "runtime_id = $1 AND arn = $2 AND name = $3",
    parameters: [resource.runtimeId, resource.arn, resource.endpointName],
  };
}

async function readTags(
  client: Queryable,
  resource: TaggedResource,
  lock: "" | "FOR NO KEY UPDATE",
): Promise<Record<string, string> | undefined> {
  const { table, where, parameters } = tagsRow(resource);
  const { rows } = await client.query(
    `SELECT tags FROM ${table} WHERE ${where} ${lock}`,
    parameters,
  );
  const [row] = rows;
  return row === undefined ? undefined : parseTags(row);
}
