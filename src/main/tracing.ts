/**
 * Traces (docs/observability.md, "Traces"): an Observer that makes OpenTelemetry spans of
 * requests and their steps and exports them over OTLP/HTTP (JSON) to otlpTracesEndpoint. Nothing
 * here is global: each Berth has its own tracer provider and its own AsyncLocalStorage context,
 * so that several in one process (the tests) keep their traces apart.
 */
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  defaultTextMapSetter,
  trace,
  type Attributes,
  type Span,
  type Tracer,
} from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  SamplingDecision,
  TraceIdRatioBasedSampler,
  TracerProvider,
} from "@opentelemetry/sdk-trace";
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_SERVICE_INSTANCE_ID,
  ATTR_SERVICE_NAME,
} from "@opentelemetry/semantic-conventions";
import type { Settings } from "../config/settings.ts";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { noObserver, type Observer, type StepAttributes } from "../core/observer.ts";
import { ContinuedTraceIds, incomingTrace, type IncomingHeaders } from "./trace-context.ts";
import { WarningExporter } from "./trace-export.ts";

/** An Observer that also has spans to send before Berth stops. */
export interface Tracing extends Observer {
  /** Exports the spans still queued (for at most shutdownFlushMs) and stops exporting. */
  shutdown(): Promise<void>;
}

export type TracingSettings = Pick<
  Settings,
  "otlpTracesEndpoint" | "traceSampleRatio" | "otlpTracesExportDelayMs"
>;

/** How long a stopping Berth waits for its last spans to reach the collector. */
const shutdownFlushMs = 5_000;
/** How long one export may take, retries included, before its spans are given up. */
const exportTimeoutMs = 10_000;

/** Step attributes' names in a span: Berth's ids under `berth.`. */
const attributeNames: Record<string, string> = {
  runtimeId: "berth.runtime.id",
  endpoint: "berth.runtime.endpoint",
  version: "berth.runtime.version",
  sessionId: "berth.session.id",
  requestId: "berth.request.id",
};
const sessionIdHeader = "x-amzn-bedrock-agentcore-runtime-session-id";

/** Tracing as the settings ask: off (an observer that does nothing) without an endpoint. */
export function startTracing(
  settings: TracingSettings,
  node: { name: string; id: string; log: Logger },
): Tracing {
  if (settings.otlpTracesEndpoint === "")
    return { ...noObserver, shutdown: () => Promise.resolve() };
  const ids = new ContinuedTraceIds();
  const ratio = new TraceIdRatioBasedSampler(settings.traceSampleRatio);
  const provider = new TracerProvider({
    // A caller's decision is followed; Berth decides, by the ratio, for traces it starts.
    sampler: new ParentBasedSampler({ root: ratio }),
    idGenerator: ids,
    resource: defaultResource().merge(
      resourceFromAttributes({
        [ATTR_SERVICE_NAME]: "berth",
        [ATTR_SERVICE_INSTANCE_ID]: node.id,
        "berth.node.name": node.name,
      }),
    ),
    spanProcessors: [
      // Spans wait in a bounded queue (2048; more are dropped) and leave in the background:
      // a slow or absent collector never holds up a request.
      new BatchSpanProcessor({
        exporter: new WarningExporter(
          new OTLPTraceExporter({
            url: tracesUrl(settings.otlpTracesEndpoint),
            timeoutMillis: exportTimeoutMs,
          }),
          node.log,
        ),
        scheduledDelayMillis: settings.otlpTracesExportDelayMs,
        exportTimeoutMillis: exportTimeoutMs,
      }),
    ],
  });
  const observer = new TracingObserver(provider.getTracer("berth"), ids, (traceId) =>
    isSampled(ratio, traceId),
  );
  return {
    step: (name, attributes, work) => observer.step(name, attributes, work),
    request: (headers, attributes, work) => observer.request(headers, attributes, work),
    traceparent: () => observer.traceparent(),
    requestEnded: (outcome) => {
      observer.requestEnded(outcome);
    },
    shutdown: async () => {
      if (!(await settlesWithin(provider.shutdown(), shutdownFlushMs)))
        node.log.warn("traces not all exported before shutdown", { waitedMs: shutdownFlushMs });
    },
  };
}

/** A request's span until both its work and its answer are over. */
interface OpenRequest {
  span: Span;
  workOver: boolean;
  answered: boolean;
}

class TracingObserver implements Observer {
  private readonly context = new AsyncLocalStorageContextManager();
  private readonly w3c = new W3CTraceContextPropagator();
  /** Requests whose span waits for requestEnded (the status answered), by request id. */
  private readonly openRequests = new Map<string, OpenRequest>();
  private readonly tracer: Tracer;
  private readonly ids: ContinuedTraceIds;
  private readonly decideSampled: (traceId: string) => boolean;

