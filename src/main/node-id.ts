import { randomUUID } from "node:crypto";
import { readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { writeFileDurably } from "../adapters/host/durable-files.ts";

/**
 * This Berth's name in what it shares through the metadata store (volume claims): made once and
 * kept in the data directory, so a restart knows which claims were its own. Written whole or not
 * at all (a temporary file, fsynced, renamed); a damaged one is refused, never replaced: a new
 * name would leave every claim of the old one held for good.
 */
export function loadOrCreateNodeId(dataDir: string): string {
  const path = join(dataDir, "node-id");
  let text: string;
  try {
    text = readFileSync(path, "utf8").trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    return createNodeId(path);
  }
  if (!/^[0-9a-f-]{36}$/.test(text)) {
    throw new Error(
      `${path} does not hold a node id (a UUID); restore it, or delete it if no Berth shares this data directory's metadata store (volumes this Berth claimed are then freed only by hand)`,
    );
  }
  return text;
}

function createNodeId(path: string): string {
  const id = randomUUID();
  const temporary = `${path}.new`;
  writeFileDurably(temporary, Buffer.from(`${id}\n`));
  renameSync(temporary, path);
  return id;
}
