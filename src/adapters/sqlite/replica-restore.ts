import { createHash } from "node:crypto";
import { existsSync, mkdirSync, renameSync } from "node:fs";
import { readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { gunzip } from "node:zlib";
import type { Logger } from "../../core/logger.ts";
import type { ObjectStore } from "../../core/object-store.ts";
import type { HeadRecord } from "../../core/replication/fenced-head.ts";
import { ReplicaDataError } from "../../core/replication/volume-replica.ts";
import { syncFolderNow, writeFileDurably } from "../host/durable-files.ts";

/** The largest metadata snapshot read back, stored or unpacked: what the store gives is not trusted to be small. */
const maxSnapshotBytes = 1024 ** 3;

/**
 * Where the metadata database lives in the object store, and on this machine beside it: the
 * head names the current snapshot; each snapshot is a gzipped copy of the whole database.
 */
export const metadataHeadKey = "metadata/head";
export const snapshotPrefix = "metadata/generations/";
export const databaseFileName = "berth.db";
/** Which generation this data directory last wrote or restored, and from which object store. */
const stateFileName = "metadata-replica.json";
/** Private to root: snapshots on their way out, and downloads on their way in. */
const workDirName = "metadata-snapshots";

/** What the head says of the current generation. */
export interface SnapshotPayload {
  key: string;
  /** Of the gzipped object, to refuse a damaged download. */
  sha256: string;
  storedBytes: number;
  databaseBytes: number;
  storedAt: string;
}

export function snapshotKey(generation: number, fence: number): string {
  return `${snapshotPrefix}${generation}-${fence}.db.gz`;
}

/** The owner (fence) that wrote a snapshot key; undefined for keys that are not snapshots. */
export function snapshotFence(key: string): number | undefined {
  const match = /^metadata\/generations\/\d+-(\d+)\.db\.gz$/.exec(key);
  return match === null ? undefined : Number(match[1]);
}

export function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** The folder (0700) that snapshots and downloads pass through. */
export function workDir(dataDir: string): string {
  const dir = join(dataDir, workDirName);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  return dir;
}

interface ReplicaState {
  objectStore: string;
  generation: number;
}

/** The generation this data directory's database is at in `objectStore` (0: unknown). */
async function generationHere(dataDir: string, objectStore: string): Promise<number> {
  const text = await readFile(join(dataDir, stateFileName), "utf8").catch(() => undefined);
  if (text === undefined) return 0;
  let state: Partial<ReplicaState>;
  try {
    state = JSON.parse(text) as Partial<ReplicaState>;
  } catch {
    // Cut short by a crash: unknown, so the head's snapshot is restored over the database.
    return 0;
  }
  return state.objectStore === objectStore && typeof state.generation === "number"
    ? state.generation
    : 0;
}

/** Records the generation the local database is at; replaced whole (a kill leaves old or new). */
export async function recordGeneration(
  dataDir: string,
  objectStore: string,
  generation: number,
): Promise<void> {
  const path = join(dataDir, stateFileName);
  const state: ReplicaState = { objectStore, generation };
  writeFileDurably(`${path}.new`, Buffer.from(`${JSON.stringify(state)}\n`));
  await rename(`${path}.new`, path);
  syncFolderNow(dataDir);
}

export function payloadOf(head: HeadRecord): SnapshotPayload {
  const payload = head.payload as Partial<SnapshotPayload>;
  if (typeof payload.key !== "string" || typeof payload.sha256 !== "string") {
    throw new Error(
      `${metadataHeadKey} (generation ${head.generation}) does not name a snapshot Berth wrote`,
    );
  }
  return {
    key: payload.key,
    sha256: payload.sha256,
    storedBytes: payload.storedBytes ?? 0,
    databaseBytes: payload.databaseBytes ?? 0,
    storedAt: payload.storedAt ?? "",
  };
}

/**
 * Called with the head held and before the store opens: puts the head's snapshot in place as
 * berth.db when this data directory lacks it (no database, or one older than the head, or one
 * of another object store's). A database replaced is kept beside it as berth.db.replaced-TIME.
 * Returns whether it restored. A snapshot missing or damaged fails the start: never an empty or
 * older database in place of the one the object store says is current.
 */
export async function restoreIfBehind(input: {
  objectStore: ObjectStore;
  head: HeadRecord;
  dataDir: string;
  log: Logger;
}): Promise<boolean> {
  const { objectStore, head, dataDir, log } = input;
  if (head.generation === 0) return false;
  const databasePath = join(dataDir, databaseFileName);
  const hasDatabase = existsSync(databasePath);
  if (hasDatabase && head.generation <= (await generationHere(dataDir, objectStore.location))) {
    return false;
  }
  const started = performance.now();
  const payload = payloadOf(head);
  const database = await download(objectStore, payload, head.generation);
  const incoming = join(workDir(dataDir), "restoring.db");
  writeFileDurably(incoming, database);
  const replaced = moveAside(databasePath);
  renameSync(incoming, databasePath);
  syncFolderNow(dataDir);
  await recordGeneration(dataDir, objectStore.location, head.generation);
  log.info("restored the metadata database from the object store", {
    objectStore: objectStore.location,
    generation: head.generation,
    storedAt: payload.storedAt,
    databaseBytes: database.byteLength,
    replaced,
    durationMs: Math.round(performance.now() - started),
  });
  return true;
}

async function download(
  objectStore: ObjectStore,
  payload: SnapshotPayload,
  generation: number,
): Promise<Buffer> {
  const where = `${objectStore.location}${payload.key}`;
  const found = await objectStore.get(payload.key, maxSnapshotBytes);
  if (found === undefined) {
    throw new ReplicaDataError(
      `the metadata database's current generation ${generation} (${where}) is missing from the object store; Berth does not start on an older or empty database in its place`,
    );
  }
  if (sha256(found.body) !== payload.sha256) {
    throw new ReplicaDataError(
      `the metadata database's current generation ${generation} (${where}) is damaged: its SHA-256 is not the one ${metadataHeadKey} records`,
    );
  }
  return promisify(gunzip)(found.body, { maxOutputLength: maxSnapshotBytes });
}

/**
 * Moves a database about to be replaced (with its WAL and shared-memory files, which belong to
 * it: left beside the new one, SQLite would apply the old WAL to it) to berth.db.replaced-TIME.
 * Returns the new name, or undefined when there was nothing to move.
 */
function moveAside(databasePath: string): string | undefined {
  const aside = `${databasePath}.replaced-${new Date().toISOString().replace(/[:.]/g, "-")}`;
  let moved = false;
  for (const suffix of ["", "-wal", "-shm"]) {
    if (!existsSync(databasePath + suffix)) continue;
    renameSync(databasePath + suffix, aside + suffix);
    moved = true;
  }
  return moved ? aside : undefined;
}
