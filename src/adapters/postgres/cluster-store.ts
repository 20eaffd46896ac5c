import type {
  ClusterStore,
  NodeLoad,
  NodeRecord,
  NodeRegistration,
  SessionOwner,
} from "../../core/cluster/cluster-store.ts";
import { NameTakenError } from "../../core/store.ts";
import { isLive, touchNode } from "./leases.ts";
import { sqlState, uniqueViolation, type Row, type SharedPool } from "./pool.ts";
import { integer, text } from "./rows.ts";

/**
 * The cluster's shared state in PostgreSQL. Every judgement of time is PostgreSQL's: a
 * heartbeat is stamped with its clock and a node is live while its heartbeat is younger than
 * the lease by that same clock (leases.ts), so the nodes' own clocks never matter. Owner
 * changes are compare-and-set on the epoch.
 */
export class PostgresClusterStore implements ClusterStore {
  private readonly pool: SharedPool;
  private readonly leaseMs: number;
  private readonly release: () => Promise<void>;

  constructor(pool: SharedPool, options: { leaseMs: number }) {
    this.pool = pool;
    this.leaseMs = options.leaseMs;
    this.release = pool.share();
  }

  private async rows(sql: string, parameters: readonly unknown[]): Promise<Row[]> {
    return (await this.pool.pool.query<Row>(sql, [...parameters])).rows;
  }

  private async changes(sql: string, parameters: readonly unknown[]): Promise<number> {
    return (await this.pool.pool.query(sql, [...parameters])).rowCount ?? 0;
  }

  /**
   * Throws NameTakenError when a live node of another id has the name. A node of another id
   * that is not live gives its name up (a machine reinstalled, with a new data directory).
   */
  register(node: NodeRegistration): Promise<void> {
    return this.pool.transaction(async (client) => {
      await client.query(`DELETE FROM nodes WHERE name = $1 AND id <> $2 AND NOT ${isLive("$3")}`, [
        node.name,
        node.id,
        this.leaseMs,
      ]);
      try {
        await client.query(
          `INSERT INTO nodes (id, name, url, incarnation, max_sessions, memory_bytes,
             running_sessions, draining, heartbeat_at)
           VALUES ($1, $2, $3, $4, $5, $6, 0, false, clock_timestamp())
           ON CONFLICT (id) DO UPDATE SET name = $2, url = $3, incarnation = $4,
             max_sessions = $5, memory_bytes = $6, running_sessions = 0, draining = false,
             heartbeat_at = clock_timestamp()`,
          [
            node.id,
            node.name,
            node.url,
            node.incarnation,
            node.capacity.maxSessions,
            node.capacity.memoryBytes,
          ],
        );
      } catch (error) {
        if (sqlState(error) === uniqueViolation) throw new NameTakenError(node.name);
        throw error;
      }
    });
  }

  async heartbeat(nodeId: string, incarnation: string, load: NodeLoad): Promise<boolean> {
    const renewed = await this.changes(
      `UPDATE nodes SET heartbeat_at = clock_timestamp(), running_sessions = $4
       WHERE id = $1 AND incarnation = $2 AND ${isLive("$3")}`,
      [nodeId, incarnation, this.leaseMs, load.runningSessions],
    );
    return renewed > 0;
  }

  async deregister(nodeId: string, incarnation: string): Promise<void> {
    await this.changes("DELETE FROM nodes WHERE id = $1 AND incarnation = $2", [
      nodeId,
      incarnation,
    ]);
  }

  async listNodes(): Promise<NodeRecord[]> {
    const rows = await this.rows(`SELECT ${nodeColumns("nodes")} FROM nodes ORDER BY name`, [
      this.leaseMs,
    ]);
    return rows.map(toNode);
  }

  async setDraining(name: string, draining: boolean): Promise<boolean> {
    return (
      (await this.changes("UPDATE nodes SET draining = $2 WHERE name = $1", [name, draining])) > 0
    );
  }

  async findOwner(runtimeId: string, sessionId: string): Promise<SessionOwner | undefined> {
    const owner = await this.readOwner(runtimeId, sessionId);
    return owner === undefined ? undefined : liveOwner(runtimeId, sessionId, owner);
  }

  /**
   * Reads the owner row; returns it when its node is live. Otherwise asks `choose` and writes
   * its choice only if the row is still what was read: an insert that does nothing when a row
   * appeared meanwhile, or a takeover that does nothing when the epoch moved on (or the owner
   * renewed its lease after all). Losing that race means another placement won: read again.
   */
  async placeSession(
    runtimeId: string,
    sessionId: string,
    choose: (liveNodes: NodeRecord[]) => NodeRecord | undefined,
  ): Promise<SessionOwner | undefined> {
    for (let attempt = 1; attempt <= maxPlacementAttempts; attempt += 1) {
      const owner = await this.readOwner(runtimeId, sessionId);
      const current = owner === undefined ? undefined : liveOwner(runtimeId, sessionId, owner);
      if (current !== undefined) return current;
      const chosen = choose((await this.listNodes()).filter((node) => node.live));
      if (chosen === undefined) return undefined;
      const epoch =
        owner === undefined
          ? await this.insertOwner(runtimeId, sessionId, chosen.id)
          : await this.takeOver(runtimeId, sessionId, chosen.id, owner);
      if (epoch !== undefined) {
        return { runtimeId, sessionId, node: chosen, epoch, previousNodeId: owner?.nodeId };
      }
    }
    throw new Error(
      `placing session ${sessionId} lost ${maxPlacementAttempts} races in a row: the cluster store is contended`,
    );
  }

