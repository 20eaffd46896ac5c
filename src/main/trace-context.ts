/**
 * The trace a request continues: the caller's W3C `traceparent` (with its `tracestate`), else its
 * AWS `X-Amzn-Trace-Id`, else none (Berth starts one).
 */
import {
  defaultTextMapGetter,
  ROOT_CONTEXT,
  trace,
  TraceFlags,
  type Context,
  type TextMapPropagator,
} from "@opentelemetry/api";
import { RandomIdGenerator, type IdGenerator } from "@opentelemetry/sdk-trace";
import { amznTraceIdHeader, parseAmznTraceId } from "../core/amzn-trace-id.ts";

export type IncomingHeaders = Record<string, string | string[] | undefined>;

export interface IncomingTrace {
  /** The context a request's span starts in: the caller's span as its remote parent, if any. */
  parent: Context;
  /**
   * The trace id the request's span must have though it has no parent: an X-Amzn-Trace-Id with
   * a Root and no Parent (what a load balancer sends).
   */
  traceId?: string;
}

/**
 * Reads the caller's trace context from its headers. `decideSampled` answers for an
 * X-Amzn-Trace-Id that leaves sampling to Berth (`Sampled=?`, or none).
 */
export function incomingTrace(
  headers: IncomingHeaders,
  w3c: TextMapPropagator,
  decideSampled: (traceId: string) => boolean,
): IncomingTrace {
  const continued = w3c.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
  if (trace.getSpanContext(continued) !== undefined) return { parent: continued };
  const amzn = headers[amznTraceIdHeader];
  const parsed = typeof amzn === "string" ? parseAmznTraceId(amzn) : undefined;
  if (parsed === undefined) return { parent: ROOT_CONTEXT };
  if (parsed.parentSpanId === undefined) return { parent: ROOT_CONTEXT, traceId: parsed.traceId };
  const sampled = parsed.sampled ?? decideSampled(parsed.traceId);
  return {
    parent: trace.setSpanContext(ROOT_CONTEXT, {
      traceId: parsed.traceId,
      spanId: parsed.parentSpanId,
      traceFlags: sampled ? TraceFlags.SAMPLED : TraceFlags.NONE,
      isRemote: true,
    }),
  };
}

/**
 * Random ids, except that the next new trace may be given its id: a span without a parent gets a
 * fresh trace id from the SDK, and this is how one continues a trace whose caller sent no span.
 */
export class ContinuedTraceIds implements IdGenerator {
  private readonly random = new RandomIdGenerator();
  private next: string | undefined;

  /** Runs `start` (which starts one span, synchronously) with `traceId` as a new trace's id. */
  startingTrace<T>(traceId: string | undefined, start: () => T): T {
    this.next = traceId;
    try {
      return start();
    } finally {
      this.next = undefined;
    }
  }

  generateTraceId(): string {
    const id = this.next ?? this.random.generateTraceId();
    this.next = undefined;
    return id;
  }

  generateSpanId(): string {
    return this.random.generateSpanId();
  }
}
