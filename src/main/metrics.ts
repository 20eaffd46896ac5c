import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ErrorCode } from "../core/errors.ts";
import type { Observer, RequestOutcome, StepAttributes } from "../core/observer.ts";
import type { SessionInfo } from "../core/sessions.ts";
import { errorShapes } from "../wire/error-status.ts";
import { SessionGauges } from "./session-metrics.ts";

/**
 * Berth's Prometheus metrics (docs/observability.md, "Metrics"): requests counted and timed as
 * AgentCore's CloudWatch metrics are, session starts, the sessions running here and what each
 * uses, and Berth's own health. Request series are labelled by operation, runtime and endpoint
 * only: a runtime id is a label once the runtime was found to exist, and no session id is ever
 * one of theirs, so their number is bounded by what the operator created, not by callers.
 */
export class BerthMetrics {
  readonly registry = new Registry();
  readonly observer: Observer;
  private readonly requests: RequestMetrics;
  private readonly sessionGauges: SessionGauges;
  private readonly openConnections: Gauge;
  private readonly heartbeatAge: Gauge<"node">;
  private readonly nodeName: string;
  private sources: MetricsSources | undefined;
  /** The scrape under way: one that arrives meanwhile shares it. */
  private scraping: Promise<string> | undefined;

  constructor(node: { nodeName: string; maxSessions: number }) {
    const registry = this.registry;
    this.nodeName = node.nodeName;
    collectDefaultMetrics({ register: registry });
    this.requests = new RequestMetrics(registry);
    this.sessionGauges = new SessionGauges(registry);
    this.observer = this.requests.observer();
    new Gauge({
      name: "berth_node_info",
      help: "Always 1; its node label is this Berth's node name (to join with instance).",
      labelNames: ["node"],
      registers: [registry],
    }).set({ node: node.nodeName }, 1);
    new Gauge({
      name: "berth_max_sessions",
      help: "Most sessions this node runs at once (maxSessions).",
      registers: [registry],
    }).set(node.maxSessions);
    this.openConnections = new Gauge({
      name: "berth_open_connections",
      help: "Connections open to the API server (WebSockets included).",
      registers: [registry],
    });
    this.heartbeatAge = new Gauge({
      name: "berth_cluster_heartbeat_age_seconds",
      help: "How long ago this node's last heartbeat reached the cluster's database (cluster only).",
      // Labelled so that outside a cluster it has no sample at all (rather than a 0).
      labelNames: ["node"],
      registers: [registry],
    });
  }

  /** Where the values read at each scrape come from, once they exist (after the API listens). */
  watch(sources: MetricsSources): void {
    this.sources = sources;
  }

  /** The metrics in Prometheus' text format, read now. */
  scrape(): Promise<string> {
    this.scraping ??= this.readAll().finally(() => {
      this.scraping = undefined;
    });
    return this.scraping;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  private async readAll(): Promise<string> {
    const sources = this.sources;
    if (sources !== undefined) {
      const [sessions, connections] = await Promise.all([
        sources.sessions(),
        sources.openConnections(),
      ]);
      this.sessionGauges.update(sessions, sources.nowMs());
      this.openConnections.set(connections);
      const heartbeatAgeMs = sources.heartbeatAgeMs();
      if (heartbeatAgeMs === undefined) this.heartbeatAge.reset();
      else this.heartbeatAge.set({ node: this.nodeName }, heartbeatAgeMs / 1000);
    }
    return this.registry.metrics();
  }
}

export interface MetricsSources {
  /** Every session running (or starting) on this node, with what it uses now. */
  sessions(): Promise<SessionInfo[]>;
  /** The API server's open connections. */
  openConnections(): Promise<number>;
  /** In a cluster: how long ago this node's last good heartbeat was; else undefined. */
  heartbeatAgeMs(): number | undefined;
  nowMs(): number;
}

/** How a request ended, as AgentCore's metrics count it. */
export type RequestClass = "ok" | "throttle" | "systemError" | "userError";

/**
 * Throttles are 429, system errors 5xx, user errors the other 4xx. An answer whose status was
 * sent before it failed (a stream that ended with an error event, a WebSocket closed on one)
 * counts by the status its error code has.
 */
export function classifyRequest(
  outcome: Pick<RequestOutcome, "status" | "errorCode">,
): RequestClass {
  const status =
    outcome.status < 400 && outcome.errorCode !== undefined
      ? ((errorShapes[outcome.errorCode as ErrorCode] as { status: number } | undefined)?.status ??
        500)
      : outcome.status;
  if (status === 429) return "throttle";
  if (status >= 500) return "systemError";
  if (status >= 400) return "userError";
  return "ok";
}

/** Seconds: a quick invocation (milliseconds) up to a shell or WebSocket kept open for an hour. */
const latencyBuckets = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
];
/** Seconds: a prepared sandbox's agent (tens of ms) up to a large image's first pull. */
const startBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

