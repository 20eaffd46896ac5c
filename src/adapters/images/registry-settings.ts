import { readFileSync } from "node:fs";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { RegistryCredentials } from "./registry-client.ts";

/**
 * Credentials per registry from a Docker-style config.json (`auths` -> `username`/`password`
 * or `auth` = base64 of user:password). Read at every call: rotating a password needs no
 * restart. An empty path means no credentials.
 */
export function credentialsFromFile(
  path: string,
): (registry: string) => RegistryCredentials | undefined {
  return (registry) => {
    if (path === "") return undefined;
    let document: {
      auths?: Record<string, { username?: string; password?: string; auth?: string }>;
    };
    try {
      document = JSON.parse(readFileSync(path, "utf8")) as typeof document;
    } catch (error) {
      throw new ArtifactProblem(
        `The registry credentials file ${path} (setting registryCredentialsFile) cannot be read: ${(error as Error).message}`,
      );
    }
    const entry =
      document.auths?.[registry] ??
      document.auths?.[`https://${registry}`] ??
      document.auths?.[`http://${registry}`];
    if (entry === undefined) return undefined;
    if (entry.username !== undefined && entry.password !== undefined) {
      return { username: entry.username, password: entry.password };
    }
    const decoded = Buffer.from(entry.auth ?? "", "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    if (colon === -1) {
      throw new ArtifactProblem(
        `The registry credentials file ${path} has an entry for ${registry} with neither username/password nor auth`,
      );
    }
    return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
  };
}

/** Plain HTTP is allowed for loopback registries and the ones the operator lists. */
export function insecureRegistries(listed: string[]): (registry: string) => boolean {
  return (registry) => {
    const host = registry.startsWith("[")
      ? registry.slice(0, registry.indexOf("]") + 1)
      : registry.split(":")[0];
    const loopback =
      host === "localhost" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host ?? "");
    return loopback || listed.includes(registry) || listed.includes(host ?? "");
  };
}
