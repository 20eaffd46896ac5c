import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DatabaseSync } from "node:sqlite";
import { after, describe, it } from "node:test";
import { migrations } from "../src/adapters/sqlite/migrations.ts";
import { SqliteMetadataStore } from "../src/adapters/sqlite/store.ts";
import type { SessionStorageRecord } from "../src/core/store.ts";

const directory = mkdtempSync(join(tmpdir(), "berth-sqlite-upgrade-"));
after(() => {
  rmSync(directory, { recursive: true, force: true });
});

/** Schema 3 is the last before volume claims were kept in the database. */
const schemaBeforeClaims = 3;

/**
 * A database as a Berth of schema 3 left it: migrations are never edited once shipped, so
 * applying the first three, recorded as the store records them, gives exactly that schema.
 */
function databaseAtSchema(path: string, version: number): DatabaseSync {
  const database = new DatabaseSync(path);
  database.exec(
    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
  );
  for (const migration of migrations.filter((candidate) => candidate.version <= version)) {
    database.exec(migration.sql);
    database
      .prepare("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
      .run(migration.version, "2025-01-01T00:00:00.000Z");
  }
  return database;
}

const oldVolume = {
  runtimeId: "agent_1-AAAAAAAAAA",
  sessionId: "session-1",
  mountPath: "/mnt/data",
  volumeId: "volume-1",
  version: 1,
  sizeBytes: 1_048_576,
  usedBytes: 4096,
  createdAt: "2025-01-01T00:00:01.000Z",
  lastUsedAt: "2025-01-01T00:00:02.000Z",
};

function columnsOf(path: string, table: string): string[] {
  const database = new DatabaseSync(path, { readOnly: true });
  try {
    return database
      .prepare(`SELECT name FROM pragma_table_info('${table}')`)
      .all()
      .map((row) => String(row["name"]));
  } finally {
    database.close();
  }
}

describe("SQLite metadata store upgrades", () => {
  it("upgrades a schema 3 database in place: volumes gain a claim, and start free", async () => {
    const path = join(directory, "schema-3.db");
    const old = databaseAtSchema(path, schemaBeforeClaims);
    old
      .prepare(
        `INSERT INTO session_storage (volume_id, runtime_id, session_id, mount_path, version,
           size_bytes, used_bytes, created_at, last_used_at)
         VALUES (:volumeId, :runtimeId, :sessionId, :mountPath, :version, :sizeBytes,
           :usedBytes, :createdAt, :lastUsedAt)`,
      )
      .run(oldVolume);
    old.close();
    assert.ok(!columnsOf(path, "session_storage").includes("held_by"));

    const store = new SqliteMetadataStore(path);
    try {
      assert.equal(store.schemaVersion(), Math.max(...migrations.map((entry) => entry.version)));
      assert.ok(columnsOf(path, "session_storage").includes("held_by"));
      const expected: SessionStorageRecord = { ...oldVolume, heldBy: undefined };
      assert.deepEqual(await store.listSessionStorage(), [expected]);
      assert.deepEqual(
        await store.findSessionStorage(oldVolume.runtimeId, oldVolume.sessionId, "/mnt/data"),
        expected,
      );
      assert.equal(
        await store.claimSessionStorage("volume-1", "berth-a", oldVolume.lastUsedAt),
        true,
      );
    } finally {
      await store.close();
    }

    // Opening the upgraded database again applies nothing twice and keeps the claim.
    const reopened = new SqliteMetadataStore(path);
    try {
      assert.equal((await reopened.listSessionStorage())[0]?.heldBy, "berth-a");
      assert.equal(
        await reopened.claimSessionStorage("volume-1", "berth-b", oldVolume.lastUsedAt),
        false,
      );
    } finally {
      await reopened.close();
    }
  });
});
