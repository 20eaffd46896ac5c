/**
 * Where Berth reports its work, for the operator: metrics count it, traces time it (see
 * docs/observability.md). Core and wire call these on the hot path: an observer must not throw,
 * block, or keep more than a bounded amount per call. `noObserver` is the default.
 */
export interface Observer {
  /**
   * Runs `work` as a named step: a span in a trace, nested under the step (or the incoming
   * request's trace) that is current; a duration sample for metrics. Resolves or rejects as
   * `work` does. Names are fixed strings (`operation`, `session.start`, `session.storage.attach`,
   * `session.sandbox.start`, `session.agent.ready`, ...), never ids.
   */
  step<T>(name: string, attributes: StepAttributes, work: () => Promise<T>): Promise<T>;
  /**
   * Runs `work` as the root step of an incoming request, continuing the caller's trace when its
   * headers carry one (`traceparent`, `X-Amzn-Trace-Id`).
   */
  request<T>(
    headers: Record<string, string | string[] | undefined>,
    attributes: StepAttributes,
    work: () => Promise<T>,
  ): Promise<T>;
  /** The current step's trace context as W3C `traceparent` (for the agent), if traced. */
  traceparent(): string | undefined;
  /** One request is over: what it was, for whom, and how it ended. */
  requestEnded(outcome: RequestOutcome): void;
}

/**
 * What a step is about. May carry ids (runtimeId, sessionId): a trace keeps them all; metrics
 * take only bounded ones as labels (a runtime id is, being checked to exist; a session id is not).
 */
export type StepAttributes = Record<string, string | number | boolean | undefined>;

export interface RequestOutcome {
  /** The operation's name (InvokeAgentRuntime, ...), or "unknown" when none matched. */
  operation: string;
  /** The id request() was given (its attributes' requestId): a trace ends the request's span. */
  requestId?: string;
  /** Set once the request named a runtime that exists (never a made-up id: bounded labels). */
  runtimeId: string | undefined;
  /** The endpoint (qualifier) of a data-plane request, once its runtime was found. */
  endpoint: string | undefined;
  /** The HTTP status answered (101 for a WebSocket that was opened). */
  status: number;
  /** The AWS error code when it failed. */
  errorCode: string | undefined;
  /** The node that forwarded the request here, its signature checked (a cluster's hop). */
  forwardedBy?: string | undefined;
  durationMs: number;
}

export const noObserver: Observer = {
  step: (_name, _attributes, work) => work(),
  request: (_headers, _attributes, work) => work(),
  traceparent: () => undefined,
  requestEnded: () => undefined,
};
