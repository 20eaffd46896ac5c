import { join } from "node:path";
import { MetadataReplica } from "../adapters/sqlite/replica.ts";
import { databaseFileName } from "../adapters/sqlite/replica-restore.ts";
import { SqliteMetadataStore } from "../adapters/sqlite/store.ts";
import type { Settings } from "../config/settings.ts";
import type { Logger } from "../core/logger.ts";
import type { ObjectStore } from "../core/object-store.ts";
import type { LostOwnershipError } from "../core/replication/fenced-head.ts";
import type { MetadataStore } from "../core/store.ts";

/** A metadata store, and its replication to the object store when there is one. */
export interface OpenedMetadata {
  store: MetadataStore;
  replica: MetadataReplica | undefined;
}

/** What the metadata part needs besides the settings. */
export interface MetadataTools {
  /** Where the metadata is replicated; undefined keeps it on local disk only. */
  objectStore: ObjectStore | undefined;
  log: Logger;
  /** This Berth's node id: who holds the metadata in the object store. */
  nodeId: string;
  /** Another Berth took the metadata over: this one must stop (see MetadataReplica). */
  onLost?: ((error: LostOwnershipError) => void) | undefined;
}

/**
 * The SQLite metadata store. With an object store: this Berth first takes the metadata over
 * there (refused while another live Berth holds it), restores the database when this data
 * directory lacks the current one, and then replicates every change while the store is open.
 */
export async function openSqliteMetadata(
  settings: Settings,
  { objectStore, log, nodeId, onLost }: MetadataTools,
): Promise<OpenedMetadata> {
  const path = join(settings.dataDir, databaseFileName);
  if (objectStore === undefined)
    return { store: new SqliteMetadataStore(path), replica: undefined };
  const replica = await MetadataReplica.takeOver({
    objectStore,
    dataDir: settings.dataDir,
    holder: nodeId,
    leaseMs: metadataLeaseMs(settings),
    log,
    onLost,
  });
  let store: SqliteMetadataStore;
  try {
    store = new SqliteMetadataStore(path);
  } catch (error) {
    await replica.close();
    throw error;
  }
  replica.start();
  return { store, replica };
}

/**
 * How long the head must stay unchanged before another Berth may take the metadata over: three
 * checkpoint periods, as for session storage, and never under 3 s.
 */
function metadataLeaseMs(settings: Settings): number {
  return Math.max(3000, 3 * settings.sessionStorageCheckpointSeconds * 1000);
}
