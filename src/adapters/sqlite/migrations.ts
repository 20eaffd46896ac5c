/**
 * Schema versions, applied in order, each in its own transaction. Never edit one that has
 * shipped: add the next. `seq` columns give rows a never-reused insertion order for pagination.
 */
export const migrations: readonly { version: number; sql: string }[] = [
  {
    version: 1,
    sql: `
      CREATE TABLE runtimes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL UNIQUE,
        arn TEXT NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
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
        created_at TEXT NOT NULL,
        last_updated_at TEXT NOT NULL,
        PRIMARY KEY (runtime_id, version)
      );
      CREATE INDEX runtime_versions_status ON runtime_versions(status);
      CREATE TABLE endpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
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
        created_at TEXT NOT NULL,
        PRIMARY KEY (scope, client_token)
      );
      CREATE INDEX idempotency_created_at ON idempotency(created_at);
    `,
  },
  {
    version: 2,
    sql: `
      CREATE TABLE session_storage (
        volume_id TEXT PRIMARY KEY,
        runtime_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        mount_path TEXT NOT NULL,
        version INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL,
        used_bytes INTEGER,
        created_at TEXT NOT NULL,
        last_used_at TEXT NOT NULL,
        UNIQUE (runtime_id, session_id, mount_path)
      );
    `,
  },
  {
    version: 3,
    sql: `
      -- The image a container version was prepared from, pinned by digest: the version runs
      -- the same files even if its tag moves, and image garbage collection keeps them.
      ALTER TABLE runtime_versions ADD COLUMN artifact_digest TEXT;
    `,
  },
  {
    version: 4,
    sql: `
      -- Which Berth process has a volume attached, and since when: kept here rather than in
      -- the process's memory, so processes sharing this database never attach one volume twice.
      -- Existing volumes start free (NULL): a server upgrading has no sandbox running.
      ALTER TABLE session_storage ADD COLUMN held_by TEXT;
      ALTER TABLE session_storage ADD COLUMN held_since TEXT;
      CREATE INDEX session_storage_held_by ON session_storage(held_by);
    `,
  },
];
