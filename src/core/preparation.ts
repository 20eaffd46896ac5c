import type { AgentArtifact, RuntimeVersionRecord } from "./model.ts";
import type { MetadataStore } from "./store.ts";

/**
 * Checks, fetches and unpacks a version's artifact; throws ArtifactProblem when unusable.
 * Resolves with the digest the version is pinned to (container images), if any.
 */
export type ArtifactCheck = (
  artifact: AgentArtifact,
  signal: AbortSignal,
) => Promise<string | undefined>;

/** An artifact that cannot run, with a reason a user can act on (shown as failureReason). */
export class ArtifactProblem extends Error {}

export interface PreparationLog {
  warn(message: string, fields: Record<string, unknown>): void;
}

/**
 * Prepares new runtime versions in the background and records the outcome: READY, or
 * CREATE_FAILED/UPDATE_FAILED with a failureReason. Versions left unsettled by a crash are
 * picked up again by resumeUnsettled() at start, so none stays CREATING forever.
 */
export class VersionPreparer {
  private readonly inFlight = new Set<Promise<void>>();
  /** The versions being prepared here (runtime id, NUL, version). */
  private readonly preparing = new Set<string>();
  private readonly abort = new AbortController();
  private readonly store: MetadataStore;
  private readonly check: ArtifactCheck;
  private readonly now: () => Date;
  private readonly log: PreparationLog;

  constructor(options: {
    store: MetadataStore;
    check: ArtifactCheck;
    now: () => Date;
    log: PreparationLog;
  }) {
    this.store = options.store;
    this.check = options.check;
    this.now = options.now;
    this.log = options.log;
  }

  prepare(version: RuntimeVersionRecord): void {
    const key = `${version.runtimeId}\u0000${version.version}`;
    if (this.preparing.has(key)) return;
    this.preparing.add(key);
    const work = this.settle(version).finally(() => {
      this.inFlight.delete(work);
      this.preparing.delete(key);
    });
    this.inFlight.add(work);
  }

  /**
   * Prepares the versions left unsettled (a server stopped mid-way), those not being prepared
   * here already; with `createdBefore`, only those older: younger ones may still be under way on
   * another node of a cluster.
   */
  async resumeUnsettled(options: { createdBefore?: string } = {}): Promise<void> {
    for (const version of await this.store.listUnsettledVersions()) {
      const { createdBefore } = options;
      if (createdBefore === undefined || version.createdAt < createdBefore) this.prepare(version);
    }
  }

  /** Resolves once every preparation started so far has settled. */
  async idle(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** Stops preparations; unfinished ones stay unsettled and resume at the next start. */
  async close(): Promise<void> {
    this.abort.abort(new Error("server shutting down"));
    await this.idle();
  }

  private async settle(version: RuntimeVersionRecord): Promise<void> {
    const failed = version.version === 1 ? "CREATE_FAILED" : "UPDATE_FAILED";
    let outcome: {
      status: "READY" | typeof failed;
      failureReason: string | undefined;
      artifactDigest?: string;
    };
    try {
      const digest = await this.check(version.config.artifact, this.abort.signal);
      outcome = {
        status: "READY",
        failureReason: undefined,
        ...(digest === undefined ? {} : { artifactDigest: digest }),
      };
    } catch (error) {
      if (this.abort.signal.aborted) return;
      const reason =
        error instanceof ArtifactProblem
          ? error.message
          : "Berth could not prepare the artifact (see the server log)";
      if (!(error instanceof ArtifactProblem)) {
        this.log.warn("artifact preparation failed", {
          runtimeId: version.runtimeId,
          version: version.version,
          error: String(error),
        });
      }
      outcome = { status: failed, failureReason: reason };
    }
    await this.store.setVersionStatus({
      runtimeId: version.runtimeId,
      version: version.version,
      ...outcome,
      at: this.now().toISOString(),
    });
  }
}
