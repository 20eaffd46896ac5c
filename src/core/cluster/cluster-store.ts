/**
 * What nodes of one Berth cluster share to agree on who runs what: the nodes themselves, with a
 * heartbeat, and the owner of every session. Implementations: PostgreSQL (the cluster) and
 * in-memory (tests); each passes test/contracts/cluster-store.test.ts.
 *
 * Time is the store's own: a heartbeat is stamped with the store's clock and a node is live
 * while its last heartbeat is younger than the lease, judged by that same clock. No two
 * machines' clocks are ever compared (docs/decisions/0008-a-cluster-on-postgresql.md).
 */
export interface ClusterStore {
  /**
   * Adds the node, or replaces its row when it registers again (a restart, or after it learned
   * it lost its lease): the new `incarnation` is live from now, with no load and owning no
   * session (a new incarnation runs nothing). A drain stays until setDraining clears it.
   */
  register(node: NodeRegistration): Promise<void>;
  /**
   * Renews the node's heartbeat and records its load, only while the row still names this
   * incarnation and its lease has not run out. False otherwise: the node was presumed gone (its
   * sessions may run elsewhere now) and must end every session it runs, then register again.
   */
  heartbeat(nodeId: string, incarnation: string, load: NodeLoad): Promise<boolean>;
  /**
   * Marks the node departed if its row still names this incarnation (a node leaving on
   * shutdown): no longer listed nor live, so what it held is free to take at once.
   */
  deregister(nodeId: string, incarnation: string): Promise<void>;
  /** Every registered node, by name; `live` as judged by the store's clock now. */
  listNodes(): Promise<NodeRecord[]>;
  /** Sets whether the named node takes new sessions. False when no node has that name. */
  setDraining(name: string, draining: boolean): Promise<boolean>;

  /** The session's owner, if a live node owns it; undefined otherwise (no owner, or it expired). */
  findOwner(runtimeId: string, sessionId: string): Promise<SessionOwner | undefined>;
  /**
   * The session's owner, placing it first when no live node owns it: `choose` picks among the
   * live nodes, and the choice is written only if the owner row is still what was read (a
   * compare-and-set on the epoch), so concurrent placements agree on one owner. Each change of
   * owner increases the epoch. Undefined when `choose` returns undefined (no node has room).
   */
  placeSession(
    runtimeId: string,
    sessionId: string,
    choose: (liveNodes: NodeRecord[]) => NodeRecord | undefined,
  ): Promise<SessionOwner | undefined>;
  /** Drops the owner row if it is still this node's at this epoch (its session ended). */
  releaseSession(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    epoch: number,
  ): Promise<void>;

  /**
   * Background work done once for the whole cluster: true for exactly one caller per
   * `intervalMs` (the first to ask once the interval since the last run is over).
   */
  claimJob(name: string, nodeId: string, intervalMs: number): Promise<boolean>;

  close(): Promise<void>;
}

export interface NodeRegistration {
  /** The node's id (its data directory's node id): who holds volumes and claims. */
  id: string;
  /** Unique in the cluster; what operators type (`berth nodes drain NAME`). */
  name: string;
  /** Where the other nodes reach it. */
  url: string;
  /** Changes at every registration: tells a node's current life from an earlier one. */
  incarnation: string;
  capacity: NodeCapacity;
}

export interface NodeCapacity {
  maxSessions: number;
  /** Memory its sandboxes may use together (sandboxesMemoryBytes): shown, maxSessions counts it. */
  memoryBytes: number;
}

export interface NodeLoad {
  runningSessions: number;
}

export interface NodeRecord extends NodeRegistration, NodeLoad {
  /**
   * Sessions whose owner row names the node: placed there, started or not. Known at once, where
   * runningSessions waits for the next heartbeat: what placement counts.
   */
  ownedSessions: number;
  draining: boolean;
  /** The store's clock at its last heartbeat (or registration), ISO 8601. */
  heartbeatAt: string;
  live: boolean;
}

export interface SessionOwner {
  runtimeId: string;
  sessionId: string;
  /** The owning node, as it was when the owner was read. */
  node: NodeRecord;
  /** Increases with every change of owner: a fencing token. */
  epoch: number;
  /**
   * The owner before this one, when this one took the session from a node whose lease ran out:
   * what that node held for the session is free to take at once.
   */
  previousNodeId: string | undefined;
}
