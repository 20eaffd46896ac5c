import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  statfsSync,
  writeFileSync,
} from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";

export interface CgroupLimits {
  memoryBytes: number;
  pids: number;
  /** CPU time per period as a number of CPUs, e.g. 1.5. */
  cpus: number;
}

const cgroup2Magic = 0x63677270;
const cpuPeriodMicros = 100_000;

/**
 * One cgroup per sandbox under a parent owned by this Berth server, on either layout: cgroup v2
 * (one unified tree) or v1 (a tree per controller, as on the project's machines, where the v2
 * mount in hybrid mode holds no controllers).
 */
export class CgroupTree {
  private readonly layout: "v1" | "v2";
  private readonly roots: string[];

  constructor(parentName: string, mountPoint = "/sys/fs/cgroup") {
    if (isCgroup2(mountPoint)) {
      this.layout = "v2";
      this.roots = [join(mountPoint, parentName)];
    } else {
      this.layout = "v1";
      this.roots = v1Controllers(mountPoint).map((controller) =>
        join(mountPoint, controller, parentName),
      );
      for (const root of this.roots) {
        if (!existsSync(join(root, "..")))
          throw new Error(`cgroup v1 controller missing: ${join(root, "..")}`);
      }
    }
  }

  describe(): string {
    return `cgroup ${this.layout} at ${this.roots.join(", ")}`;
  }

  /**
   * Creates the parent, killing and removing sandboxes a previous run of this server left behind,
   * and bounds what all sandboxes together may take: each session's own limits, added up over
   * maxSessions, may well exceed the host.
   */
  async prepare(total: { memoryBytes: number; pids: number }): Promise<void> {
    for (const root of this.roots) {
      if (existsSync(root)) {
        for (const entry of readdirSync(root, { withFileTypes: true })) {
          if (entry.isDirectory()) await this.removeGroup(join(root, entry.name));
        }
      }
      await mkdir(root, { recursive: true });
    }
    if (this.layout === "v2") {
      const root = this.roots[0] ?? "";
      await writeFile(join(root, "..", "cgroup.subtree_control"), "+memory +pids +cpu").catch(
        () => undefined,
      );
      await writeFile(join(root, "cgroup.subtree_control"), "+memory +pids +cpu");
    }
    const parentLimits: Record<string, string> =
      this.layout === "v2"
        ? { "memory.max": String(total.memoryBytes), "pids.max": String(total.pids) }
        : {
            "memory/memory.limit_in_bytes": String(total.memoryBytes),
            "pids/pids.max": String(total.pids),
          };
    for (const [file, value] of Object.entries(parentLimits)) {
      await writeFile(this.path("", file), value);
    }
  }

  /** Creates a sandbox's cgroup with its limits; returns the cgroup.procs files to join. */
  async create(name: string, limits: CgroupLimits): Promise<string[]> {
    const quota = String(Math.max(1000, Math.round(limits.cpus * cpuPeriodMicros)));
    const settings: Record<string, string> =
      this.layout === "v2"
        ? {
            "memory.max": String(limits.memoryBytes),
            "memory.swap.max": "0",
            "pids.max": String(limits.pids),
            "cpu.max": `${quota} ${cpuPeriodMicros}`,
          }
        : {
            "memory/memory.limit_in_bytes": String(limits.memoryBytes),
            "pids/pids.max": String(limits.pids),
            "cpu/cpu.cfs_period_us": String(cpuPeriodMicros),
            "cpu/cpu.cfs_quota_us": quota,
          };
    const procs: string[] = [];
    for (const root of this.roots) {
      const group = join(root, name);
      await mkdir(group);
      procs.push(join(group, "cgroup.procs"));
    }
    for (const [file, value] of Object.entries(settings)) {
      await writeFile(this.path(name, file), value);
    }
    return procs;
  }

  /**
   * A group inside a sandbox's cgroup for one command, so that everything the command starts can
   * be found and signalled, wherever it went in the process tree. It stays under the sandbox's
   * limits: on v1 only the pids hierarchy gets the child group (it tracks membership), the
   * command joins the sandbox's own memory and cpu groups. Returns the cgroup.procs files to join.
   */
  createChild(sandbox: string, child: string): string[] {
    const trackingGroup = join(this.trackingRoot(), sandbox, child);
    // Synchronous: cgroupfs lives in memory (~20 µs here), where a thread-pool round trip costs
    // more than the call and sits on every command's start.
    mkdirSync(trackingGroup);
    return this.roots.map((root) =>
      root === this.trackingRoot()
        ? join(trackingGroup, "cgroup.procs")
        : join(root, sandbox, "cgroup.procs"),
    );
  }

