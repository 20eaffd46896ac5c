import { randomUUID } from "node:crypto";
import type { Logger } from "../logger.ts";
import type { ClusterStore, NodeRecord, NodeRegistration } from "./cluster-store.ts";

/** What the node does with the sessions it runs when the cluster's view of it changes. */
export interface LocalSessions {
  readonly runningCount: number;
  /** Ends every session here (`idleOnly`: those no request is using), letting go of their volumes. */
  endAll(reason: string, options?: { idleOnly?: boolean }): Promise<void>;
  /** Frees whatever claims this node still has in the metadata store (it runs nothing now). */
  forgetClaims(): Promise<void>;
}

/**
 * This Berth as a member of a cluster: it registers, renews its heartbeat every quarter of the
 * lease, and keeps a view of the other nodes. It gives its sessions up when it must: at once
 * when a heartbeat is refused (the cluster presumed it gone), and, cut off from the database,
 * once its last good heartbeat is older than the lease less one interval: by its own monotonic
 * clock, before any other node may take them.
 */
export class ClusterNode {
  private readonly store: ClusterStore;
  private readonly registration: Omit<NodeRegistration, "incarnation">;
  private readonly leaseMs: number;
  private readonly sessions: LocalSessions;
  private readonly goneHolders: Set<string>;
  private readonly log: Logger;
  private readonly nowMs: () => number;
  private incarnation = randomUUID();
  private lastGoodHeartbeatMs = 0;
  /** True while this node has given its sessions up for want of the database. */
  private cutOff = false;
  /** Set by beginLeaving: heartbeats report the node full. */
  private leaving = false;
  private view: NodeRecord[] = [];
  private timer: NodeJS.Timeout | undefined;
  private beat: Promise<void> = Promise.resolve();
  /** A draining node's ending of its idle sessions, while under way. */
  private idleEnding: Promise<void> | undefined;

  constructor(options: {
    store: ClusterStore;
    registration: Omit<NodeRegistration, "incarnation">;
    leaseMs: number;
    sessions: LocalSessions;
    /** Filled with the nodes whose lease ran out, emptied of those live again. */
    goneHolders: Set<string>;
    log: Logger;
    nowMs?: () => number;
  }) {
    this.store = options.store;
    this.registration = options.registration;
    this.leaseMs = options.leaseMs;
    this.sessions = options.sessions;
    this.goneHolders = options.goneHolders;
    this.log = options.log;
    this.nowMs = options.nowMs ?? (() => performance.now());
  }

  get id(): string {
    return this.registration.id;
  }

  get heartbeatIntervalMs(): number {
    return this.leaseMs / 4;
  }

  /** How long ago, by this node's own clock, its last heartbeat was taken by the store. */
  get heartbeatAgeMs(): number {
    return this.nowMs() - this.lastGoodHeartbeatMs;
  }

  /** The nodes as of the last heartbeat. */
  get nodes(): readonly NodeRecord[] {
    return this.view;
  }

  /**
   * Whether this node may run sessions now: not while cut off from the database, nor once its
   * last good heartbeat is as old as the moment it gives its sessions up (lease less one
   * interval, by its own clock) — another node may take them soon after.
   */
  get mayRunSessions(): boolean {
    return (
      !this.cutOff &&
      this.nowMs() - this.lastGoodHeartbeatMs < this.leaseMs - this.heartbeatIntervalMs
    );
  }

  /**
   * Takes no new sessions from now on (a shutdown under way): the node reports itself full, so
   * placement passes it by, and says so at once rather than at the next heartbeat.
   */
  async beginLeaving(): Promise<void> {
    this.leaving = true;
    this.beat = this.beat.then(() => this.heartbeat());
    await this.beat;
  }

  async start(): Promise<void> {
    await this.register();
    this.timer = setInterval(() => {
      this.beat = this.beat.then(() => this.heartbeat());
    }, this.heartbeatIntervalMs);
    this.timer.unref();
  }

  /** Stops the heartbeat and leaves the cluster (after this node's sessions have ended). */
  async leave(): Promise<void> {
    clearInterval(this.timer);
    await this.beat;
    await this.idleEnding;
    await this.store.deregister(this.id, this.incarnation).catch((error: unknown) => {
      this.log.warn("could not leave the cluster; the node's row expires with its lease", {
        error: String(error),
      });
    });
  }

