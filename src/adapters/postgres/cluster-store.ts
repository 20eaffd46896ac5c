import type {
  ClusterStore,
  NodeLoad,
  NodeRecord,
  NodeRegistration,
  SessionOwner,
} from "../../core/cluster/cluster-store.ts";
import { BerthError } from "../../core/errors.ts";
import { NameTakenError } from "../../core/store.ts";
import { sqlState, uniqueViolation } from "./database-errors.ts";
import { isLive, touchNode } from "./leases.ts";
import { PooledStore, type Queryable, type Row } from "./pool.ts";
import { integer, text } from "./rows.ts";

/**
 * The cluster's shared state in PostgreSQL. Every judgement of time is PostgreSQL's: a
 * heartbeat is stamped with its clock and a node is live while its heartbeat is younger than
 * the lease by that same clock (leases.ts), so the nodes' own clocks never matter. Owner
 * changes are compare-and-set on the epoch. A node's row is never deleted: one that left is
 * marked departed, so an owner row or a volume claim naming its id finds it gone, not unknown.
 */
export class PostgresClusterStore extends PooledStore implements ClusterStore {
  /**
   * Throws NameTakenError when a live node of another id has the name. A node of another id
   * that is not live gives its name up (a machine reinstalled, with a new data directory): its
   * row is renamed out of the way and kept, departed. A node registering again stays draining
   * if it was (an operator's drain outlives a restart), and owns nothing: its new incarnation
   * runs no session, so the owner rows of its earlier one go (they would count as its load and
   * route requests to it).
   */
  register(node: NodeRegistration): Promise<void> {
    return this.pool.transaction(async (client) => {
      // No node name has a space or a parenthesis (the nodeName setting) and ids are unique: the
      // name given to the old row is no one's.
      await client.query(
        `UPDATE nodes SET name = '(departed) ' || id, departed = true
         WHERE name = $1 AND id <> $2 AND NOT ${isLive("$3")}`,
        [node.name, node.id, this.leaseMs],
      );
      try {
        await client.query(
          `INSERT INTO nodes (id, name, url, incarnation, max_sessions, memory_bytes,
             running_sessions, draining, heartbeat_at)
           VALUES ($1, $2, $3, $4, $5, $6, 0, false, clock_timestamp())
           ON CONFLICT (id) DO UPDATE SET name = $2, url = $3, incarnation = $4,
             max_sessions = $5, memory_bytes = $6, running_sessions = 0, departed = false,
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
      // After the node's row is written (and locked): a placement onto the node either
      // committed before, its row going here, or waits and counts the new incarnation.
      await client.query("DELETE FROM session_owners WHERE node_id = $1", [node.id]);
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
    await this.changes("UPDATE nodes SET departed = true WHERE id = $1 AND incarnation = $2", [
      nodeId,
      incarnation,
    ]);
  }

  async listNodes(): Promise<NodeRecord[]> {
    const rows = await this.rows(
      `SELECT ${nodeColumns("nodes")} FROM nodes WHERE NOT departed ORDER BY name`,
      [this.leaseMs],
    );
    return rows.map(toNode);
  }

  async setDraining(name: string, draining: boolean): Promise<boolean> {
    const changed = await this.changes(
      "UPDATE nodes SET draining = $2 WHERE name = $1 AND NOT departed",
      [name, draining],
    );
    return changed > 0;
  }

  async findOwner(runtimeId: string, sessionId: string): Promise<SessionOwner | undefined> {
    const owner = await this.readOwner(runtimeId, sessionId);
    return owner === undefined ? undefined : liveOwner(runtimeId, sessionId, owner);
  }

  /**
   * Reads the owner row; returns it when its node is live. Otherwise asks `choose` and writes
   * its choice only if the row is still what was read (an insert that does nothing when a row
   * appeared meanwhile, or a takeover that does nothing when the epoch moved on, or the owner
   * renewed its lease after all) and the node chosen still fits (writeOwner). Losing that race
   * means another placement won: read again, and choose again by fresh counts.
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
      const epoch = await this.writeOwner(runtimeId, sessionId, chosen, owner);
      if (epoch !== undefined) {
        return { runtimeId, sessionId, node: chosen, epoch, previousNodeId: owner?.nodeId };
      }
    }
    throw contended(sessionId);
  }

  /**
   * Writes `chosen` as the session's owner in place of the row read (none, or one whose owner
   * is presumed gone): the new epoch, or undefined when the choice went stale meanwhile. The
   * chosen node's row stays locked until the write commits, so placements onto one node count
   * its sessions one after another and never together fill it past its capacity.
   */
  private writeOwner(
    runtimeId: string,
    sessionId: string,
    chosen: NodeRecord,
    read: OwnerRow | undefined,
  ): Promise<number | undefined> {
    return this.pool.transaction(async (client) => {
      if (!(await this.stillFits(client, chosen))) return undefined;
      return read === undefined
        ? insertOwner(client, runtimeId, sessionId, chosen.id)
        : this.takeOver(client, runtimeId, sessionId, chosen.id, read);
    });
  }

  /**
   * Locks the chosen node's row and tells whether the choice still holds: the node is live and,
   * if it had room when chosen, has room still (a racing placement may have taken its last
   * place). A node chosen without room (a node placing a session on itself, to run what it was
   * sent) is taken as chosen.
   */
  private async stillFits(client: Queryable, chosen: NodeRecord): Promise<boolean> {
    const locked = await client.query(
      `SELECT ${isLive("$2")} AS live, max_sessions FROM nodes WHERE id = $1 FOR NO KEY UPDATE`,
      [chosen.id, this.leaseMs],
    );
    const [node] = locked.rows;
    if (node?.["live"] !== true) return false;
    if (chosen.ownedSessions >= chosen.capacity.maxSessions) return true;
    // A statement of its own, after the lock: it sees what placements that held it committed.
    const counted = await client.query(
      "SELECT count(*) AS owned FROM session_owners WHERE node_id = $1",
      [chosen.id],
    );
    const [count] = counted.rows;
    return count !== undefined && integer(count, "owned") < integer(node, "max_sessions");
  }

  /**
   * Moves the session from the owner read (presumed gone) to `nodeId`: the new epoch, or
   * undefined when the row changed since it was read or its owner turned out live. The old
   * owner's row is touched first (leases.ts), so it cannot renew its lease past this takeover.
   */
  private async takeOver(
    client: Queryable,
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    read: OwnerRow,
  ): Promise<number | undefined> {
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

/** The new owner's epoch, or undefined when another placement inserted a row first. */
async function insertOwner(
  client: Queryable,
  runtimeId: string,
  sessionId: string,
  nodeId: string,
): Promise<number | undefined> {
  const inserted = await client.query(
    `INSERT INTO session_owners (runtime_id, session_id, node_id, epoch)
     VALUES ($1, $2, $3, nextval('session_owner_epochs'))
     ON CONFLICT DO NOTHING RETURNING epoch`,
    [runtimeId, sessionId, nodeId],
  );
  const [row] = inserted.rows;
  return row === undefined ? undefined : integer(row, "epoch");
}

/** Every placement of the session lost its race: retryable, as the next try may well win. */
function contended(sessionId: string): BerthError {
  return new BerthError(
    "ThrottlingException",
    `Placing session ${sessionId} was contended: it lost ${maxPlacementAttempts} races in a row with other placements. Retry in a moment (the AWS SDKs retry ThrottlingException)`,
  );
}

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
  /** The owner's node; undefined when it has no row (none was ever written for it). */
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