  /**
   * Ends every process in a command's group: SIGTERM, then SIGKILL to whatever is left after
   * graceMs. Resolves when the group is empty.
   */
  async terminateChild(sandbox: string, child: string, graceMs: number): Promise<void> {
    const group = join(this.trackingRoot(), sandbox, child);
    const deadline = performance.now() + graceMs;
    // Nothing announces a v1 group becoming empty: look every 10 ms during the grace period.
    for (let left = signalProcesses(group, "SIGTERM"); left > 0 && performance.now() < deadline;) {
      await delay(10);
      left = countProcesses(group);
    }
    if (this.layout === "v2")
      await writeFile(join(group, "cgroup.kill"), "1").catch(() => undefined);
    // A process forking while it is being killed lands in the group too: sweep until empty.
    for (let round = 0; round < 1000 && signalProcesses(group, "SIGKILL") > 0; round += 1) {
      await delay(1);
    }
  }

  /** Removes a command's group if nothing is left in it (processes it left running keep it). */
  removeChild(sandbox: string, child: string): void {
    const group = join(this.trackingRoot(), sandbox, child);
    if (countProcesses(group) > 0) return;
    try {
      rmdirSync(group); // in memory, like createChild
    } catch {
      // Busy for a moment after its last process exited: retry without holding the caller.
      void removeWhenEmpty(group, { kill: false }).catch(() => undefined);
    }
  }

  usage(name: string): Promise<{
    memoryBytes: number | undefined;
    processes: number | undefined;
    cpuSeconds: number | undefined;
  }> {
    const memoryFile = this.layout === "v2" ? "memory.current" : "memory/memory.usage_in_bytes";
    const pidsFile = this.layout === "v2" ? "pids.current" : "pids/pids.current";
    // Synchronous, like createChild: cgroupfs lives in memory, and a scrape reads these for every
    // session (64 sessions through the thread pool took 75 ms, queued behind other file work).
    const read = (file: string): string | undefined => {
      try {
        return readFileSync(this.path(name, file), "utf8");
      } catch {
        return undefined; // the sandbox is gone
      }
    };
    const memory = read(memoryFile);
    const pids = read(pidsFile);
    const cpu = read(this.layout === "v2" ? "cpu.stat" : "cpuacct/cpuacct.usage");
    return Promise.resolve({
      memoryBytes: numberIn(memory),
      processes: numberIn(pids),
      cpuSeconds: this.layout === "v2" ? cpuSecondsInStat(cpu) : nanosecondsToSeconds(cpu),
    });
  }

  /** Kills whatever is left in the sandbox's cgroup, then removes it. */
  async remove(name: string): Promise<void> {
    for (const root of this.roots) await this.removeGroup(join(root, name));
  }

  /** Removes this server's parent cgroups once every sandbox in them is gone. */
  async removeParent(): Promise<void> {
    for (const root of this.roots) {
      if (!existsSync(root)) continue;
      for (const entry of readdirSync(root, { withFileTypes: true })) {
        if (entry.isDirectory()) await this.removeGroup(join(root, entry.name));
      }
      await this.removeGroup(root);
    }
  }

  /**
   * A root shell, detached from Berth, that waits for EOF on its stdin (a pipe only Berth
   * holds) and then kills every process left in this tree. Berth's death, however it happens,
   * closes the pipe: no sandbox outlives the server, whatever state it was in.
   */
  startReaper(): ChildProcess {
    // Sandboxes' groups, and on v2 their commands' groups one level down.
    const root = this.roots[0] ?? "";
    const procsGlob = `${root}/*/cgroup.procs ${root}/*/*/cgroup.procs`;
    const reaper = spawn(
      "/bin/sh",
      [
        "-c",
        `cat > /dev/null; for round in 1 2 3; do cat ${procsGlob} 2>/dev/null | xargs -r kill -9 2>/dev/null; done`,
      ],
      { detached: true, stdio: ["pipe", "ignore", "ignore"] },
    );
    reaper.unref();
    return reaper;
  }

  /** Sync variant for process exit, when no event loop turn is left. */
  killAllSync(): void {
    for (const root of this.roots) {
      if (!existsSync(root)) continue;
      for (const entry of readdirSync(root, { withFileTypes: true })) {
        if (!entry.isDirectory()) continue;
        removeGroupSync(join(root, entry.name));
      }
    }
  }

  /** Where command groups live: the unified tree on v2, the pids hierarchy on v1. */
  private trackingRoot(): string {
    if (this.layout === "v2") return this.roots[0] ?? "";
    return this.roots.find((root) => root.includes("/pids/")) ?? "";
  }

  private path(name: string, file: string): string {
    if (this.layout === "v2") return join(this.roots[0] ?? "", name, file);
    const [controller = "", leaf = ""] = file.split("/");
    const rootOf = (wanted: string): string | undefined =>
      this.roots.find((candidate) => candidate.includes(`/${wanted}/`));
    // cpuacct has no root of its own where it is mounted with cpu (cpu,cpuacct).
    const root = rootOf(controller) ?? (controller === "cpuacct" ? rootOf("cpu") : undefined);
    return join(root ?? "", name, leaf);
  }

