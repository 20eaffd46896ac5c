import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const agentSources = {
  probe: fileURLToPath(new URL("../agents/probe", import.meta.url)),
  nodeExample: fileURLToPath(new URL("../../examples/node-agent", import.meta.url)),
  pythonExample: fileURLToPath(new URL("../../examples/python-agent", import.meta.url)),
};

/** Copies an agent folder into Berth's artifact store as s3://agents/<prefix>. */
export function installAgent(dataDir: string, source: string, prefix: string): void {
  const target = join(dataDir, "artifacts", "agents", prefix);
  mkdirSync(join(target, ".."), { recursive: true });
  cpSync(source, target, { recursive: true });
}

/**
 * Installs test/agents/websocket with a copy of the `ws` package beside it (no dependencies of
 * its own), as s3://agents/<prefix>.
 */
export function installWebSocketAgent(dataDir: string, prefix: string): void {
  installAgent(dataDir, fileURLToPath(new URL("../agents/websocket", import.meta.url)), prefix);
  const wsPackage = fileURLToPath(new URL("../../node_modules/ws", import.meta.url));
  cpSync(wsPackage, join(dataDir, "artifacts", "agents", prefix, "node_modules", "ws"), {
    recursive: true,
  });
}

/** Packs an agent folder as s3://agents/<name>.zip with Python's zipfile (no zip tool needed). */
export function installAgentZip(dataDir: string, source: string, name: string): void {
  const target = join(dataDir, "artifacts", "agents", `${name}.zip`);
  mkdirSync(join(target, ".."), { recursive: true });
  execFileSync("/usr/bin/python3", ["-m", "zipfile", "-c", target, ...readdirSync(source)], {
    cwd: source,
  });
}

/** Waits for a condition by re-checking it, for state that has no event to wait on. */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