const requestLabels = ["operation", "runtime", "endpoint"] as const;

/** What the Observer records: requests as they end, and steps (session starts) as they settle. */
class RequestMetrics {
  private readonly invocations: Counter<(typeof requestLabels)[number]>;
  private readonly failures: Record<
    Exclude<RequestClass, "ok">,
    Counter<(typeof requestLabels)[number]>
  >;
  private readonly latency: Histogram<(typeof requestLabels)[number]>;
  private readonly forwarded: Counter<(typeof requestLabels)[number]>;
  private readonly sessionStarts: Histogram<"runtime" | "outcome">;
  private readonly steps: Histogram<"step" | "outcome">;

  constructor(registry: Registry) {
    const counter = (name: string, help: string) =>
      new Counter({ name, help, labelNames: requestLabels, registers: [registry] });
    this.invocations = counter(
      "berth_invocations_total",
      "Requests answered, whatever their outcome (AgentCore: Invocations).",
    );
    this.failures = {
      throttle: counter(
        "berth_throttles_total",
        "Requests answered 429 ThrottlingException (AgentCore: Throttles).",
      ),
      systemError: counter(
        "berth_system_errors_total",
        "Requests that failed with a 5xx, Berth's fault (AgentCore: SystemErrors).",
      ),
      userError: counter(
        "berth_user_errors_total",
        "Requests that failed with a 4xx other than 429, the caller's or agent's fault (AgentCore: UserErrors).",
      ),
    };
    this.latency = new Histogram({
      name: "berth_latency_seconds",
      help: "Time from a request's arrival to its last byte answered; for a WebSocket, how long it stayed open (AgentCore: Latency).",
      labelNames: requestLabels,
      buckets: latencyBuckets,
      registers: [registry],
    });
    this.forwarded = counter(
      "berth_forwarded_requests_total",
      "Requests another node of the cluster forwarded to this one, the session's owner (counted by the node they reached first, not here).",
    );
    this.sessionStarts = new Histogram({
      name: "berth_session_start_duration_seconds",
      help: "Time to start a session: storage attached, sandbox started, agent ready (its count: AgentCore's SessionCount).",
      labelNames: ["runtime", "outcome"],
      buckets: startBuckets,
      registers: [registry],
    });
    this.steps = new Histogram({
      name: "berth_step_duration_seconds",
      help: "Time of Berth's named steps (the parts of a session start, sweeps), by step.",
      labelNames: ["step", "outcome"],
      buckets: latencyBuckets,
      registers: [registry],
    });
  }

  observer(): Observer {
    return {
      step: (name, attributes, work) => this.timeStep(name, attributes, work),
      request: (_headers, _attributes, work) => work(),
      traceparent: () => undefined,
      requestEnded: (outcome) => {
        this.record(outcome);
      },
    };
  }

  private record(outcome: RequestOutcome): void {
    const labels = {
      operation: outcome.operation,
      runtime: outcome.runtimeId ?? "",
      endpoint: outcome.runtimeId === undefined ? "" : (outcome.endpoint ?? ""),
    };
    // Counted apart: the node a client reached counts the request, once, summed over a cluster.
    if (outcome.forwardedBy !== undefined) {
      this.forwarded.inc(labels);
      return;
    }
    this.invocations.inc(labels);
    const outcomeClass = classifyRequest(outcome);
    if (outcomeClass !== "ok") this.failures[outcomeClass].inc(labels);
    this.latency.observe(labels, outcome.durationMs / 1000);
  }

  private async timeStep<T>(
    name: string,
    attributes: StepAttributes,
    work: () => Promise<T>,
  ): Promise<T> {
    const startedAt = performance.now();
    let outcome = "failed";
    try {
      const result = await work();
      outcome = "ok";
      return result;
    } finally {
      const seconds = (performance.now() - startedAt) / 1000;
      if (name === "session.start") {
        const runtime = attributes["runtimeId"];
        this.sessionStarts.observe(
          { runtime: typeof runtime === "string" ? runtime : "", outcome },
          seconds,
        );
      } else {
        this.steps.observe({ step: name, outcome }, seconds);
      }
    }
  }
}
