import { randomBytes, randomInt } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { AccessKey } from "../wire/sigv4.ts";

export const credentialsFileName = "credentials.json";

/**
 * The key pair clients sign with: from settings when given, else the pair stored in the data
 * directory, else a new pair written there with mode 0600. `generated` is true only the first
 * time, so the caller prints the secret once.
 */
export function loadOrCreateCredentials(
  dataDir: string,
  configured: { accessKeyId: string; secretAccessKey: string },
): { key: AccessKey; generated: boolean } {
  if (configured.accessKeyId !== "") return { key: configured, generated: false };
  const path = join(dataDir, credentialsFileName);
  try {
    const stored = JSON.parse(readFileSync(path, "utf8")) as Partial<AccessKey>;
    if (typeof stored.accessKeyId === "string" && typeof stored.secretAccessKey === "string") {
      return {
        key: { accessKeyId: stored.accessKeyId, secretAccessKey: stored.secretAccessKey },
        generated: false,
      };
    }
    throw new Error(`${path} does not hold accessKeyId and secretAccessKey; fix or delete it`);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const key: AccessKey = {
    accessKeyId: newAccessKeyId(),
    secretAccessKey: randomBytes(30).toString("base64url"),
  };
  // "wx": never overwrite a file another process wrote meanwhile.
  writeFileSync(path, `${JSON.stringify(key, null, 2)}\n`, { mode: 0o600, flag: "wx" });
  return { key, generated: true };
}

function newAccessKeyId(): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let id = "BRTH";
  for (let index = 0; index < 16; index += 1) id += alphabet.charAt(randomInt(alphabet.length));
  return id;
}
