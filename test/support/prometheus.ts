import { spawn, type ChildProcess } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "./agents.ts";
import { freePort } from "./ports.ts";

/** Debian's `prometheus` package (scripts/setup.sh installs it; its own service stays off). */
const binary = "/usr/bin/prometheus";

/** A real Prometheus server for one test file, on loopback, scraping one target every second. */
export interface TestPrometheus {
  url: string;
  /** An instant query's vector: each series' labels and value (`/api/v1/query`). */
  query(promql: string): Promise<QueriedSample[]>;
  /** Stops the server and removes its files. */
  stop(): Promise<void>;
}

export interface QueriedSample {
  labels: Record<string, string>;
  value: number;
}

export function prometheusMissing(): string | undefined {
  return existsSync(binary)
    ? undefined
    : `${binary} is not installed (scripts/setup.sh installs Debian's prometheus)`;
}

/** Starts Prometheus scraping `target` (http://HOST:PORT/metrics) every second. */
export async function startPrometheus(target: string): Promise<TestPrometheus> {
  const dir = mkdtempSync(join(tmpdir(), "berth-test-prometheus-"));
  const { host, pathname } = new URL(target);
  writeFileSync(
    join(dir, "prometheus.yml"),
    [
      "global:",
      "  scrape_interval: 1s",
      "  scrape_timeout: 1s",
      "scrape_configs:",
      "  - job_name: berth",
      `    metrics_path: ${pathname}`,
      "    static_configs:",
      `      - targets: ["${host}"]`,
      "",
    ].join("\n"),
  );
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const logPath = join(dir, "prometheus.log");
  const log = openSync(logPath, "a");
  const server = spawn(
    binary,
    [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${port}`,
      // Its consoles are not needed, and the package's paths are absent from a temp dir.
      "--web.console.templates=/dev/null",
      "--web.console.libraries=/dev/null",
    ],
    { stdio: ["ignore", log, log] },
  );
  closeSync(log);
  const stop = async (): Promise<void> => {
    await stopServer(server);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      "Prometheus to be ready",
      async () => {
        if (server.exitCode !== null) {
          throw new Error(`Prometheus exited:\n${readFileSync(logPath, "utf8")}`);
        }
        const ready = await fetch(`${url}/-/ready`).catch(() => undefined);
        return ready?.ok === true ? true : undefined;
      },
      30_000,
    );
  } catch (error) {
    await stop();
    throw error;
  }
  return { url, query: (promql) => query(url, promql), stop };
}

async function query(url: string, promql: string): Promise<QueriedSample[]> {
  const response = await fetch(
    `${url}/api/v1/query?${new URLSearchParams({ query: promql }).toString()}`,
  );
  const answer = (await response.json()) as {
    status: string;
    error?: string;
    data?: {
      resultType: string;
      result: { metric: Record<string, string>; value: [number, string] }[];
    };
  };
  if (answer.status !== "success" || answer.data?.resultType !== "vector")
    throw new Error(`Prometheus refused ${promql}: ${answer.error ?? JSON.stringify(answer)}`);
  return answer.data.result.map((sample) => ({
    labels: sample.metric,
    value: Number(sample.value[1]),
  }));
}

async function stopServer(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((resolve) => server.once("exit", resolve));
  server.kill("SIGTERM");
  const timer = setTimeout(() => server.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}
