import { BerthError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { SessionOwnership } from "../sessions.ts";
import type { ClusterStore, NodeRecord, SessionOwner } from "./cluster-store.ts";
import { leastLoaded } from "./placement.ts";

/** Where a request for a session is served: here, or on the node that owns the session. */
export type SessionRoute = { kind: "here" } | { kind: "owner"; node: NodeRecord };

export interface RouteOptions {
  /**
   * Whether a session no live node owns is placed now (an invocation or command starts it), or
   * left unplaced (a stop of a session that runs nowhere answers here: not found).
   */
  place: boolean;
  /**
   * How many nodes forwarded the request so far (0: straight from a client). A forwarded
   * request is served here unless another live node owns the session: a forwarder's memory of
   * the owner was out of date. It then goes on there, once: at most maxHops in all.
   */
  hops: number;
  /**
   * Checks, before a session is placed, that the request names a runtime that exists (a
   * placement for a made-up one would be left behind).
   */
  beforePlacing?: () => Promise<void>;
}

interface Placement {
  choose: (liveNodes: NodeRecord[]) => NodeRecord | undefined;
  /** Runs first: see RouteOptions.beforePlacing. */
  before: () => Promise<void>;
}

/** Remembered owners past which expired ones are swept out. */
const maxRemembered = 10_000;

/** The most nodes a request is forwarded through: one, and one more after a stale memory. */
export const maxHops = 2;

/**
 * Decides which node serves each session's requests, and owns the sessions this node runs:
 * before one starts here it claims the owner row for this node (SessionOwnership), and once
 * the session has let go of everything it gives the row up, at the epoch it claimed, so a
 * later owner's row is never touched (docs/decisions/0008-a-cluster-on-postgresql.md).
 */
export class SessionRouter implements SessionOwnership {
  private readonly store: ClusterStore;
  private readonly nodeId: string;
  private readonly isRunningHere: (runtimeId: string, sessionId: string) => boolean;
  private readonly letGoHere: (runtimeId: string, sessionId: string) => Promise<void>;
  private readonly mayRunSessions: () => boolean;
  /** Holders whose volumes may be taken at once: nodes whose lease ran out. */
  private readonly goneHolders: Set<string>;
  private readonly log: Logger;
  private readonly nowMs: () => number;
  /** How long a remote owner is remembered: a warm session's requests skip the database. */
  private readonly rememberMs: number;
  /** Remote owners of sessions recently routed, until a time (nowMs). */
  private readonly remembered = new Map<string, { node: NodeRecord; untilMs: number }>();

  constructor(options: {
    store: ClusterStore;
    nodeId: string;
    isRunningHere: (runtimeId: string, sessionId: string) => boolean;
    /** Settles once a session of that id ending here has let go of everything. */
    letGoHere: (runtimeId: string, sessionId: string) => Promise<void>;
    /** Whether this node's lease is fresh enough to run sessions (ClusterNode.mayRunSessions). */
    mayRunSessions: () => boolean;
    goneHolders: Set<string>;
    log: Logger;
    rememberMs: number;
    nowMs?: () => number;
  }) {
    this.rememberMs = options.rememberMs;
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.store = options.store;
    this.nodeId = options.nodeId;
    this.isRunningHere = options.isRunningHere;
    this.letGoHere = options.letGoHere;
    this.mayRunSessions = options.mayRunSessions;
    this.goneHolders = options.goneHolders;
    this.log = options.log;
  }

  async route(runtimeId: string, sessionId: string, options: RouteOptions): Promise<SessionRoute> {
    // The common cases, a warm session asked again here or through another node, cost no
    // round trip to the database.
    if (this.isRunningHere(runtimeId, sessionId)) {
      // Its lease too old, this node is about to give its sessions up: another may run them.
      if (!this.mayRunSessions()) throw cutOff();
      return { kind: "here" };
    }
    if (options.hops >= maxHops) return { kind: "here" };
    const key = sessionKey(runtimeId, sessionId);
    const remembered = this.remembered.get(key);
    if (remembered !== undefined && remembered.untilMs <= this.nowMs()) this.remembered.delete(key);
    else if (options.hops === 0 && remembered !== undefined) {
      return { kind: "owner", node: remembered.node };
    }
    const placement = options.place ? this.placement(options) : undefined;
    let owner = await this.ownerOf(runtimeId, sessionId, placement);
    if (owner?.node.id === this.nodeId && owner.node.draining) {
      // A draining node's session that ended to move keeps its owner row until it has let go
      // of its storage: once it has, the session is placed anew, elsewhere.
      await this.letGoHere(runtimeId, sessionId);
      owner = await this.ownerOf(runtimeId, sessionId, placement);
    }
    if (owner === undefined) {
      if (options.place) throw noRoom();
      return { kind: "here" };
    }
    if (owner.node.id === this.nodeId) return { kind: "here" };
    this.remember(key, owner.node);
    return { kind: "owner", node: owner.node };
  }

  private remember(key: string, node: NodeRecord): void {
    const nowMs = this.nowMs();
    // Sessions asked once and never again would otherwise stay: the expired go now and then.
    if (this.remembered.size >= maxRemembered) {
      for (const [other, entry] of this.remembered)
        if (entry.untilMs <= nowMs) this.remembered.delete(other);
    }
    this.remembered.set(key, { node, untilMs: nowMs + this.rememberMs });
  }

  /** Forgets where a session runs: a request forwarded there failed. */
  forget(runtimeId: string, sessionId: string): void {
    this.remembered.delete(sessionKey(runtimeId, sessionId));
  }

  /**
   * How a session no live node owns is placed: on the least loaded node; forwarded here by a
   * node that chose this one, here, unless this node cannot take it (draining, full).
   */
  private placement(options: RouteOptions): Placement {
    const choose =
      options.hops === 0
        ? (nodes: NodeRecord[]) => leastLoaded(nodes, this.nodeId)
        : (nodes: NodeRecord[]) =>
            leastLoaded(
              nodes.filter((node) => node.id === this.nodeId),
              this.nodeId,
            ) ?? leastLoaded(nodes, this.nodeId);
    return { choose, before: options.beforePlacing ?? (() => Promise.resolve()) };
  }

  /** The session's live owner; placed first when it has none and `placement` is given. */
  private async ownerOf(
    runtimeId: string,
    sessionId: string,
    placement: Placement | undefined,
  ): Promise<SessionOwner | undefined> {
    const owner = await this.store.findOwner(runtimeId, sessionId);
    if (owner !== undefined || placement === undefined) return owner;
    await placement.before();
    return this.store.placeSession(runtimeId, sessionId, placement.choose);
  }

  async claim(runtimeId: string, sessionId: string): Promise<() => Promise<void>> {
    if (!this.mayRunSessions()) throw cutOff();
    const owner = await this.store.placeSession(runtimeId, sessionId, (nodes) =>
      nodes.find((node) => node.id === this.nodeId),
    );
    if (owner?.node.id !== this.nodeId) throw ownedElsewhere(sessionId, owner);
    if (owner.previousNodeId !== undefined) {
      // Its lease ran out: what it held for this session (volumes' heads) is taken at once.
      this.goneHolders.add(owner.previousNodeId);
      this.log.info("session taken over", {
        runtimeId,
        sessionId,
        from: owner.previousNodeId,
        epoch: owner.epoch,
      });
    }
    return async () => {
      await this.store
        .releaseSession(runtimeId, sessionId, this.nodeId, owner.epoch)
        .catch((error: unknown) => {
          // Left behind, the row names this node until its lease ends: harmless, as the session
          // starts here again on its next request.
          this.log.warn("could not give up a session's owner row", {
            runtimeId,
            sessionId,
            error: String(error),
          });
        });
    };
  }
}

function sessionKey(runtimeId: string, sessionId: string): string {
  return `${runtimeId}\u0000${sessionId}`;
}

function cutOff(): BerthError {
  return new BerthError(
    "ThrottlingException",
    "This node has lost touch with the cluster's database and runs no sessions until it is back: retry (through another node)",
  );
}

function noRoom(): BerthError {
  return new BerthError(
    "ServiceQuotaExceededException",
    "No node of the cluster has room for a new session: every live node is full (maxSessions) or draining. Stop idle sessions, add a node or raise maxSessions",
  );
}

function ownedElsewhere(sessionId: string, owner: SessionOwner | undefined): BerthError {
  const where =
    owner === undefined ? "no live node can take it" : `node ${owner.node.name} owns it now`;
  return new BerthError(
    "ThrottlingException",
    `Session ${sessionId} cannot start on this node: ${where}. Retry: the request then goes to its owner`,
  );
}
