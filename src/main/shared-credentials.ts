import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Settings } from "../config/settings.ts";
import type { Logger } from "../core/logger.ts";
import { PreconditionFailedError, type ObjectStore } from "../core/object-store.ts";
import type { AccessKey } from "../wire/sigv4.ts";
import { credentialsFileName, loadOrCreateCredentials } from "./credentials.ts";

/** A credentials file is a few hundred bytes: anything much larger is not one Berth wrote. */
const maxCredentialsBytes = 64 * 1024;

/** Where the generated key pair is kept in the object store, beside the metadata database. */
export const sharedCredentialsKey = "metadata/credentials.json";

/**
 * The key pair clients sign with (loadOrCreateCredentials), kept in the object store too, so
 * that clients go on signing with it when a new machine takes over: restored into a data
 * directory that has none, and stored there when the object store has none. Pairs given by
 * settings stay where they are configured. The bucket then holds Berth's SigV4 secret.
 */
export async function loadSharedCredentials(
  settings: Settings,
  objectStore: ObjectStore | undefined,
  log: Logger,
): Promise<{ key: AccessKey; generated: boolean }> {
  const configured = {
    accessKeyId: settings.accessKeyId,
    secretAccessKey: settings.secretAccessKey,
  };
  if (objectStore === undefined || configured.accessKeyId !== "") {
    return loadOrCreateCredentials(settings.dataDir, configured);
  }
  const path = join(settings.dataDir, credentialsFileName);
  const shared = await objectStore.get(sharedCredentialsKey, maxCredentialsBytes);
  if (shared !== undefined && !existsSync(path)) {
    writeFileSync(path, shared.body, { mode: 0o600, flag: "wx" });
    log.info("restored the credentials from the object store", { file: path });
  }
  const loaded = loadOrCreateCredentials(settings.dataDir, configured);
  if (shared === undefined) {
    const stored = await objectStore
      .put(sharedCredentialsKey, readFileSync(path), { ifNoneMatch: "*" })
      .then(
        () => true,
        (error: unknown) => {
          if (!(error instanceof PreconditionFailedError)) throw error;
          return false;
        },
      );
    // Another Berth stored its pair first: nodes starting together for the first time (a
    // cluster) must all sign with one pair, so a pair generated just now gives way to it.
    if (!stored && loaded.generated) return adoptSharedCredentials(objectStore, path, log);
    if (!stored) {
      log.warn(
        "another Berth stored other credentials in the object store first: this one keeps its own",
        { objectStore: objectStore.location, file: path },
      );
    }
  }
  return loaded;
}

/** Replaces the pair this Berth generated a moment ago with the one the object store holds. */
async function adoptSharedCredentials(
  objectStore: ObjectStore,
  path: string,
  log: Logger,
): Promise<{ key: AccessKey; generated: boolean }> {
  const shared = await objectStore.get(sharedCredentialsKey, maxCredentialsBytes);
  if (shared === undefined)
    throw new Error(`${sharedCredentialsKey} vanished from the object store`);
  writeFileSync(path, shared.body, { mode: 0o600 });
  log.info("took the credentials another Berth stored in the object store first", { file: path });
  return { key: JSON.parse(shared.body.toString("utf8")) as AccessKey, generated: false };
}
