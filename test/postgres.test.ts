import assert from "node:assert/strict";
import { after, afterEach, before, beforeEach, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { Client } from "pg";
import { PostgresConnectionError } from "../src/adapters/postgres/connection-errors.ts";
import { touchNode } from "../src/adapters/postgres/leases.ts";
import { migrations, schemaVersion } from "../src/adapters/postgres/migrations.ts";
import { openPostgres } from "../src/adapters/postgres/open.ts";
import { SharedPool } from "../src/adapters/postgres/pool.ts";
import { BerthError } from "../src/core/errors.ts";
import { freePort } from "./support/ports.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "./support/postgres.ts";
import { startRouteProxy, type RouteProxy } from "./support/route-proxy.ts";

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
    const pool = new SharedPool(url, {
      maxConnections: 1,
      timeoutMs: 10_000,
      onIdleError: () => undefined,
    });
    try {
      assert.equal(await schemaVersion(pool), migrations.at(-1)?.version);
      const applied = await pool.query("SELECT version FROM schema_migrations ORDER BY 1");
      assert.deepEqual(
        applied.rows.map((row) => row["version"]),
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
    // The heartbeat waits out the whole lease here: longer than the default timeout allows.
    const stores = await openPostgres(url, { leaseMs, timeoutMs: 10_000 });
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
    const pool = new SharedPool(url, {
      maxConnections: 1,
      timeoutMs: 10_000,
      onIdleError: () => undefined,
    });
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

  it("answers a placement that lost every race with a retryable ThrottlingException", async () => {
    const stores = await openPostgres(await server.freshDatabase(), { leaseMs: 60_000 });
    try {
      await stores.cluster.register({
        ...node,
        capacity: { maxSessions: 1, memoryBytes: 2 ** 30 },
      });
      await stores.cluster.placeSession("runtime-a", "session-1", ([live]) => live);
      // Each time it chooses, the node's last place was taken (as by a racing placement)
      // between the count it chose by and its write.
      const placing = stores.cluster.placeSession("runtime-a", "session-2", ([live]) =>
        live === undefined ? undefined : { ...live, ownedSessions: 0 },
      );
      await assert.rejects(placing, (error: unknown) => {
        assert.ok(BerthError.isInstance(error));
        assert.equal(error.code, "ThrottlingException");
        assert.match(
          error.message,
          /^Placing session session-2 was contended: .*Retry in a moment/,
        );
        return true;
      });
    } finally {
      await stores.close();
    }
  });

  describe("PostgreSQL out of reach while serving", () => {
    let proxy: RouteProxy;
    let url: string;
    let proxiedUrl: string;
    beforeEach(async () => {
      url = await server.freshDatabase();
      proxy = await startRouteProxy({ host: "127.0.0.1", port: Number(new URL(url).port) });
      // With a password, which no message may show.
      proxiedUrl = `postgres://postgres:s3cret@127.0.0.1:${proxy.port}${new URL(url).pathname}`;
    });
    afterEach(() => proxy.close());

    /** Checks a store's error is the retryable one naming the proxied server and why. */
    const didNotAnswer = (why: RegExp) => (error: unknown) => {
      assert.ok(BerthError.isInstance(error), String(error));
      assert.equal(error.code, "ThrottlingException");
      assert.match(
        error.message,
        new RegExp(
          `^The cluster's database \\(127\\.0\\.0\\.1:${proxy.port}\\) did not answer \\(${why.source}\\): retry once it is back$`,
        ),
      );
      assert.doesNotMatch(error.message, /s3cret/);
      return true;
    };

    it("fails what a dropped route cut off as retryable, discards its connection, and PostgreSQL rolls its transaction back", async () => {
      const stores = await openPostgres(proxiedUrl, { leaseMs: 2_000 });
      const pool = new SharedPool(proxiedUrl, {
        maxConnections: 1,
        timeoutMs: 1_000,
        onIdleError: () => undefined,
      });
      const direct = new Client(url);
      await direct.connect();
      try {
        await stores.cluster.register(node);
        let locked!: () => void;
        const rowLocked = new Promise<void>((resolve) => (locked = resolve));
        let dropped!: () => void;
        const routeDropped = new Promise<void>((resolve) => (dropped = resolve));
        const cutOff = pool.transaction(async (client) => {
          await client.query("UPDATE nodes SET url = url WHERE id = $1", [node.id]);
          locked();
          await routeDropped;
          await client.query("SELECT 1");
        });
        await rowLocked;
        proxy.drop();
        dropped();
        await assert.rejects(cutOff, didNotAnswer(/query timeout/));
        await assert.rejects(
          stores.cluster.listNodes(),
          didNotAnswer(/(query|connection) timeout/),
        );
        await assert.rejects(
          stores.metadata.findRuntime("runtime-a"),
          didNotAnswer(/(query|connection) timeout/),
        );
        // PostgreSQL heard nothing of the cut (no FIN crossed): it ends the idle transaction
        // itself and frees the row, or this waits for the lock and fails.
        await direct.query("SET lock_timeout = '10s'");
        await direct.query("UPDATE nodes SET url = url WHERE id = $1", [node.id]);

        proxy.restore();
        // The pool's one connection was the cut one: it was discarded, not handed out again.
        await pool.transaction((client) => client.query("SELECT 1"));
        assert.deepEqual(
          (await stores.cluster.listNodes()).map((record) => record.name),
          ["node-1"],
        );
      } finally {
        await direct.end();
        await pool.end();
        await stores.close();
      }
    });

    it("answers ThrottlingException naming the server while PostgreSQL refuses connections", async () => {
      const connectionErrors: Error[] = [];
      const stores = await openPostgres(proxiedUrl, {
        leaseMs: 60_000,
        maxConnections: 1,
        onConnectionError: (error) => connectionErrors.push(error),
      });
      try {
        await stores.cluster.register({ ...node, incarnation: "refused" });
        await proxy.close();
        // The pool's one idle connection broke: the next query connects anew, and is refused.
        await until(() => Promise.resolve(connectionErrors.length > 0));
        await assert.rejects(
          stores.cluster.heartbeat(node.id, "refused", { runningSessions: 0 }),
          didNotAnswer(/ECONNREFUSED/),
        );
        await assert.rejects(
          stores.metadata.listRuntimes({ limit: 10, afterKey: undefined }),
          didNotAnswer(/ECONNREFUSED/),
        );
      } finally {
        await stores.close();
      }
    });
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
