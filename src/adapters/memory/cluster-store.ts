import type {
  ClusterStore,
  NodeLoad,
  NodeRecord,
  NodeRegistration,
  SessionOwner,
} from "../../core/cluster/cluster-store.ts";
import { NameTakenError } from "../../core/store.ts";

interface NodeRow {
  registration: NodeRegistration;
  runningSessions: number;
  draining: boolean;
  /** It left (deregistered, or gave its name up): never live until it registers, not listed. */
  departed: boolean;
  heartbeatAtMs: number;
}

interface OwnerRow {
  nodeId: string;
  epoch: number;
  previousNodeId: string | undefined;
}

/**
 * The cluster store in memory, for unit tests: the PostgreSQL store's semantics
 * (test/contracts/cluster-store.test.ts holds both to them) with a clock the test moves. Every
 * method runs to completion without interleaving, so each compare-and-set trivially holds.
 */
export class MemoryClusterStore implements ClusterStore {
  private readonly now: () => number;
  private readonly leaseMs: number;
  private readonly nodes = new Map<string, NodeRow>();
  private readonly owners = new Map<string, OwnerRow>();
  private readonly jobs = new Map<string, { nextRunAtMs: number; ranBy: string }>();
  /** Like the PostgreSQL sequence: an epoch is never given twice, even after a release. */
  private lastEpoch = 0;

  /** `now`: the store's clock, in ms (Date.now by default). */
  constructor(options: { leaseMs: number; now?: () => number }) {
    this.leaseMs = options.leaseMs;
    this.now = options.now ?? Date.now;
  }

  register(node: NodeRegistration): Promise<void> {
    return settle(() => {
      for (const [id, row] of this.nodes) {
        if (id === node.id || row.registration.name !== node.name) continue;
        if (this.isLive(row)) throw new NameTakenError(node.name);
        // A node presumed gone gives its name up, keeping its row as PostgreSQL's store does.
        row.registration.name = `(departed) ${id}`;
        row.departed = true;
      }
      this.nodes.set(node.id, {
        registration: copyRegistration(node),
        runningSessions: 0,
        // An operator's drain outlives a restart; a brand-new node takes sessions.
        draining: this.nodes.get(node.id)?.draining ?? false,
        departed: false,
        heartbeatAtMs: this.now(),
      });
      // The new incarnation runs nothing: what the earlier one owned is no one's now.
      for (const [key, owner] of this.owners) {
        if (owner.nodeId === node.id) this.owners.delete(key);
      }
    });
  }

  heartbeat(nodeId: string, incarnation: string, load: NodeLoad): Promise<boolean> {
    return settle(() => {
      const row = this.nodes.get(nodeId);
      if (row?.registration.incarnation !== incarnation || !this.isLive(row)) return false;
      row.heartbeatAtMs = this.now();
      row.runningSessions = load.runningSessions;
      return true;
    });
  }

  deregister(nodeId: string, incarnation: string): Promise<void> {
    return settle(() => {
      const row = this.nodes.get(nodeId);
      if (row?.registration.incarnation === incarnation) row.departed = true;
    });
  }

  listNodes(): Promise<NodeRecord[]> {
    return settle(() => this.nodeRecords());
  }

  setDraining(name: string, draining: boolean): Promise<boolean> {
    return settle(() => {
      const row = this.listedRows().find((node) => node.registration.name === name);
      if (row === undefined) return false;
      row.draining = draining;
      return true;
    });
  }

  findOwner(runtimeId: string, sessionId: string): Promise<SessionOwner | undefined> {
    return settle(() => this.liveOwner(runtimeId, sessionId));
  }

  placeSession(
    runtimeId: string,
    sessionId: string,
    choose: (liveNodes: NodeRecord[]) => NodeRecord | undefined,
  ): Promise<SessionOwner | undefined> {
    return settle(() => {
      const current = this.liveOwner(runtimeId, sessionId);
      if (current !== undefined) return current;
      const chosen = choose(this.nodeRecords().filter((node) => node.live));
      if (chosen === undefined) return undefined;
      const replaced = this.owners.get(ownerKey(runtimeId, sessionId));
      const owner: OwnerRow = {
        nodeId: chosen.id,
        epoch: (this.lastEpoch += 1),
        previousNodeId: replaced?.nodeId,
      };
      this.owners.set(ownerKey(runtimeId, sessionId), owner);
      const { epoch, previousNodeId } = owner;
      return { runtimeId, sessionId, node: chosen, epoch, previousNodeId };
    });
  }

  releaseSession(
    runtimeId: string,
    sessionId: string,
    nodeId: string,
    epoch: number,
  ): Promise<void> {
    return settle(() => {
      const key = ownerKey(runtimeId, sessionId);
      const owner = this.owners.get(key);
      if (owner?.nodeId === nodeId && owner.epoch === epoch) this.owners.delete(key);
    });
  }

  claimJob(name: string, nodeId: string, intervalMs: number): Promise<boolean> {
    return settle(() => {
      const job = this.jobs.get(name);
      const now = this.now();
      if (job !== undefined && job.nextRunAtMs > now) return false;
      this.jobs.set(name, { nextRunAtMs: now + intervalMs, ranBy: nodeId });
      return true;
    });
  }

  close(): Promise<void> {
    return Promise.resolve();
  }

  private isLive(row: NodeRow): boolean {
    return !row.departed && this.now() - row.heartbeatAtMs < this.leaseMs;
  }

  /** The nodes that have not left. */
  private listedRows(): NodeRow[] {
    return [...this.nodes.values()].filter((row) => !row.departed);
  }

  /** Every node by name, as PostgreSQL orders them (byte order). */
  private nodeRecords(): NodeRecord[] {
    return this.listedRows()
      .map((row) => this.toRecord(row))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  private toRecord(row: NodeRow): NodeRecord {
    return {
      ...copyRegistration(row.registration),
      runningSessions: row.runningSessions,
      ownedSessions: [...this.owners.values()].filter(
        (owner) => owner.nodeId === row.registration.id,
      ).length,
      draining: row.draining,
      heartbeatAt: new Date(row.heartbeatAtMs).toISOString(),
      live: this.isLive(row),
    };
  }

  private liveOwner(runtimeId: string, sessionId: string): SessionOwner | undefined {
    const owner = this.owners.get(ownerKey(runtimeId, sessionId));
    if (owner === undefined) return undefined;
    const found = this.toOwner(runtimeId, sessionId, owner);
    return found?.node.live === true ? found : undefined;
  }

  private toOwner(runtimeId: string, sessionId: string, owner: OwnerRow): SessionOwner | undefined {
    const row = this.nodes.get(owner.nodeId);
    if (row === undefined) return undefined;
    const { epoch, previousNodeId } = owner;
    return { runtimeId, sessionId, node: this.toRecord(row), epoch, previousNodeId };
  }
}

function ownerKey(runtimeId: string, sessionId: string): string {
  return JSON.stringify([runtimeId, sessionId]);
}

/** The caller's records are its own: nothing it changes afterwards reaches the store. */
function copyRegistration(node: NodeRegistration): NodeRegistration {
  const { id, name, url, incarnation, capacity } = node;
  return { id, name, url, incarnation, capacity: { ...capacity } };
}

/** Runs the work and reports its outcome as a promise, as the interface asks. */
function settle<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (error) {
    return Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
}
