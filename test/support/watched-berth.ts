import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { BedrockAgentCoreClient } from "@aws-sdk/client-bedrock-agentcore";
import { clientsOf, serveCommand } from "./berth-process.ts";
import { isolationArgs, makeDataDir, removeDir } from "./berth.ts";

/**
 * `berth serve` in a process of its own, watched from outside as an operator would watch it: the
 * bytes it has logged, its log records, and its resident memory. Agents' output is not among
 * them (each session's log is its own: read it through the API at `url`).
 */
export interface WatchedBerth {
  url: string;
  dataDir: string;
  control: BedrockAgentCoreControlClient;
  data: BedrockAgentCoreClient;
  records: Record<string, unknown>[];
  logBytes(): number;
  /** VmRSS: what Berth holds in memory now. */
  residentBytes(): number;
  /** VmHWM: the most Berth has held in memory at any moment since it started. */
  peakResidentBytes(): number;
  /** Whether the process is still running (it did not crash). */
  running(): boolean;
  /** What Berth wrote to stderr (a crash's stack). */
  stderrText(): string;
  close(): Promise<void>;
}

interface ServeProcess {
  child: ChildProcessWithoutNullStreams;
  /** The exit code (null when a signal ended it). */
  exit: Promise<number | null>;
  url: Promise<string>;
  stderr: string[];
}

/**
 * Runs `berth serve`, handing each log line to onLine; url resolves once it listens. Unlike
 * spawnBerth it keeps no lines: the floods this watches would fill the test's own memory.
 */
function serve(args: string[], onLine: (text: string) => void): ServeProcess {
  const [program = "", ...programArgs] = serveCommand(args, []);
  const child = spawn(program, programArgs, {
    env: { PATH: process.env["PATH"], HOME: process.env["HOME"] },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const exit = once(child, "exit").then(([code]) => code as number | null);
  const stderr: string[] = [];
  child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
  const url = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on("line", (text) => {
      onLine(text);
      if (text.includes('"msg":"berth listening"'))
        resolve(String((JSON.parse(text) as { url: unknown }).url));
    });
    void exit.then(() => {
      reject(new Error(`berth exited before listening: ${stderr.join("")}`));
    });
  });
  return { child, exit, url, stderr };
}

/** SIGTERM, and SIGKILL if it has not stopped within 30 s. Resolves with its exit code. */
async function stop(server: ServeProcess): Promise<number | null> {
  server.child.kill("SIGTERM");
  const stopped = await Promise.race([
    server.exit.then(() => true),
    new Promise<boolean>((resolve) => setTimeout(resolve, 30_000, false).unref()),
  ]);
  if (!stopped) server.child.kill("SIGKILL");
  return server.exit;
}

/**
 * Starts `berth serve` on port 0 with a fresh data directory (install agents with `setUp`
 * before it starts), and resolves once it listens.
 */
export async function startWatchedBerth(
  args: string[],
  setUp: (dataDir: string) => void,
): Promise<WatchedBerth> {
  const dataDir = makeDataDir();
  setUp(dataDir);
  const serveArgs = ["--data-dir", dataDir, ...isolationArgs(), ...args];
  const records: Record<string, unknown>[] = [];
  const server = serve(serveArgs, (text) => {
    records.push(JSON.parse(text) as Record<string, unknown>);
  });
  let logBytes = 0;
  server.child.stdout.on("data", (chunk: Buffer) => {
    logBytes += chunk.length;
  });
  let exited = false;
  void server.exit.then(() => {
    exited = true;
  });
  const url = await server.url;
  const { control, data } = clientsOf(url, dataDir);
  const memoryField = (name: string): number => {
    const status = readFileSync(`/proc/${server.child.pid ?? 0}/status`, "utf8");
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, "m").exec(status);
    if (match === null) throw new Error(`no ${name} in Berth's /proc status`);
    return Number(match[1]) * 1024;
  };
  return {
    url,
    dataDir,
    control,
    data,
    records,
    logBytes: () => logBytes,
    residentBytes: () => memoryField("VmRSS"),
    peakResidentBytes: () => memoryField("VmHWM"),
    running: () => !exited,
    stderrText: () => server.stderr.join(""),
    close: async () => {
      control.destroy();
      data.destroy();
      // A clean shutdown on SIGTERM exits 0; anything else means Berth crashed (or hung).
      if ((await stop(server)) !== 0) {
        // A Berth that crashed left its sandboxes' mounts and cgroups behind; the next start
        // with the same settings clears them, as it would on a real host.
        const restarted = serve(serveArgs, () => undefined);
        await restarted.url;
        await stop(restarted);
      }
      removeDir(dataDir);
    },
  };
}
