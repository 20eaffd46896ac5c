import { readdirSync, readFileSync } from "node:fs";

/**
 * Process groups: the process driver's only handle on everything a program started. Each agent
 * and each command is spawned detached (its own session and group, its pid as the group's id),
 * and its children stay in that group unless they leave it (setsid), which nothing here can see.
 */

/** How often a group is checked while waiting for it to go. */
const pollMs = 10;
/** How long processes get to go after SIGKILL before that is reported as a failure. */
const afterKillMs = 10_000;

/** Sends `signal` to every process of the group; false when the group has no process left. */
export function signalGroup(groupId: number, signal: NodeJS.Signals | 0): boolean {
  try {
    process.kill(-groupId, signal);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ESRCH") return false;
    throw error;
  }
}

/**
 * Whether a process of the group still runs. On Linux, a zombie (ended, not yet reaped: the
 * orphans of a group are reaped by pid 1, which in some containers never does) does not count;
 * elsewhere, whether the kernel still knows the group.
 */
export function groupRuns(groupId: number): boolean {
  return linuxGroupRuns(groupId) ?? signalGroup(groupId, 0);
}

/** Resolves true once no process of the group runs, false if some still run after timeoutMs. */
export async function waitUntilGone(groupId: number, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (groupRuns(groupId)) {
    if (performance.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
  return true;
}

/** SIGTERM to the group, then SIGKILL to whatever is left after graceMs; resolves once all are gone. */
export async function endGroup(groupId: number, graceMs: number): Promise<void> {
  if (!signalGroup(groupId, "SIGTERM")) return;
  if (await waitUntilGone(groupId, graceMs)) return;
  await killGroup(groupId);
}

/** SIGKILL to every process of the group; resolves once all are gone. */
export async function killGroup(groupId: number): Promise<void> {
  if (!signalGroup(groupId, "SIGKILL")) return;
  if (await waitUntilGone(groupId, afterKillMs)) return;
  throw new Error(
    `processes of group ${groupId} still ran ${afterKillMs} ms after SIGKILL (stuck in the kernel?)`,
  );
}

/** Scans /proc for a running member; undefined where there is no /proc to scan. */
function linuxGroupRuns(groupId: number): boolean | undefined {
  if (process.platform !== "linux") return undefined;
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return undefined;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const status = processStatus(entry);
    if (status !== undefined && status.groupId === groupId && status.state !== "Z") return true;
  }
  return false;
}

/** The state and group of a process from /proc/<pid>/stat; undefined if it has gone meanwhile. */
function processStatus(pid: string): { state: string; groupId: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // "pid (name) state ppid pgrp ...": the name may hold spaces and parentheses, so the fields
  // are read after its last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { state: fields[0] ?? "", groupId: Number(fields[2]) };
}
