import { randomUUID } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * This Berth's name in what it shares through the metadata store (volume claims): made once and
 * kept in the data directory, so a restart knows which claims were its own.
 */
export function loadOrCreateNodeId(dataDir: string): string {
  const path = join(dataDir, "node-id");
  try {
    const text = readFileSync(path, "utf8").trim();
    if (/^[0-9a-f-]{36}$/.test(text)) return text;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const id = randomUUID();
  writeFileSync(path, `${id}\n`, { mode: 0o600 });
  return id;
}
