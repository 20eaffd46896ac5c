import { PostgresClusterStore } from "./cluster-store.ts";
import { databaseAddress, explainConnectionFailure } from "./connection-errors.ts";
import { migrate } from "./migrations.ts";
import { SharedPool } from "./pool.ts";
import { PostgresMetadataStore } from "./store.ts";

export interface PostgresStores {
  metadata: PostgresMetadataStore;
  cluster: PostgresClusterStore;
  /** Closes both stores (each may also be closed alone: the pool ends with the last). */
  close(): Promise<void>;
}

export interface PostgresOptions {
  /** How long a node's heartbeat lasts: after it, the node is presumed gone. */
  leaseMs: number;
  /** The most connections this process opens (default 10). */
  maxConnections?: number;
  /**
   * How long a query or a new connection may go unanswered before the request needing it fails
   * (retryably). Default: half the lease, so a node cut off from the database learns it while
   * its lease still runs.
   */
  timeoutMs?: number;
  /**
   * Told of a connection that broke while idle (PostgreSQL restarting, a network cut): the pool
   * has dropped it already and opens another when next needed. Default: ignored.
   */
  onConnectionError?: (error: Error) => void;
}

/**
 * Connects to the database at `url`, brings its schema up to date and opens the metadata and
 * cluster stores on one shared pool. A database that cannot be reached, refuses the login or
 * lacks rights fails with PostgresConnectionError: one line saying what to fix.
 */
export async function openPostgres(url: string, options: PostgresOptions): Promise<PostgresStores> {
  const address = databaseAddress(url);
  const pool = new SharedPool(url, {
    maxConnections: options.maxConnections ?? 10,
    timeoutMs: options.timeoutMs ?? options.leaseMs / 2,
    onIdleError: options.onConnectionError ?? (() => undefined),
  });
  try {
    await migrate(pool);
  } catch (error) {
    await pool.end();
    throw explainConnectionFailure(error, address);
  }
  const metadata = new PostgresMetadataStore(pool, { leaseMs: options.leaseMs });
  const cluster = new PostgresClusterStore(pool, { leaseMs: options.leaseMs });
  return {
    metadata,
    cluster,
    close: async () => {
      await Promise.all([metadata.close(), cluster.close()]);
    },
  };
}
