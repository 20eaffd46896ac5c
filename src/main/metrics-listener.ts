import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Settings } from "../config/settings.ts";
import type { Logger } from "../core/logger.ts";
import type { SessionManager } from "../core/sessions.ts";
import type { ClusterMembership } from "./cluster.ts";
import { BerthMetrics } from "./metrics.ts";
import { nodeNameOf } from "./cluster.ts";

export interface MetricsListener {
  /** http://HOST:PORT/metrics */
  url: string;
  close(): Promise<void>;
}

/** Berth's metrics, kept only when they are served (metricsPort set): else none at all. */
export function metricsIfServed(settings: Settings): BerthMetrics | undefined {
  return settings.metricsPort === undefined
    ? undefined
    : new BerthMetrics({ nodeName: nodeNameOf(settings), maxSessions: settings.maxSessions });
}

/**
 * Starts serving the metrics, read from the parts of a Berth that now listens; undefined when
 * metrics are off.
 */
export async function serveMetrics(
  metrics: BerthMetrics | undefined,
  settings: Settings,
  parts: {
    sessions: SessionManager;
    apiServer: Server;
    membership: ClusterMembership | undefined;
    now: () => Date;
    log: Logger;
  },
): Promise<MetricsListener | undefined> {
  if (metrics === undefined || settings.metricsPort === undefined) return undefined;
  const { sessions, apiServer, membership, now, log } = parts;
  metrics.watch({
    sessions: () => sessions.list(),
    openConnections: () =>
      new Promise((resolve) => {
        apiServer.getConnections((error, count) => {
          resolve(error === null ? count : 0);
        });
      }),
    heartbeatAgeMs: () => membership?.heartbeatAgeMs(),
    nowMs: () => now().getTime(),
  });
  return listenForMetrics(metrics, {
    host: settings.metricsHost,
    port: settings.metricsPort,
    apiPort: settings.port,
    log,
  });
}

/** Scrapers are few: a handful of connections is plenty, and slow ones are cut early. */
const maxScrapeConnections = 16;
const scrapeRequestTimeoutMs = 10_000;

/**
 * Serves GET /metrics, and nothing else, on an address of its own (metricsHost, metricsPort):
 * no authentication, so it is never the API's port, and an operator exposes it to Prometheus
 * only. What it tells (runtime and session ids, resource use) is for the operator's eyes.
 */
async function listenForMetrics(
  metrics: BerthMetrics,
  options: { host: string; port: number; apiPort: number; log: Logger },
): Promise<MetricsListener> {
  if (options.port !== 0 && options.port === options.apiPort) {
    throw new Error(
      `metricsPort ${options.port} is the API's port: metrics are served unauthenticated, on a port of their own`,
    );
  }
  // Idle or slow connections are dropped soon: a handful must not shut Prometheus out.
  const server = createServer(
    {
      requestTimeout: scrapeRequestTimeoutMs,
      headersTimeout: scrapeRequestTimeoutMs,
      keepAliveTimeout: 5_000,
    },
    (request, response) => {
      answer(metrics, request, response, options.log);
    },
  );
  server.maxConnections = maxScrapeConnections;
  await new Promise<void>((done, fail) => {
    server.once("error", fail);
    server.listen(options.port, options.host, () => {
      server.off("error", fail);
      done();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  const url = `http://${host}:${port}/metrics`;
  options.log.info("metrics listening", { url });
  return { url, close: () => closeServer(server) };
}

function answer(
  metrics: BerthMetrics,
  request: IncomingMessage,
  response: ServerResponse,
  log: Logger,
): void {
  const path = (request.url ?? "/").split("?")[0];
  if (path !== "/metrics") {
    plain(response, 404, "Only /metrics is served here.\n");
    return;
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.setHeader("allow", "GET, HEAD");
    plain(response, 405, "/metrics answers GET.\n");
    return;
  }
  metrics.scrape().then(
    (text) => {
      response.writeHead(200, { "content-type": metrics.contentType });
      response.end(request.method === "HEAD" ? undefined : text);
    },
    (error: unknown) => {
      log.warn("metrics scrape failed", { error: String(error) });
      plain(response, 500, "The metrics could not be read; see Berth's log.\n");
    },
  );
}

function plain(response: ServerResponse, status: number, text: string): void {
  response.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  response.end(text);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((done) => {
    server.close(() => {
      done();
    });
    server.closeAllConnections();
  });
}