  constructor(tracer: Tracer, ids: ContinuedTraceIds, decideSampled: (traceId: string) => boolean) {
    this.tracer = tracer;
    this.ids = ids;
    this.decideSampled = decideSampled;
  }

  /**
   * A child span of the current one. Steps outside any request (sweeps on a timer) make none:
   * each would be a trace of its own, every interval.
   */
  step<T>(name: string, attributes: StepAttributes, work: () => Promise<T>): Promise<T> {
    const parent = this.context.active();
    if (trace.getSpan(parent) === undefined) return work();
    const span = this.tracer.startSpan(name, { attributes: spanAttributes(attributes) }, parent);
    return this.context.with(trace.setSpan(parent, span), async () => {
      try {
        return await work();
      } catch (error) {
        markFailed(span, error);
        throw error;
      } finally {
        span.end();
      }
    });
  }

  request<T>(
    headers: IncomingHeaders,
    attributes: StepAttributes,
    work: () => Promise<T>,
  ): Promise<T> {
    const incoming = incomingTrace(headers, this.w3c, this.decideSampled);
    const sessionId = headers[sessionIdHeader];
    const span = this.ids.startingTrace(incoming.traceId, () =>
      this.tracer.startSpan(
        // Renamed to the operation once it is known (requestEnded).
        "request",
        {
          kind: SpanKind.SERVER,
          attributes: spanAttributes({
            ...attributes,
            sessionId: typeof sessionId === "string" ? sessionId : undefined,
          }),
        },
        incoming.parent,
      ),
    );
    const requestId = attributes["requestId"];
    const open: OpenRequest = { span, workOver: false, answered: typeof requestId !== "string" };
    if (typeof requestId === "string") this.openRequests.set(requestId, open);
    return this.context.with(trace.setSpan(incoming.parent, span), async () => {
      try {
        return await work();
      } finally {
        open.workOver = true;
        endWhenOver(open);
      }
    });
  }

  traceparent(): string | undefined {
    const carrier: Record<string, string> = {};
    this.w3c.inject(this.context.active(), carrier, defaultTextMapSetter);
    return carrier["traceparent"];
  }

  /**
   * Names the request's span after its operation and gives it the outcome. It ends once its work
   * is over too: a caller that went away ends the request before its work has.
   */
  requestEnded(outcome: Parameters<Observer["requestEnded"]>[0]): void {
    const open =
      outcome.requestId === undefined ? undefined : this.openRequests.get(outcome.requestId);
    if (open === undefined || outcome.requestId === undefined) return;
    this.openRequests.delete(outcome.requestId);
    const { span } = open;
    span.updateName(outcome.operation);
    span.setAttributes(
      spanAttributes({ runtimeId: outcome.runtimeId, endpoint: outcome.endpoint }),
    );
    span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, outcome.status);
    if (outcome.errorCode !== undefined) span.setAttribute(ATTR_ERROR_TYPE, outcome.errorCode);
    // As OpenTelemetry's HTTP conventions say: a server span fails on a server fault only.
    if (outcome.status >= 500)
      span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.errorCode ?? "" });
    open.answered = true;
    endWhenOver(open);
  }
}

function endWhenOver(open: OpenRequest): void {
  if (open.workOver && open.answered) open.span.end();
}

function markFailed(span: Span, error: unknown): void {
  const code = BerthError.isInstance(error)
    ? error.code
    : error instanceof Error
      ? error.name
      : "Error";
  span.setAttribute(ATTR_ERROR_TYPE, code);
  span.setStatus({
    code: SpanStatusCode.ERROR,
    message: error instanceof Error ? error.message : String(error),
  });
}

function spanAttributes(attributes: StepAttributes): Attributes {
  const converted: Attributes = {};
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined) converted[attributeNames[name] ?? `berth.${name}`] = value;
  }
  return converted;
}

/** The endpoint as given; one with no path gets OTLP's traces path. */
function tracesUrl(endpoint: string): string {
  const url = new URL(endpoint);
  if (url.pathname === "/") url.pathname = "/v1/traces";
  return url.toString();
}

function isSampled(ratio: TraceIdRatioBasedSampler, traceId: string): boolean {
  return ratio.shouldSample(ROOT_CONTEXT, traceId).decision === SamplingDecision.RECORD_AND_SAMPLED;
}

async function settlesWithin(work: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => {
      resolve(false);
    }, timeoutMs);
    timer.unref();
  });
  try {
    return await Promise.race([work.then(() => true).catch(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}
