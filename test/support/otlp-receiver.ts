import { once } from "node:events";
import { createServer, type Server } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { waitFor } from "./agents.ts";

/** A span as an OTLP/HTTP receiver got it, its attributes (and its resource's) made plain. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** undefined for a trace's root. */
  parentSpanId: string | undefined;
  name: string;
  /** OTLP's SpanKind: 1 internal, 2 server, 3 client. */
  kind: number;
  attributes: Record<string, unknown>;
  /** OTLP's StatusCode: 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string | undefined };
  resource: Record<string, unknown>;
}

export interface OtlpReceiver {
  /** Where to send spans: http://127.0.0.1:PORT/v1/traces. */
  url: string;
  spans: ReceivedSpan[];
  /** The spans of one trace, once `ready` is true of them (waited for with a bound). */
  trace(
    traceId: string,
    ready: (spans: ReceivedSpan[]) => boolean,
    what: string,
  ): Promise<ReceivedSpan[]>;
  close(): Promise<void>;
}

/**
 * An OpenTelemetry collector's OTLP/HTTP traces endpoint, for tests: on loopback, it takes
 * POST /v1/traces with JSON bodies (ExportTraceServiceRequest) and keeps every span.
 */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      if (request.method !== "POST" || request.url !== "/v1/traces") {
        response.writeHead(404).end();
        return;
      }
      spans.push(...spansOf(JSON.parse(Buffer.concat(chunks).toString("utf8")) as ExportRequest));
      response.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1/traces`,
    spans,
    trace: (traceId, ready, what) =>
      waitFor(what, () => {
        const ofTrace = spans.filter((span) => span.traceId === traceId);
        return ready(ofTrace) ? ofTrace : undefined;
      }),
    close: () => closeServer(server),
  };
}

/**
 * A collector that takes connections and never answers them: the worst a collector can do to
 * the requests it is meant to trace.
 */
export async function startSilentCollector(): Promise<{
  url: string;
  /** Exports under way: connections it took and holds unanswered. */
  openConnections(): number;
  close(): Promise<void>;
}> {
  const sockets = new Set<Socket>();
  const server = createServer(() => undefined);
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1/traces`,
    openConnections: () => sockets.size,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return closeServer(server);
    },
  };
}

function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => {
    server.close(() => {
      resolve();
    });
  });
}

interface AttributeValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
}
interface KeyValue {
  key: string;
  value: AttributeValue;
}
interface ExportRequest {
  resourceSpans?: {
    resource?: { attributes?: KeyValue[] };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes?: KeyValue[];
        status?: { code?: number; message?: string };
      }[];
    }[];
  }[];
}

function spansOf(request: ExportRequest): ReceivedSpan[] {
  return (request.resourceSpans ?? []).flatMap((resourceSpans) => {
    const resource = plain(resourceSpans.resource?.attributes);
    return (resourceSpans.scopeSpans ?? []).flatMap((scope) =>
      (scope.spans ?? []).map((span) => ({
        traceId: span.traceId,
        spanId: span.spanId,
        parentSpanId: span.parentSpanId === "" ? undefined : span.parentSpanId,
        name: span.name,
        kind: span.kind,
        attributes: plain(span.attributes),
        status: { code: span.status?.code ?? 0, message: span.status?.message },
        resource,
      })),
    );
  });
}

function plain(attributes: KeyValue[] | undefined): Record<string, unknown> {
  const values: Record<string, unknown> = {};
  for (const { key, value } of attributes ?? []) {
    values[key] =
      value.stringValue ??
      (value.intValue === undefined ? undefined : Number(value.intValue)) ??
      value.doubleValue ??
      value.boolValue;
  }
  return values;
}