  private async register(): Promise<void> {
    const sentAtMs = this.nowMs();
    await this.store.register({ ...this.registration, incarnation: this.incarnation });
    this.lastGoodHeartbeatMs = sentAtMs;
    await this.refreshView();
    this.log.info("joined the cluster", {
      node: this.registration.name,
      url: this.registration.url,
      nodes: this.view.filter((node) => node.live).length,
    });
  }

  private async heartbeat(): Promise<void> {
    const sentAtMs = this.nowMs();
    let renewed: boolean;
    try {
      // A database cut off by a dropped route answers nothing at all, not even an error: a
      // heartbeat not answered within its interval counts as failed.
      renewed = await withinMs(
        this.heartbeatIntervalMs,
        this.store.heartbeat(this.id, this.incarnation, {
          runningSessions: this.leaving
            ? this.registration.capacity.maxSessions
            : this.sessions.runningCount,
        }),
      );
    } catch (error) {
      await this.whileCutOff(error);
      return;
    }
    if (!renewed) {
      await this.giveUpSessions("the cluster presumed this node gone (its heartbeat was late)");
      await this.registerAgain();
      return;
    }
    this.lastGoodHeartbeatMs = sentAtMs;
    this.cutOff = false;
    // Every wait in a heartbeat is bounded: the next heartbeats queue behind this one.
    await withinMs(this.heartbeatIntervalMs, this.refreshView()).catch((error: unknown) => {
      this.log.warn("could not list the cluster's nodes", { error: String(error) });
    });
    if (this.view.find((node) => node.id === this.id)?.draining === true) this.endIdleSessions();
  }

  /** Joins again as a new incarnation, empty; serving again only once that is registered. */
  private async registerAgain(): Promise<void> {
    this.incarnation = randomUUID();
    try {
      await withinMs(this.heartbeatIntervalMs, this.register());
      this.cutOff = false;
    } catch (error) {
      await this.whileCutOff(error);
    }
  }

  /**
   * Beside the heartbeat, not in it: ending a session waits for its last checkpoint to reach the
   * object store, which may take longer than the lease. One at a time.
   */
  private endIdleSessions(): void {
    this.idleEnding ??= this.sessions
      .endAll("the node is draining: the session moves at its next request", { idleOnly: true })
      .catch((error: unknown) => {
        this.log.warn("could not end the draining node's idle sessions", { error: String(error) });
      })
      .finally(() => {
        this.idleEnding = undefined;
      });
  }

  private async whileCutOff(error: unknown): Promise<void> {
    const silentMs = this.nowMs() - this.lastGoodHeartbeatMs;
    this.log.warn("heartbeat failed", { error: String(error), silentMs: Math.round(silentMs) });
    if (silentMs < this.leaseMs - this.heartbeatIntervalMs) return;
    this.cutOff = true;
    // Every time, not only the first: a session started meanwhile (a claim that reached the
    // database while heartbeats did not) is given up too.
    if (this.sessions.runningCount === 0) return;
    await this.giveUpSessions(
      `cut off from the cluster's database for ${Math.round(silentMs)} ms: another node may take its sessions`,
    );
  }

  private async giveUpSessions(reason: string): Promise<void> {
    this.log.warn("giving up every session", { reason, sessions: this.sessions.runningCount });
    // Their sandboxes are killed at once; their storage's last uploads may take long (and fail:
    // another node may own the volumes now). The node does not wait for those to rejoin.
    const ended = this.sessions.endAll(`this node lost its sessions: ${reason}`);
    await withinMs(this.heartbeatIntervalMs, ended).catch(() => {
      this.log.info("the given-up sessions' storage is still being let go", {
        sessions: this.sessions.runningCount,
      });
    });
    await this.sessions.forgetClaims().catch((error: unknown) => {
      this.log.warn("could not free this node's volume claims", { error: String(error) });
    });
  }

  private async refreshView(): Promise<void> {
    this.view = await this.store.listNodes();
    for (const node of this.view) {
      if (node.live) this.goneHolders.delete(node.id);
      else this.goneHolders.add(node.id);
    }
  }
}

/** `work`'s outcome, or a rejection once `ms` have passed without one. */
function withinMs<T>(ms: number, work: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new Error(`no answer within ${ms} ms`));
    }, ms);
  });
  return Promise.race([work, timeout]).finally(() => {
    clearTimeout(timer);
  });
}
