import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { isolationArgs } from "./berth.ts";

export const berthBin = fileURLToPath(new URL("../../bin/berth.ts", import.meta.url));

export interface BerthProcess {
  child: ChildProcess;
  url: string;
  lines: Record<string, unknown>[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Runs `berth serve` as a user would and resolves once it logs that it is listening. */
export async function spawnBerth(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  isolation: string[] = isolationArgs(),
): Promise<BerthProcess> {
  const child = spawn(process.execPath, [berthBin, "serve", "--port", "0", ...isolation, ...args], {
    env: { PATH: process.env["PATH"], HOME: process.env["HOME"], ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exit = once(child, "exit").then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  const lines: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
  const url = await new Promise<string>((resolve, reject) => {
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
