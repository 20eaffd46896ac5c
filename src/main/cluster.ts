import { hostname } from "node:os";
import type { Settings } from "../config/settings.ts";
import { ClusterNode } from "../core/cluster/cluster-node.ts";
import type { ClusterStore, NodeCapacity, NodeRecord } from "../core/cluster/cluster-store.ts";
import { SessionRouter } from "../core/cluster/session-router.ts";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import type { SessionManager } from "../core/sessions.ts";
import { NameTakenError } from "../core/store.ts";
import type { ClusterView } from "../wire/cluster-api.ts";
import type { SessionsElsewhere } from "../wire/data-plane.ts";
import { Forwarder } from "../wire/forwarding.ts";

/** Most bytes one node's answer to a session listing may have. */
const maxListingBytes = 16 * 1024 * 1024;

/**
 * This Berth as a node of a cluster (databaseUrl): its membership, the routing of session
 * requests to their owners, and the forwarding to them (docs/decisions/0008).
 */
export class ClusterMembership {
  readonly router: SessionRouter;
  readonly forwarder: Forwarder;
  readonly view: ClusterView;
  readonly sessionsElsewhere: SessionsElsewhere;
  private readonly store: ClusterStore;
  private readonly nodeId: string;
  private readonly settings: Settings;
  private readonly goneHolders: Set<string>;
  private readonly log: Logger;
  private node: ClusterNode | undefined;

  constructor(options: {
    store: ClusterStore;
    settings: Settings;
    nodeId: string;
    goneHolders: Set<string>;
    isRunningHere: (runtimeId: string, sessionId: string) => boolean;
    letGoHere: (runtimeId: string, sessionId: string) => Promise<void>;
    log: Logger;
    now: () => Date;
  }) {
    const { store, settings, nodeId } = options;
    this.settings = settings;
    this.goneHolders = options.goneHolders;
    this.store = store;
    this.nodeId = nodeId;
    this.log = options.log;
    this.router = new SessionRouter({
      ...options,
      store,
      // A heartbeat interval: a session that moved is found again within it.
      rememberMs: heartbeatIntervalMs(settings),
      mayRunSessions: () => this.node?.mayRunSessions ?? false,
    });
    this.forwarder = new Forwarder({
      nodeId,
      secret: settings.clusterSecret,
      now: options.now,
      // A node that accepts no connection for a heartbeat interval is unreachable for now.
      connectTimeoutMs: heartbeatIntervalMs(settings),
      isLive: (id) => this.node?.nodes.find((node) => node.id === id)?.live ?? true,
    });
    const nodeName = nodeNameOf(settings);
    this.view = {
      nodeName,
      listNodes: () => store.listNodes(),
      setDraining: (name, draining) => store.setDraining(name, draining),
    };
    this.sessionsElsewhere = { nodeName, list: (runtimeId) => this.listElsewhere(runtimeId) };
  }

  /** Joins the cluster once this node can serve: its sessions are known, its URL listens. */
  async join(options: {
    url: string;
    sessions: SessionManager;
    forgetClaims: () => Promise<void>;
  }): Promise<void> {
    const { settings, goneHolders, log } = this;
    const { sessions } = options;
    this.node = new ClusterNode({
      store: this.store,
      registration: {
        id: this.nodeId,
        name: nodeNameOf(settings),
        url: nodeUrlOf(settings, options.url),
        capacity: nodeCapacity(settings),
      },
      leaseMs: settings.nodeLeaseSeconds * 1000,
      sessions: {
        get runningCount() {
          return sessions.runningCount;
        },
        endAll: (reason, endOptions) => sessions.endAll(reason, endOptions),
        forgetClaims: options.forgetClaims,
      },
      goneHolders,
      log,
    });
    try {
      await this.node.start();
    } catch (error) {
      if (error instanceof NameTakenError) {
        throw new NodeNameTakenError(
          `another live node of the cluster is named ${error.takenName}: give this one a name of its own (--node-name)`,
        );
      }
      throw error;
    }
  }