  private async removeGroup(group: string): Promise<void> {
    for (const child of childGroups(group)) await this.removeGroup(child);
    if (!existsSync(group)) return;
    if (this.layout === "v2") {
      try {
        writeFileSync(join(group, "cgroup.kill"), "1"); // in memory, like createChild
      } catch {
        // gone meanwhile, or a kernel before 5.14: the processes are signalled one by one
      }
    }
    await removeWhenEmpty(group, { kill: true });
  }
}

/**
 * The v1 hierarchies a sandbox gets a group in. cpuacct (the CPU time a group used) is one of
 * its own on some hosts (this project's machines), and shares cpu's where the two are mounted
 * together (cpu,cpuacct): then cpu's group already counts, and a second one would be the same.
 */
function v1Controllers(mountPoint: string): string[] {
  const controllers = ["memory", "pids", "cpu"];
  const cpuacct = join(mountPoint, "cpuacct");
  try {
    if (realpathSync(cpuacct) !== realpathSync(join(mountPoint, "cpu")))
      controllers.push("cpuacct");
  } catch {
    // no cpuacct hierarchy (or no cpu one, reported by the caller): CPU time is not known
  }
  return controllers;
}

function numberIn(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text.trim());
  return Number.isFinite(value) ? value : undefined;
}

function nanosecondsToSeconds(text: string | undefined): number | undefined {
  const nanoseconds = numberIn(text);
  return nanoseconds === undefined ? undefined : nanoseconds / 1e9;
}

/** v2's cpu.stat: `usage_usec N` among other lines. */
function cpuSecondsInStat(text: string | undefined): number | undefined {
  const micros = /^usage_usec (\d+)$/m.exec(text ?? "")?.[1];
  return micros === undefined ? undefined : Number(micros) / 1e6;
}

/** Longest the removal of a group waits for its processes to be gone. */
const groupRemovalTimeoutMs = 5_000;
/** Longest pause between two looks at a group whose processes are still going. */
const maxGroupLookPauseMs = 32;

/**
 * Removes a group once no process is left in it; with `kill`, SIGKILLs what is still there at
 * each look (a process forking while it is killed lands in the group too). A look reads
 * cgroupfs, which lives in memory (microseconds), so it is done synchronously; the pauses
 * between looks grow from 1 ms. Hundreds of sandboxes ending at once each take a few looks
 * while the kernel tears their processes down. (They were an rmdir through the thread pool
 * every 5 ms, failing with EBUSY until the group was empty: tens of thousands of calls that
 * queued every other sandbox's file work behind them.)
 */
async function removeWhenEmpty(group: string, options: { kill: boolean }): Promise<void> {
  const deadline = performance.now() + groupRemovalTimeoutMs;
  for (let pauseMs = 1; ; pauseMs = Math.min(pauseMs * 2, maxGroupLookPauseMs)) {
    const left = options.kill ? signalProcesses(group, "SIGKILL") : countProcesses(group);
    // The kernel still answers EBUSY for a moment after the last process is gone.
    if (left === 0 && removedOrBusy(group) === "removed") return;
    if (performance.now() > deadline) {
      throw new Error(`cgroup ${group} still holds processes after ${groupRemovalTimeoutMs} ms`);
    }
    await delay(pauseMs);
  }
}

function removedOrBusy(group: string): "removed" | "busy" {
  try {
    rmdirSync(group);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EBUSY") return "busy";
    if (code !== "ENOENT") throw error;
  }
  return "removed";
}

/** Child groups; none once the group is gone (another removal may have got there first). */
function childGroups(group: string): string[] {
  try {
    return readdirSync(group, { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => join(group, entry.name));
  } catch {
    return [];
  }
}

function readProcesses(group: string): string[] {
  try {
    return readFileSync(join(group, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

function countProcesses(group: string): number {
  return readProcesses(group).length;
}

/** Signals the processes in one group (not its children); returns how many there were. */
function signalProcesses(group: string, signal: NodeJS.Signals): number {
  const pids = readProcesses(group);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), signal);
    } catch {
      // already gone
    }
  }
  return pids.length;
}

/** Best effort at exit, children first; the next start removes whatever is left. */
function removeGroupSync(group: string): void {
  for (const child of childGroups(group)) removeGroupSync(child);
  try {
    signalProcesses(group, "SIGKILL");
    rmdirSync(group);
  } catch {
    // see above
  }
}

function isCgroup2(mountPoint: string): boolean {
  try {
    return statfsSync(mountPoint).type === cgroup2Magic;
  } catch {
    return false;
  }
}
