/*
 * A node's lease, as SQL. Time is PostgreSQL's clock read when the condition is evaluated
 * (clock_timestamp()), never a node's, and not now() either: now() is when the transaction
 * began, while a statement that waited for a row lock must judge the lease as of after the wait.
 */

/**
 * Whether a nodes row's heartbeat is younger than the lease, and the node has not left:
 * `leaseParameter` names the query parameter holding the lease in ms.
 */
export function isLive(leaseParameter: string, table = "nodes"): string {
  return `(NOT ${table}.departed AND
    clock_timestamp() - ${table}.heartbeat_at < ${leaseParameter} * interval '1 millisecond')`;
}

/**
 * The first step of taking anything from a node presumed gone: rewrite its row without changing
 * it. A heartbeat of that node racing the takeover then waits for the row and checks its lease
 * again once the takeover committed, by which time it has run out: so a node never renews a lease
 * past a takeover, and learns from its next heartbeat that it is presumed gone.
 */
export const touchNode = "UPDATE nodes SET heartbeat_at = heartbeat_at";
