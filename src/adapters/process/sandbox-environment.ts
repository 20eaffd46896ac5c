import type { SandboxInterpreter, SandboxSpec } from "../../core/sandbox.ts";

/**
 * The name of the environment variable that tells an agent under the process driver where a
 * volume is: `/mnt/workspace` -> BERTH_VOLUME_MNT_WORKSPACE (letters upper case, anything else
 * but digits an underscore).
 */
export function volumeVariableName(mountPath: string): string {
  const sanitised = mountPath
    .replace(/^\/+/, "")
    .toUpperCase()
    .replace(/[^A-Z0-9]/g, "_");
  return `BERTH_VOLUME_${sanitised}`;
}

/**
 * Each volume's host folder under its variable name. There is no mount namespace to put it at
 * its mountPath, so the agent is told where it is instead; only host folders can be given.
 */
export function volumeVariables(volumes: SandboxSpec["volumes"]): Record<string, string> {
  const variables: Record<string, string> = {};
  for (const { mountPath, volume } of volumes) {
    if (volume.kind !== "host-directory") {
      throw new Error(
        `the process driver attaches host-directory volumes only, not ${volume.kind} (volume ${volume.volumeId} at ${mountPath})`,
      );
    }
    const name = volumeVariableName(mountPath);
    if (variables[name] !== undefined) {
      throw new Error(
        `two volumes would both be given as ${name} (at ${mountPath}): give them mount paths that differ in more than punctuation or case`,
      );
    }
    variables[name] = volume.path;
  }
  return variables;
}

/**
 * Where the host has a program an interpreter names by its path inside a sandbox: through the
 * bind that shows it there, or the same path when no bind covers it (/usr is the host's own).
 */
export function hostProgramPath(sandboxPath: string, binds: SandboxInterpreter["binds"]): string {
  for (const bind of binds) {
    if (sandboxPath === bind.sandboxPath) return bind.hostPath;
    const prefix = bind.sandboxPath.endsWith("/") ? bind.sandboxPath : `${bind.sandboxPath}/`;
    if (sandboxPath.startsWith(prefix))
      return `${bind.hostPath}/${sandboxPath.slice(prefix.length)}`;
  }
  return sandboxPath;
}
