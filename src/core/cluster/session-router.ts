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
  /** Forwarded by another node, which chose this one: served here, never forwarded again. */
  forwarded: boolean;
}

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
  /** Holders whose volumes may be taken at once: nodes whose lease ran out. */
  private readonly goneHolders: Set<string>;
  private readonly log: Logger;

  constructor(options: {
    store: ClusterStore;
    nodeId: string;
    isRunningHere: (runtimeId: string, sessionId: string) => boolean;
    /** Settles once a session of that id ending here has let go of everything. */
    letGoHere: (runtimeId: string, sessionId: string) => Promise<void>;
    goneHolders: Set<string>;
    log: Logger;
  }) {
    this.store = options.store;
    this.nodeId = options.nodeId;
    this.isRunningHere = options.isRunningHere;
    this.letGoHere = options.letGoHere;
    this.goneHolders = options.goneHolders;
    this.log = options.log;
  }

  async route(runtimeId: string, sessionId: string, options: RouteOptions): Promise<SessionRoute> {
    // The common case, a warm session asked again, costs no round trip to the database.
    if (this.isRunningHere(runtimeId, sessionId) || options.forwarded) return { kind: "here" };
    let owner = await this.ownerOf(runtimeId, sessionId, options.place);
    if (owner?.node.id === this.nodeId && owner.node.draining) {
      // A draining node's session that ended to move keeps its owner row until it has let go
      // of its storage: once it has, the session is placed anew, elsewhere.
      await this.letGoHere(runtimeId, sessionId);
      owner = await this.ownerOf(runtimeId, sessionId, options.place);
    }
    if (owner === undefined) {
      if (options.place) throw noRoom();
      return { kind: "here" };
    }
    return owner.node.id === this.nodeId ? { kind: "here" } : { kind: "owner", node: owner.node };
  }

  private ownerOf(
    runtimeId: string,
    sessionId: string,
    place: boolean,
  ): Promise<SessionOwner | undefined> {
    if (!place) return this.store.findOwner(runtimeId, sessionId);
    return this.store.placeSession(runtimeId, sessionId, (nodes) =>
      leastLoaded(nodes, this.nodeId),
    );
  }

  async claim(runtimeId: string, sessionId: string): Promise<() => Promise<void>> {
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
