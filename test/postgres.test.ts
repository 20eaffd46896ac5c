import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { Client } from "pg";
import { PostgresConnectionError } from "../src/adapters/postgres/connection-errors.ts";
import { touchNode } from "../src/adapters/postgres/leases.ts";
import { migrations, schemaVersion } from "../src/adapters/postgres/migrations.ts";
import { openPostgres } from "../src/adapters/postgres/open.ts";
import { SharedPool } from "../src/adapters/postgres/pool.ts";
import { freePort } from "./support/ports.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "./support/postgres.ts";

/*
 * What the PostgreSQL adapter does beyond the contract suites (test/contracts/): its schema
 * when nodes start together, what it says about a database it cannot use, and how it lives
 * through a restart of PostgreSQL. Against a real server started here.
 */

const node = {
  id: "node-id-1",
  name: "node-1",
  url: "http://10.0.0.1:8080",
  incarnation: "first",
  capacity: { maxSessions: 4, memoryBytes: 2 ** 30 },
};

describe("PostgreSQL adapter", { skip: postgresMissing() ?? false }, () => {
  let server: TestPostgres;
  before(async () => {
    server = await startPostgres();
  });
  after(async () => {
    await server.stop();
  });

  /** Opening fails with PostgresConnectionError; its message, checked to be one clean line. */
  async function openingFails(url: string): Promise<string> {
    let message = "";
    await assert.rejects(openPostgres(url, { leaseMs: 10_000 }), (error: unknown) => {
      assert.ok(error instanceof PostgresConnectionError);
      message = error.message;
      return true;
    });
    assert.doesNotMatch(message, /\n/);
    assert.doesNotMatch(message, /s3cret/, "the password is never shown");
    return message;
  }

  it("brings a database to the latest schema once, however many nodes open it at once", async () => {
    const url = await server.freshDatabase();
    const opened = await Promise.all(
      Array.from({ length: 5 }, () => openPostgres(url, { leaseMs: 10_000 })),
    );
    const pool = new SharedPool(url, { maxConnections: 1, onIdleError: () => undefined });
    try {
      assert.equal(await schemaVersion(pool), migrations.at(-1)?.version);
      const applied = await pool.pool.query("SELECT version FROM schema_migrations ORDER BY 1");
      assert.deepEqual(
        applied.rows.map((row: { version: number }) => row.version),
        migrations.map((migration) => migration.version),
      );
      // And again, on a database already at the latest version: nothing to do.
      const reopened = await openPostgres(url, { leaseMs: 10_000 });
      await reopened.close();
    } finally {
      await Promise.all(opened.map((stores) => stores.close()));
      await pool.end();
    }
  });

  it("says which server it cannot reach, and nothing of the password", async () => {
    const port = await freePort();
    const message = await openingFails(`postgres://berth:s3cret@127.0.0.1:${port}/berth`);
    assert.match(
      message,
      new RegExp(
        `^cannot reach PostgreSQL at 127\\.0\\.0\\.1:${port} \\(databaseUrl\\): ECONNREFUSED`,
      ),
    );
  });

  it("says which database is missing, and which user was refused", async () => {
    const { port } = new URL(server.url);
    const missing = await openingFails(`postgres://postgres:s3cret@127.0.0.1:${port}/nowhere`);
    assert.match(missing, /has no database nowhere \(databaseUrl\): create it/);
    const refused = await openingFails(`postgres://nobody:s3cret@127.0.0.1:${port}/postgres`);
    assert.match(refused, /refused user nobody \(databaseUrl\): .*role "nobody" does not exist/);
  });

  it("refuses a URL that is not PostgreSQL's without quoting it", async () => {
    const message = await openingFails("mysql://berth:s3cret@db.example:3306/berth");
    assert.match(message, /^databaseUrl is not a PostgreSQL URL/);
    assert.match(await openingFails("not a url s3cret"), /^databaseUrl is not/);
  });

  it("refuses a heartbeat that waited on its node's row while a takeover touched it", async () => {
    const url = await server.freshDatabase();
    const leaseMs = 500;
    const stores = await openPostgres(url, { leaseMs });
    const taker = new Client(url);
    await taker.connect();
    try {
      await stores.cluster.register(node);
      // Another node's takeover holds the row while the lease runs out under it...
      await taker.query("BEGIN");
      await taker.query("SELECT 1 FROM nodes WHERE id = $1 FOR UPDATE", [node.id]);
      // ...and the node's heartbeat, sent while its lease still ran, waits for that row.
      const heartbeat = stores.cluster.heartbeat(node.id, "first", { runningSessions: 0 });
      await until(async () => {
        const waiting = await taker.query(
          "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
        );
        return waiting.rows.length > 0;
      });
      await until(async () => {
        const expired = await taker.query<{ expired: boolean }>(
          `SELECT clock_timestamp() - heartbeat_at >= $2 * interval '1 millisecond' AS expired
           FROM nodes WHERE id = $1`,
          [node.id, leaseMs],
        );
        return expired.rows[0]?.expired === true;
      });
      await taker.query(`${touchNode} WHERE id = $1`, [node.id]);
      await taker.query("COMMIT");
      assert.equal(await heartbeat, false, "judged after the wait, the lease had run out");
    } finally {
      await taker.end();
      await stores.close();
    }
  });

  it("lives through a restart of PostgreSQL: what was in flight fails, what follows works", async () => {
    const url = await server.freshDatabase();
    const connectionErrors: Error[] = [];
    const stores = await openPostgres(url, {
      leaseMs: 60_000,
      onConnectionError: (error) => connectionErrors.push(error),
    });
    const pool = new SharedPool(url, { maxConnections: 1, onIdleError: () => undefined });
    try {
      await stores.cluster.register(node);
      // Several idle connections, each to be broken by the restart.
      await Promise.all(Array.from({ length: 4 }, () => stores.cluster.listNodes()));
      // And one in the middle of a transaction, between two of its queries.
      let began!: () => void;
      const midway = new Promise<void>((resolve) => (began = resolve));
      let restarted!: () => void;
      const restartDone = new Promise<void>((resolve) => (restarted = resolve));
      const inFlight = pool.transaction(async (client) => {
        await client.query("SELECT 1");
        began();
        await restartDone;
        await client.query("SELECT 1");
      });
      await midway;

      await server.restart();
      restarted();
      await assert.rejects(inFlight);
      assert.ok(connectionErrors.length > 0, "the broken idle connections were reported");
      assert.deepEqual(
        (await stores.cluster.listNodes()).map((record) => record.name),
        ["node-1"],
      );
      assert.equal(await stores.cluster.heartbeat(node.id, "first", { runningSessions: 1 }), true);
      await pool.transaction((client) => client.query("SELECT 1"));
    } finally {
      await stores.close();
      await pool.end();
    }
  });
});

/** Polls `condition` every 20 ms until it holds, for at most 10 s. */
async function until(condition: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error("the condition did not hold within 10 s");
    await delay(20);
  }
}
