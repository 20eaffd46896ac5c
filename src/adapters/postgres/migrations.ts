import type { SharedPool } from "./pool.ts";

/**
 * Schema versions, applied in order, each in its own transaction. Never edit one that has
 * shipped: add the next.
 *
 * The metadata tables mirror the SQLite schema (src/adapters/sqlite/migrations.ts) so records
 * read back identically: timestamps are the ISO 8601 text the core writes, configs, tags and
 * responses JSON text (kept byte for byte, where jsonb would reorder keys). Text compared or
 * sorted is COLLATE "C": byte order, as SQLite compares, whatever the database's locale.
 * The cluster tables stamp time with PostgreSQL's own clock (timestamptz), the one clock every
 * node agrees on.
 */
export const migrations: readonly { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE runtimes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        arn TEXT NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at TEXT COLLATE "C" NOT NULL,
        last_updated_at TEXT NOT NULL,
        tags TEXT NOT NULL
      );
      CREATE TABLE runtime_versions (
        runtime_id TEXT NOT NULL REFERENCES runtimes(id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        config TEXT NOT NULL,
        -- kept beside config so listing never parses configs
        description TEXT NOT NULL,
        status TEXT NOT NULL,
        failure_reason TEXT,
        artifact_digest TEXT,
        created_at TEXT COLLATE "C" NOT NULL,
        last_updated_at TEXT NOT NULL,
        PRIMARY KEY (runtime_id, version)
      );
      CREATE INDEX runtime_versions_status ON runtime_versions(status);
      CREATE TABLE endpoints (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        runtime_id TEXT NOT NULL REFERENCES runtimes(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        arn TEXT NOT NULL,
        description TEXT NOT NULL,
        target_version INTEGER NOT NULL,
        live_version INTEGER,
        created_at TEXT NOT NULL,
        last_updated_at TEXT NOT NULL,
        tags TEXT NOT NULL,
        UNIQUE (runtime_id, name)
      );
      CREATE TABLE idempotency (
        scope TEXT NOT NULL,
        client_token TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (scope, client_token)
      );
      CREATE INDEX idempotency_created_at ON idempotency(created_at);
      -- held_by: the Berth process (node) whose sandbox has the volume attached, or NULL.
      CREATE TABLE session_storage (
        volume_id TEXT PRIMARY KEY,
        runtime_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        mount_path TEXT NOT NULL,
        version INTEGER NOT NULL,
        size_bytes BIGINT NOT NULL,
        used_bytes BIGINT,
        created_at TEXT COLLATE "C" NOT NULL,
        last_used_at TEXT NOT NULL,
        held_by TEXT,
        held_since TEXT,
        UNIQUE (runtime_id, session_id, mount_path)
      );
      CREATE INDEX session_storage_held_by ON session_storage(held_by);
    `,
  },
  {
    version: 2,
    sql: `
      -- One row per node; a node is live while its heartbeat is younger than the lease.
      CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        name TEXT COLLATE "C" NOT NULL UNIQUE,
        url TEXT NOT NULL,
        incarnation TEXT NOT NULL,
        max_sessions INTEGER NOT NULL,
        memory_bytes BIGINT NOT NULL,
        running_sessions INTEGER NOT NULL,
        draining BOOLEAN NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL
      );
      -- Which node runs a session. No foreign key to nodes: a row naming a node that is gone
      -- simply has no live owner, and the next placement replaces it.
      CREATE TABLE session_owners (
        runtime_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        previous_node_id TEXT,
        PRIMARY KEY (runtime_id, session_id)
      );
      CREATE INDEX session_owners_node_id ON session_owners(node_id);
      -- Epochs come from one sequence, so a session released and placed again never gets an
      -- epoch it had before: a fencing token is never reused.
      CREATE SEQUENCE session_owner_epochs;
      CREATE TABLE cluster_jobs (
        name TEXT PRIMARY KEY,
        next_run_at TIMESTAMPTZ NOT NULL,
        ran_by TEXT NOT NULL
      );
    `,
  },
  {
    version: 3,
    sql: `
      -- A node that left (deregistered, or gave its name to a new node) keeps its row: never
      -- live again until it registers, and not listed. Its id still tells whoever finds it on a
      -- volume claim or an owner row that it is gone.
      ALTER TABLE nodes ADD COLUMN departed BOOLEAN NOT NULL DEFAULT false;
    `,
  },
];

/**
 * Brings the database to the latest schema. Nodes starting at once each try, but a migration
 * runs under a transaction-scoped advisory lock and checks the recorded version after taking
 * it: the first node applies it, the others find it done.
 */
export async function migrate(pool: SharedPool): Promise<void> {
  for (const migration of migrations) {
    await pool.transaction(async (client) => {
      await client.query("SELECT pg_advisory_xact_lock($1)", [migrationLock]);
      // Under the lock too: two CREATE TABLE IF NOT EXISTS at once can both try to create it.
      await client.query(
        `CREATE TABLE IF NOT EXISTS schema_migrations (
           version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
      );
      const done = await client.query("SELECT 1 FROM schema_migrations WHERE version = $1", [
        migration.version,
      ]);
      if (done.rows.length > 0) return;
      await client.query(migration.sql);
      await client.query("INSERT INTO schema_migrations (version) VALUES ($1)", [
        migration.version,
      ]);
    });
  }
}

/** The advisory lock key migrations take: any fixed number other code does not use. */
const migrationLock = 0x6265_7274; // "bert"

/** The schema version the database is at, for operators and tests. */
export async function schemaVersion(pool: SharedPool): Promise<number> {
  const result = await pool.query("SELECT MAX(version) AS version FROM schema_migrations");
  const version = result.rows[0]?.["version"];
  return typeof version === "number" ? version : 0;
}
