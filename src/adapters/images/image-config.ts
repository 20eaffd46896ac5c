import { ArtifactProblem } from "../../core/preparation.ts";
import type { SandboxIdentity } from "../../core/sandbox.ts";
import type { ImageRoot } from "./image-root.ts";
import { hostPlatform } from "./manifests.ts";

/** An image config's parts Berth uses (OCI image-spec config.json). */
export interface ImageConfigDocument {
  os?: string;
  architecture?: string;
  config?: {
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Env?: string[] | null;
    WorkingDir?: string;
    User?: string;
  };
  rootfs?: { diff_ids?: string[] };
}

/** How a session of the image starts, worked out once when the image is unpacked. */
export interface ImageLaunch {
  command: string[];
  environment: Record<string, string>;
  workingDir: string;
  user: SandboxIdentity;
  /** What execute-command runs `-c` with; undefined when the image has no shell. */
  shell: string | undefined;
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Refuses an image built for another platform, naming both. */
export function requireHostPlatform(config: ImageConfigDocument, shown: string): void {
  const host = hostPlatform();
  const os = config.os ?? "unknown";
  const architecture = config.architecture ?? "unknown";
  if (os !== host.os || architecture !== host.architecture) {
    throw new ArtifactProblem(
      `Wrong platform: ${shown} is built for ${os}/${architecture}; this host runs ${host.os}/${host.architecture}`,
    );
  }
}

/**
 * Entrypoint + Cmd, Env, WorkingDir and User as a container runtime reads them. The user (a
 * name, uid, or either with a group) is looked up in the image's own /etc/passwd and /etc/group;
 * HOME comes from there too unless Env sets it.
 */
export function launchOf(config: ImageConfigDocument, root: ImageRoot, shown: string): ImageLaunch {
  const settings = config.config ?? {};
  const command = [...(settings.Entrypoint ?? []), ...(settings.Cmd ?? [])];
  if (command.length === 0) {
    throw new ArtifactProblem(
      `${shown} has neither Entrypoint nor Cmd: Berth cannot tell what to run`,
    );
  }
  const environment: Record<string, string> = {};
  for (const pair of settings.Env ?? []) {
    const equals = pair.indexOf("=");
    if (equals > 0) environment[pair.slice(0, equals)] = pair.slice(equals + 1);
  }
  environment["PATH"] ??= defaultPath;
  const { user, home } = resolveUser(settings.User ?? "", root, shown);
  environment["HOME"] ??= home;
  const workingDir =
    settings.WorkingDir !== undefined && settings.WorkingDir !== "" ? settings.WorkingDir : "/";
  if (!workingDir.startsWith("/")) {
    throw new ArtifactProblem(
      `${shown} has a relative WorkingDir (${workingDir}); it must be absolute`,
    );
  }
  const shell = ["/bin/bash", "/bin/sh"].find((candidate) => root.hasProgram(candidate));
  return { command, environment, workingDir, user, shell };
}

function resolveUser(
  spec: string,
  root: ImageRoot,
  shown: string,
): { user: SandboxIdentity; home: string } {
  const [userPart = "", groupPart] = spec.split(":");
  const passwd = table(root.readFile("/etc/passwd"));
  let uid = 0;
  let gid: number | undefined;
  let home = "/";
  if (userPart !== "") {
    const entry = /^\d+$/.test(userPart)
      ? passwd.find((fields) => fields[2] === userPart)
      : passwd.find((fields) => fields[0] === userPart);
    if (entry === undefined && !/^\d+$/.test(userPart)) {
      throw new ArtifactProblem(
        `${shown} runs as user "${userPart}", which its /etc/passwd does not have`,
      );
    }
    uid = Number(entry?.[2] ?? userPart);
    gid = entry === undefined ? undefined : Number(entry[3]);
    home = entry?.[5] || "/";
  } else {
    home = passwd.find((fields) => fields[2] === "0")?.[5] || "/";
  }
  if (groupPart !== undefined && groupPart !== "") {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart);
    else {
      const group = table(root.readFile("/etc/group")).find((fields) => fields[0] === groupPart);
      if (group === undefined) {
        throw new ArtifactProblem(
          `${shown} runs as group "${groupPart}", which its /etc/group does not have`,
        );
      }
      gid = Number(group[2]);
    }
  }
  const user = { uid, gid: gid ?? uid };
  // Sandboxes map the ids an image's files use, 0 to 65535 (see image_root in berth-exec).
  if (
    !Number.isSafeInteger(user.uid) ||
    !Number.isSafeInteger(user.gid) ||
    user.uid > 65_535 ||
    user.gid > 65_535
  ) {
    throw new ArtifactProblem(`${shown} has a user Berth cannot map: ${spec}`);
  }
  return { user, home };
}

function table(text: string | undefined): string[][] {
  return (text ?? "")
    .split("\n")
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => line.split(":"));
}
