import { DatabaseError, Pool, type PoolClient } from "pg";

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

/**
 * One connection pool shared by the stores of one database (metadata and cluster): it ends when
 * the last of them closes. pg's pool replaces connections that broke, so once PostgreSQL is back
 * after a restart the next query simply works; what broke meanwhile fails its own caller only.
 */
export class SharedPool {
  readonly pool: Pool;
  private users = 0;
  private ended: Promise<void> | undefined;

  constructor(
    url: string,
    options: { maxConnections: number; onIdleError: (error: Error) => void },
  ) {
    this.pool = new Pool({
      connectionString: url,
      max: options.maxConnections,
      // A database that does not answer fails the request instead of holding it forever.
      connectionTimeoutMillis: 10_000,
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

  /**
   * Runs `work` in one transaction on one connection. A deadlock PostgreSQL broke by aborting
   * this transaction runs it again from the start (work must be safe to repeat: it only talks
   * to the database and calls pure functions).
   */
  async transaction<T>(work: (client: Queryable) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.transactionOnce(work);
      } catch (error) {
        if (!(isDeadlock(error) && attempt < maxDeadlockAttempts)) throw error;
      }
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
      broken = await rollback(client);
      throw error;
    } finally {
      client.removeListener("error", ignore);
      // A connection whose rollback failed is destroyed rather than reused.
      client.release(broken);
    }
  }
}

const maxDeadlockAttempts = 5;

async function rollback(client: PoolClient): Promise<Error | undefined> {
  try {
    await client.query("ROLLBACK");
    return undefined;
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}

/** PostgreSQL's SQLSTATE for a failed statement; undefined for anything else (a network error). */
export function sqlState(error: unknown): string | undefined {
  return error instanceof DatabaseError ? error.code : undefined;
}

export const uniqueViolation = "23505";

function isDeadlock(error: unknown): boolean {
  return sqlState(error) === "40P01";
}
