import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { after, before } from "node:test";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { BedrockAgentCoreClient } from "@aws-sdk/client-bedrock-agentcore";
import { unmountAllUnder } from "../../src/adapters/bubblewrap/mounts.ts";
import { loadSettings, type Settings } from "../../src/config/settings.ts";
import { startBerth, type RunningBerth } from "../../src/main/berth.ts";
import { jsonLogger } from "../../src/main/json-logger.ts";

export interface TestBerth {
  berth: RunningBerth;
  dataDir: string;
  settings: Settings;
  control: BedrockAgentCoreControlClient;
  data: BedrockAgentCoreClient;
  logLines: Record<string, unknown>[];
  /** What Berth printed for a person (the first-start credentials). */
  consoleText: string[];
  close(): Promise<void>;
}

/** Settings that let tests see idle timeouts and lifetimes end within a second or two. */
export const quickLifecycleArgs = [
  "--min-lifecycle-seconds",
  "1",
  "--session-sweep-interval-ms",
  "50",
] as const;

/**
 * Whether this run assembles test servers from the test-only parts (in-memory metadata, plain
 * processes for sandboxes, plain folders for session storage): whenever the tests do not run as
 * root, which the real parts need (and the plain-process driver refuses to run as).
 */
export const onTestParts = process.getuid?.() !== 0;

/**
 * Options for a `describe` of a suite that tests the host's isolation itself (bubblewrap,
 * cgroups, loop devices, mounts, the firewall): it runs under `npm test` as root and is skipped,
 * saying so, on the test-only parts.
 */
export const hostSuite: { skip?: string } = onTestParts
  ? {
      skip: "tests the host's isolation (needs root and the real parts): run `npm test` as root",
    }
  : {};

const testPartArgs = [
  "--metadata-store",
  "memory",
  "--sandbox-driver",
  "process",
  "--session-storage",
  "directory",
];

/** A real Berth on port 0 with a fresh data directory, and official SDK clients pointed at it. */
export async function startTestBerth(
  extraArgs: string[] = [],
  dataDir = makeDataDir(),
): Promise<TestBerth> {
  const settings = loadSettings(
    ["--port", "0", "--data-dir", dataDir, ...isolationArgs(), ...extraArgs],
    {},
  );
  const logLines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString("utf8").split("\n").filter(Boolean))
        logLines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const consoleText: string[] = [];
  const console = new Writable({
    write(chunk: Buffer, _encoding, done) {
      consoleText.push(chunk.toString("utf8"));
      done();
    },
  });
  const berth = await startBerth(settings, {
    log: jsonLogger(sink),
    console,
    allowTestParts: onTestParts,
  });
  const clientConfig = {
    endpoint: berth.url,
    region: settings.region,
    credentials: berth.credentials,
    maxAttempts: 1,
  };
  const control = new BedrockAgentCoreControlClient(clientConfig);
  const data = new BedrockAgentCoreClient(clientConfig);
  return {
    berth,
    dataDir,
    settings,
    control,
    data,
    logLines,
    consoleText,
    close: async () => {
      control.destroy();
      data.destroy();
      await berth.close();
    },
  };
}

/**
 * Starts a test server before the file's tests and stops it (removing its data) after them.
 * Returns a getter, since the server exists only once `before` has run.
 */
export function useTestBerth(
  extraArgs: string[] = [],
  setUp?: (berth: TestBerth) => void,
): () => TestBerth {
  let harness: TestBerth | undefined;
  before(async () => {
    harness = await startTestBerth(extraArgs);
    setUp?.(harness);
  });
  after(async () => {
    if (harness === undefined) return;
    await harness.close();
    removeDir(harness.dataDir);
  });
  return () => {
    if (harness === undefined) throw new Error("the test server starts in before()");
    return harness;
  };
}

let servers = 0;

/**
 * The parts of a test server: on the real ones, a cgroup parent and a uid range of its own, so
 * test files running at the same time never see (or clean up) each other's sandboxes.
 */
export function isolationArgs(): string[] {
  if (onTestParts) return [...testPartArgs, "--max-sessions", "64"];
  servers += 1;
  const slot = (process.pid * 16 + servers) % 60_000;
  return [
    "--bubblewrap-cgroup-parent",
    `berth-test-${process.pid}-${servers}`,
    "--bubblewrap-uid-base",
    String(3_000_000 + slot * 64),
    "--max-sessions",
    "64",
  ];
}

export function makeDataDir(): string {
  return mkdtempSync(join(tmpdir(), "berth-test-"));
}

/**
 * Removes a test's data folder. A Berth killed outright leaves its mounts there (volumes, Python
 * views; the next start on that folder would clear them): unmounted first, so removing never
 * reaches through one.
 */
export function removeDir(path: string): void {
  if (existsSync(path)) unmountAllUnder(path);
  rmSync(path, { recursive: true, force: true });
}