  /** The new owner's epoch, or undefined when another placement inserted a row first. */
  private async insertOwner(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
  ): Promise<number | undefined> {
    const [row] = await this.rows(
      `INSERT INTO session_owners (runtime_id, session_id, node_id, epoch)
       VALUES ($1, $2, $3, nextval('session_owner_epochs'))
       ON CONFLICT DO NOTHING RETURNING epoch`,
      [runtimeId, sessionId, nodeId],
    );
    return row === undefined ? undefined : integer(row, "epoch");
  }

  /**
   * Moves the session from the owner read (presumed gone) to `nodeId`: the new epoch, or
   * undefined when the row changed since it was read or its owner turned out live. The old
   * owner's row is touched first (leases.ts), so it cannot renew its lease past this takeover.
   */
  private takeOver(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    read: OwnerRow,
  ): Promise<number | undefined> {
    return this.pool.transaction(async (client) => {
      const previous = await client.query(
        `${touchNode} WHERE id = $1 RETURNING ${isLive("$2")} AS live`,
        [read.nodeId, this.leaseMs],
      );
      if (previous.rows[0]?.["live"] === true) return undefined; // it renewed meanwhile
      const moved = await client.query(
        `UPDATE session_owners SET node_id = $3, epoch = nextval('session_owner_epochs'),
           previous_node_id = $5
         WHERE runtime_id = $1 AND session_id = $2 AND epoch = $4 RETURNING epoch`,
        [runtimeId, sessionId, nodeId, read.epoch, read.nodeId],
      );
      const [row] = moved.rows;
      return row === undefined ? undefined : integer(row, "epoch");
    });
  }

  async releaseSession(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    epoch: number,
  ): Promise<void> {
    await this.changes(
      `DELETE FROM session_owners
       WHERE runtime_id = $1 AND session_id = $2 AND node_id = $3 AND epoch = $4`,
      [runtimeId, sessionId, nodeId, epoch],
    );
  }

  /**
   * One statement: the first caller once the interval is over moves next_run_at on; a racing
   * caller waits for that row, then finds next_run_at in the future and changes nothing.
   */
  async claimJob(name: string, nodeId: string, intervalMs: number): Promise<boolean> {
    const claimed = await this.changes(
      `INSERT INTO cluster_jobs (name, next_run_at, ran_by)
       VALUES ($1, clock_timestamp() + $3 * interval '1 millisecond', $2)
       ON CONFLICT (name) DO UPDATE
         SET next_run_at = clock_timestamp() + $3 * interval '1 millisecond', ran_by = $2
         WHERE cluster_jobs.next_run_at <= clock_timestamp()`,
      [name, nodeId, intervalMs],
    );
    return claimed > 0;
  }

  /** Gives back this store's share of the pool (which ends with its last user). */
  close(): Promise<void> {
    return this.release();
  }

  private async readOwner(runtimeId: string, sessionId: string): Promise<OwnerRow | undefined> {
    const [row] = await this.rows(
      `SELECT o.node_id, o.epoch, o.previous_node_id, ${nodeColumns("n")}
       FROM session_owners o LEFT JOIN nodes n ON n.id = o.node_id
       WHERE o.runtime_id = $2 AND o.session_id = $3`,
      [this.leaseMs, runtimeId, sessionId],
    );
    if (row === undefined) return undefined;
    return {
      nodeId: text(row, "node_id"),
      epoch: integer(row, "epoch"),
      previousNodeId: row["previous_node_id"] === null ? undefined : text(row, "previous_node_id"),
      node: row["id"] === null ? undefined : toNode(row),
    };
  }
}

const maxPlacementAttempts = 20;

/** A node's columns and its liveness, the lease being parameter $1. */
function nodeColumns(table: string): string {
  return `${table}.id, ${table}.name, ${table}.url, ${table}.incarnation, ${table}.max_sessions,
    ${table}.memory_bytes, ${table}.running_sessions, ${table}.draining, ${table}.heartbeat_at,
    (SELECT count(*) FROM session_owners owned WHERE owned.node_id = ${table}.id) AS owned_sessions,
    ${isLive("$1", table)} AS live`;
}

interface OwnerRow {
  nodeId: string;
  epoch: number;
  previousNodeId: string | undefined;
  /** The owner's node, undefined when it has no row any more (it left). */
  node: NodeRecord | undefined;
}

/** The owner the row names, if its node is live; undefined when it expired or left. */
function liveOwner(
  runtimeId: string,
  sessionId: string,
  owner: OwnerRow,
): SessionOwner | undefined {
  const { node, epoch, previousNodeId } = owner;
  if (node?.live !== true) return undefined;
  return { runtimeId, sessionId, node, epoch, previousNodeId };
}

function toNode(row: Row): NodeRecord {
  const heartbeatAt = row["heartbeat_at"];
  if (!(heartbeatAt instanceof Date)) throw new Error("column heartbeat_at holds no timestamp");
  return {
    id: text(row, "id"),
    name: text(row, "name"),
    url: text(row, "url"),
    incarnation: text(row, "incarnation"),
    capacity: {
      maxSessions: integer(row, "max_sessions"),
      memoryBytes: integer(row, "memory_bytes"),
    },
    runningSessions: integer(row, "running_sessions"),
    ownedSessions: integer(row, "owned_sessions"),
    draining: row["draining"] === true,
    heartbeatAt: heartbeatAt.toISOString(),
    live: row["live"] === true,
  };
}
