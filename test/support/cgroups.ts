import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** The sandbox cgroups of a server, found through its cgroupParent in the pids controller. */
export function sandboxGroups(cgroupParent: string): string[] {
  const parent = join("/sys/fs/cgroup/pids", cgroupParent);
  if (!existsSync(parent)) return [];
  return readdirSync(parent, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .map((entry) => join(parent, entry.name));
}

/** Host pids of every process in a server's sandboxes (including prepared ones and commands). */
export function sandboxPids(cgroupParent: string): number[] {
  return sandboxGroups(cgroupParent).flatMap(pidsBelow);
}

function pidsBelow(group: string): number[] {
  const own = readFileSync(join(group, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
  const children = readdirSync(group, { withFileTypes: true })
    .filter((entry) => entry.isDirectory())
    .flatMap((entry) => pidsBelow(join(group, entry.name)));
  return [...own.map(Number), ...children];
}
