import { Pool, type PoolClient } from "pg";
import { databaseAddress } from "./connection-errors.ts";
import { databaseUnavailable, isDeadlock, unanswered } from "./database-errors.ts";

/** What a query takes: positional parameters ($1, $2, …). */
export type QueryParameters = readonly unknown[];

/** Anything that runs a query: the pool (one statement, its own transaction) or a client in one. */
export interface Queryable {
  query(
    sql: string,
    parameters?: QueryParameters,
  ): Promise<{ rows: Row[]; rowCount: number | null }>;
}

/** A row as pg gives it: column name to value. */
export type Row = Record<string, unknown>;

export interface PoolOptions {
  maxConnections: number;
  /**
   * How long a query, or opening a connection, may go unanswered before it fails. A route that
   * dropped answers nothing, not even an error: without a bound a query would wait for ever.
   */
  timeoutMs: number;
  onIdleError: (error: Error) => void;
}

/**
 * One connection pool shared by the stores of one database (metadata and cluster): it ends when
 * the last of them closes. pg's pool replaces connections that broke, so once PostgreSQL is back
 * after a restart the next query simply works; what broke meanwhile fails its own caller only.
 * Every query goes through query() or transaction(): a database that did not answer fails it
 * with a retryable ThrottlingException naming the server (database-errors.ts).
 */
export class SharedPool implements Queryable {
  private readonly pool: Pool;
  /** HOST:PORT, what messages show of the URL (which may hold a password). */
  private readonly server: string;
  private users = 0;
  private ended: Promise<void> | undefined;

  constructor(url: string, options: PoolOptions) {
    this.server = databaseAddress(url).server;
    this.pool = new Pool({
      connectionString: url,
      max: options.maxConnections,
      connectionTimeoutMillis: options.timeoutMs,
      query_timeout: options.timeoutMs,
      // PostgreSQL itself ends a transaction whose client fell silent (a dropped route lets no
      // FIN through), rolling it back so the rows it locked are free again.
      idle_in_transaction_session_timeout: options.timeoutMs,
      // Probes tell a connection whose route dropped from one that is merely idle.
      keepAlive: true,
      keepAliveInitialDelayMillis: options.timeoutMs,
    });
    // An idle connection that breaks (PostgreSQL restarting) is dropped by the pool, which then
    // emits 'error': without a listener that would end the process.
    this.pool.on("error", options.onIdleError);
  }

  /** Registers one more user; the function returned gives its share back (once). */
  share(): () => Promise<void> {
    this.users += 1;
    let released = false;
    return async () => {
      if (released) return;
      released = true;
      this.users -= 1;
      if (this.users === 0) await this.end();
    };
  }

  end(): Promise<void> {
    this.ended ??= this.pool.end();
    return this.ended;
  }

  /** One statement in a transaction of its own, on whichever connection is free. */
  async query(
    sql: string,
    parameters: QueryParameters = [],
  ): Promise<{ rows: Row[]; rowCount: number | null }> {
    try {
      // pg's pool discards the connection of a query that failed, so one cut off is not reused.
      return await this.pool.query<Row>(sql, [...parameters]);
    } catch (error) {
      throw this.explain(error);
    }
  }

  /**
   * Runs `work` in one transaction on one connection. A deadlock PostgreSQL broke by aborting
   * this transaction runs it again from the start (work must be safe to repeat: it only talks
   * to the database and calls pure functions).
   */
  async transaction<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    try {
      for (let attempt = 1; ; attempt += 1) {
        try {
          return await this.transactionOnce(work);
        } catch (error) {
          if (!(isDeadlock(error) && attempt < maxDeadlockAttempts)) throw error;
        }
      }
    } catch (error) {
      throw this.explain(error);
    }
  }

  private async transactionOnce<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    // A checked-out connection has no listener of the pool's: one that breaks between two
    // queries must not end the process (the next query fails instead).
    const ignore = (): void => undefined;
    client.on("error", ignore);
    let broken: Error | undefined;
    try {
      await client.query("BEGIN");
      const result = await work(client);
      await client.query("COMMIT");
      return result;
    } catch (error) {
      broken = await rollback(client, error);
      throw error;
    } finally {
      client.removeListener("error", ignore);
      // A connection that may still be in the transaction is destroyed rather than reused.
      client.release(broken);
    }
  }

  /** A database that did not answer as the retryable error callers get; anything else as is. */
  private explain(error: unknown): unknown {
    return databaseUnavailable(this.server, error) ?? error;
  }
}

/**
 * What each store on the shared pool starts from: its share of the pool, given back by close(),
 * the lease of a node's heartbeat, and shorthands for a statement's rows and count of changes.
 */
export abstract class PooledStore {
  protected readonly pool: SharedPool;
  /** How long a node's heartbeat lasts: a node is live while its last one is younger. */
  protected readonly leaseMs: number;
  private readonly release: () => Promise<void>;

  constructor(pool: SharedPool, options: { leaseMs: number }) {
    this.pool = pool;
    this.leaseMs = options.leaseMs;
    this.release = pool.share();
  }

  protected async rows(sql: string, parameters: QueryParameters = []): Promise<Row[]> {
    return (await this.pool.query(sql, parameters)).rows;
  }

  protected async changes(sql: string, parameters: QueryParameters): Promise<number> {
    return (await this.pool.query(sql, parameters)).rowCount ?? 0;
  }

  /** Gives back this store's share of the pool (which ends with its last user). */
  close(): Promise<void> {
    return this.release();
  }
}

const maxDeadlockAttempts = 5;

/**
 * Rolls back the transaction `failure` ended. The error to destroy the connection with when
 * that is not known to have worked: the rollback failed, or the database did not answer (a
 * ROLLBACK would only queue behind the query still awaiting its answer; PostgreSQL ends the
 * transaction itself, see idle_in_transaction_session_timeout).
 */
async function rollback(client: PoolClient, failure: unknown): Promise<Error | undefined> {
  if (unanswered(failure) !== undefined) return asError(failure);
  try {
    await client.query("ROLLBACK");
    return undefined;
  } catch (error) {
    return asError(error);
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