  /** How long ago this node's last good heartbeat was; undefined before it joined. */
  heartbeatAgeMs(): number | undefined {
    return this.node?.heartbeatAgeMs;
  }

  /** Whether this node may do a piece of background work now: once per cluster and interval. */
  onceForCluster(job: string, intervalMs: number): Promise<boolean> {
    return this.store.claimJob(job, this.nodeId, intervalMs);
  }

  /** Takes no new sessions from now on: a shutdown has begun (its sessions end next). */
  async beginLeaving(): Promise<void> {
    await this.node?.beginLeaving();
  }

  /** Leaves the cluster; its sessions have ended. */
  async leave(): Promise<void> {
    await this.node?.leave();
    this.forwarder.close();
  }

  private async listElsewhere(
    runtimeId: string,
  ): Promise<{ sessions: unknown[]; unreachableNodes: string[] }> {
    const others = (this.node?.nodes ?? []).filter((node) => node.live && node.id !== this.nodeId);
    const answers = await Promise.all(
      others.map(async (node) => ({ node, sessions: await this.sessionsOn(node, runtimeId) })),
    );
    return {
      sessions: answers.flatMap((answer) => answer.sessions ?? []),
      unreachableNodes: answers.filter((answer) => answer.sessions === undefined).map(nameOf),
    };
  }

  private async sessionsOn(node: NodeRecord, runtimeId: string): Promise<unknown[] | undefined> {
    const target = `/berth/v1/runtimes/${encodeURIComponent(runtimeId)}/sessions`;
    try {
      const answer = (await this.forwarder.getJson(node, target, maxListingBytes)) as {
        sessions?: unknown;
      };
      return Array.isArray(answer.sessions) ? (answer.sessions as unknown[]) : [];
    } catch (error) {
      this.log.warn("a node did not list its sessions", { node: node.name, error: String(error) });
      return undefined;
    }
  }
}

const nameOf = (answer: { node: NodeRecord }): string => answer.node.name;

/** The node's name: the setting, else the host name. */
export function nodeNameOf(settings: Settings): string {
  return settings.nodeName || hostname();
}

/** How often a node renews its heartbeat (ClusterNode): a quarter of the lease. */
function heartbeatIntervalMs(settings: Settings): number {
  return (settings.nodeLeaseSeconds * 1000) / 4;
}

/** As many sessions as both the slots and the memory for them allow. */
function nodeCapacity(settings: Settings): NodeCapacity {
  return {
    maxSessions: Math.max(
      1,
      Math.min(
        settings.maxSessions,
        Math.floor(settings.sandboxesMemoryBytes / settings.sessionMemoryBytes),
      ),
    ),
    memoryBytes: settings.sandboxesMemoryBytes,
  };
}

/** This node cannot join: a live node of another id has its name. A setting to fix. */
export class NodeNameTakenError extends Error {}

/** How other nodes reach this one: the setting, else where it listens (by host name on all). */
function nodeUrlOf(settings: Settings, listeningUrl: string): string {
  if (settings.nodeUrl !== "") return settings.nodeUrl.replace(/\/$/, "");
  const url = new URL(listeningUrl);
  if (["0.0.0.0", "[::]"].includes(url.hostname)) url.hostname = hostname();
  return url.origin;
}

/** A lone Berth (SQLite) shown as a cluster of one: it has no other node to drain to. */
export function loneNodeView(
  settings: Settings,
  sessions: () => number,
  url: () => string,
): ClusterView {
  const name = nodeNameOf(settings);
  return {
    nodeName: name,
    listNodes: () =>
      Promise.resolve([
        {
          id: "local",
          name,
          url: url(),
          incarnation: "",
          capacity: {
            maxSessions: settings.maxSessions,
            memoryBytes: settings.sandboxesMemoryBytes,
          },
          runningSessions: sessions(),
          ownedSessions: sessions(),
          draining: false,
          heartbeatAt: new Date().toISOString(),
          live: true,
        },
      ]),
    setDraining: () =>
      Promise.reject(
        new BerthError(
          "ValidationException",
          "This Berth is a single node (no databaseUrl): there is no other node its sessions could move to",
        ),
      ),
  };
}
