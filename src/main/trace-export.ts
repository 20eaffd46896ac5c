import { ExportResultCode, type ExportResult } from "@opentelemetry/core";
import type { ReadableSpan, SpanExporter } from "@opentelemetry/sdk-trace";
import type { Logger } from "../core/logger.ts";

/** At most one warning per this long, however many exports fail. */
const warningIntervalMs = 60_000;

/**
 * An exporter that says when spans could not be sent (the collector is down or refuses them):
 * one warning a minute at most, with how many spans were lost since the last. The SDK itself
 * says nothing unless a global diagnostic logger is set, which Berth does not.
 */
export class WarningExporter implements SpanExporter {
  private readonly inner: SpanExporter;
  private readonly log: Logger;
  private lostSpans = 0;
  private lastWarningMs = Number.NEGATIVE_INFINITY;

  constructor(inner: SpanExporter, log: Logger) {
    this.inner = inner;
    this.log = log;
  }

  export(spans: ReadableSpan[], resultCallback: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS) this.lost(spans.length, result.error);
      resultCallback(result);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }

  private lost(count: number, error: Error | undefined): void {
    this.lostSpans += count;
    const nowMs = performance.now();
    if (nowMs - this.lastWarningMs < warningIntervalMs) return;
    this.lastWarningMs = nowMs;
    this.log.warn("could not export traces", {
      lostSpans: this.lostSpans,
      error: error?.message ?? "unknown",
    });
    this.lostSpans = 0;
  }
}
