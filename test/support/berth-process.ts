import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { BedrockAgentCoreClient } from "@aws-sdk/client-bedrock-agentcore";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { isolationArgs, onTestParts } from "./berth.ts";

export const berthBin = fileURLToPath(new URL("../../bin/berth.ts", import.meta.url));

export interface BerthProcess {
  child: ChildProcess;
  url: string;
  lines: Record<string, unknown>[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** What `berth serve` needs in its environment to run on the test-only parts, when they are used. */
export const testPartsEnvironment: NodeJS.ProcessEnv = onTestParts
  ? { BERTH_ALLOW_TEST_PARTS: "1" }
  : {};

/** The command line of `berth serve` on `port` (0: any free one) with these settings. */
export function serveCommand(
  args: string[],
  isolation: string[] = isolationArgs(),
  port = 0,
): string[] {
  return [process.execPath, berthBin, "serve", "--port", String(port), ...isolation, ...args];
}

/** Runs `berth serve` as a user would and resolves once it logs that it is listening. */
export async function spawnBerth(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  isolation: string[] = isolationArgs(),
): Promise<BerthProcess> {
  const [program = "", ...programArgs] = serveCommand(args, isolation);
  const child = spawn(program, programArgs, {
    env: { PATH: process.env["PATH"], HOME: process.env["HOME"], ...testPartsEnvironment, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return untilListening(child);
}

/** Resolves once a started `berth serve` logs that it is listening; rejects if it exits first. */
export async function untilListening(child: ChildProcess): Promise<BerthProcess> {
  const exit = once(child, "exit").then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  child.stderr?.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
  const url = await new Promise<string>((resolve, reject) => {
    if (child.stdout === null) throw new Error("berth serve's stdout must be a pipe");
    createInterface({ input: child.stdout }).on("line", (text) => {
      const line = JSON.parse(text) as Record<string, unknown>;
      lines.push(line);
      if (line["msg"] === "berth listening") resolve(String(line["url"]));
    });
    void exit.then(({ code }) => {
      reject(new Error(`berth exited (${code}) before listening: ${stderr.join("")}`));
    });
  });
  return { child, url, lines, exit };
}

/** The access key a `berth serve` generated in its data directory at first start. */
export function credentialsIn(dataDir: string): { accessKeyId: string; secretAccessKey: string } {
  return JSON.parse(readFileSync(join(dataDir, "credentials.json"), "utf8")) as {
    accessKeyId: string;
    secretAccessKey: string;
  };
}

/** Official SDK clients (one attempt each) for a `berth serve` at `url` using `dataDir`. */
export function clientsOf(url: string, dataDir: string) {
  const credentials = credentialsIn(dataDir);
  const config = { endpoint: url, region: "us-east-1", credentials, maxAttempts: 1 };
  return {
    credentials,
    control: new BedrockAgentCoreControlClient(config),
    data: new BedrockAgentCoreClient(config),
  };
}

/** Kills (SIGKILL) every one of `berths` still running, and waits for each to be gone. */
export async function killAll(berths: readonly BerthProcess[]): Promise<void> {
  for (const berth of berths) {
    if (berth.child.exitCode === null && berth.child.signalCode === null) {
      berth.child.kill("SIGKILL");
      await berth.exit;
    }
  }
}
