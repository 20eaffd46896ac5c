import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import type { Readable, Writable } from "node:stream";
import type { SandboxIdentity } from "../../core/sandbox.ts";

/**
 * Starts `command` as `uid` inside the given cgroups: a root shell joins the cgroups first (so
 * every process that follows is counted from its first instruction), then setpriv drops to the
 * uid before exec. Extra pipes become fds 3, 4, ... of the command.
 */
export function spawnInCgroups(options: {
  uid: number;
  procsFiles: string[];
  command: string[];
  extraPipes: number;
}): ChildProcess {
  return spawn(
    "/bin/sh",
    [
      "-c",
      'for procs in $BERTH_CGROUP_PROCS; do echo $$ > "$procs" || exit 125; done; unset BERTH_CGROUP_PROCS; exec "$@"',
      "berth-sandbox",
      "setpriv",
      `--reuid=${options.uid}`,
      `--regid=${options.uid}`,
      "--clear-groups",
      "--no-new-privs",
      ...options.command,
    ],
    {
      env: {
        PATH: "/usr/sbin:/usr/bin:/sbin:/bin",
        BERTH_CGROUP_PROCS: options.procsFiles.join(" "),
      },
      stdio: [
        "ignore",
        "pipe",
        "pipe",
        ...Array.from({ length: options.extraPipes }, () => "pipe" as const),
      ],
    },
  );
}

/**
 * Starts bwrap as `uid`. With --userns-block-fd it stops right after creating the sandbox's
 * first process, before that process forks anything: Berth then moves both into the cgroups and
 * maps the ids, race-free. setpriv sets the parent-death signal after dropping to `uid` (a
 * credential change would clear it), so bwrap dies with Berth even while it waits, when its own
 * --die-with-parent is not yet in force.
 *
 * berth-listen runs first, as root: it makes the agent socket at `agentSocket` and leaves it
 * listening at `listenFd` for berth-bridge. `readyFd` is a pipe the bridge writes once it runs.
 *
 * The sandbox's environment reaches bwrap as arguments read from a pipe (`--args`): never on a
 * command line, which every local user can read in `ps`, and never in the environment of
 * berth-listen or setpriv, which start as root — a dynamic loader obeys LD_PRELOAD and its kin
 * in any process that is not set-id, root's included.
 */
export function spawnBwrap(options: {
  uid: number;
  listen: string;
  agentSocket: string;
  listenFd: number;
  readyFd: number;
  environmentFd: number;
  args: string[];
  environment: Record<string, string>;
}): ChildProcess {
  const { uid } = options;
  const environment = environmentArguments(options.environment); // first: it may refuse
  const child = spawn(
    options.listen,
    [
      options.agentSocket,
      String(options.listenFd),
      "/usr/bin/setpriv",
      `--reuid=${uid}`,
      `--regid=${uid}`,
      "--clear-groups",
      "--pdeathsig",
      "KILL",
      "/usr/bin/bwrap",
      "--args",
      String(options.environmentFd),
      ...options.args,
    ],
    {
      env: { PATH: "/usr/bin:/bin" },
      // stdin closed; stdout and stderr, the agent's output; then fds 3, 4, readyFd, environmentFd.
      stdio: ["ignore", "pipe", "pipe", ...pipesUpTo(options.environmentFd)],
    },
  );
  const environmentPipe = (child.stdio as readonly unknown[])[options.environmentFd] as Writable;
  environmentPipe.on("error", () => undefined); // bwrap gone before reading it: its exit says so
  environmentPipe.end(environment);
  return child;
}

/**
 * `--clearenv --setenv NAME VALUE …` as bwrap's --args reads them: NUL-terminated. A NUL inside
 * a name or value would end that word early and make the rest a bwrap option of the caller's
 * choosing, so none may hold one (an environment cannot hold one anyway).
 */
function environmentArguments(environment: Record<string, string>): Buffer {
  for (const [name, value] of Object.entries(environment)) {
    if (`${name}${value}`.includes("\0"))
      throw new Error(`environment variable ${JSON.stringify(name)} holds a NUL byte`);
  }
  const words = [
    "--clearenv",
    ...Object.entries(environment).flatMap(([name, value]) => ["--setenv", name, value]),
  ];
  return Buffer.from(words.map((word) => `${word}\0`).join(""));
}

function pipesUpTo(lastFd: number): "pipe"[] {
  return Array.from({ length: lastFd - 2 }, () => "pipe" as const);
}

export function joinCgroups(procsFiles: string[], pids: number[]): void {
  for (const procs of procsFiles) {
    for (const pid of pids) writeFileSync(procs, String(pid));
  }
}

/** Reads bwrap's --info-fd JSON and returns the sandbox's first process (in the host pid space). */
export async function readChildPid(info: Readable, exited: Promise<unknown>): Promise<number> {
  let text = "";
  const failed = exited.then(() => {
    throw new Error("bwrap exited before the sandbox started");
  });
  const parsed = new Promise<number>((resolve) => {
    info.on("data", (chunk: Buffer) => {
      text += chunk.toString("utf8");
      try {
        const pid = (JSON.parse(text) as { "child-pid"?: unknown })["child-pid"];
        if (typeof pid === "number") resolve(pid);
      } catch {
        // not complete yet
      }
    });
  });
  return Promise.race([parsed, failed]);
}

/**
 * Maps the sandbox's uid and gid (1000 inside) to the session's host uid, while bwrap waits on
 * --userns-block-fd. Berth writes the map itself so bwrap needs no second, nested user
 * namespace: the network helpers can then join the namespace that owns the sandbox's network.
 */
export function mapIdentity(childPid: number, inside: SandboxIdentity, hostId: number): void {
  writeFileSync(`/proc/${childPid}/setgroups`, "deny");
  writeFileSync(`/proc/${childPid}/uid_map`, `${inside.uid} ${hostId} 1\n`);
  writeFileSync(`/proc/${childPid}/gid_map`, `${inside.gid} ${hostId} 1\n`);
}

export function release(block: Writable): void {
  block.end("1");
}

/**
 * Gives the sandbox outbound access through slirp4netns (a user-mode TCP/IP stack) running as
 * the sandbox's uid in its cgroup. Resolves once the sandbox's interface is configured.
 *
 * slirp4netns parses every packet the sandbox sends, in the host's network namespace and with
 * every capability in the sandbox's user namespace (it joins it to reach the network): its own
 * seccomp filter leaves a compromised one no exec, ptrace, mount, setns or unshare. Its
 * --enable-sandbox (an empty mount namespace) cannot run here: it needs uid 0 mapped in the
 * sandbox's user namespace, which maps uid 1000 alone.
 */
export async function startUserModeNetwork(options: {
  uid: number;
  procsFiles: string[];
  childPid: number;
  timeoutMs: number;
}): Promise<ChildProcess> {
  const slirp = spawnInCgroups({
    uid: options.uid,
    procsFiles: options.procsFiles,
    // fd 4 stays open in Berth and is never written: when Berth dies, however it dies, the pipe
    // closes and slirp4netns exits (bwrap's --die-with-parent does the same for the sandbox).
    extraPipes: 2,
    command: [
      "slirp4netns",
      "--configure",
      "--mtu=65520",
      "--disable-host-loopback",
      "--enable-seccomp",
      `--userns-path=/proc/${options.childPid}/ns/user`,
      "--ready-fd=3",
      "--exit-fd=4",
      String(options.childPid),
      "tap0",
    ],
  });
  const errors: string[] = [];
  slirp.stderr?.on("data", (chunk: Buffer) => errors.push(chunk.toString("utf8")));
  slirp.stdout?.resume();
  const ready = slirp.stdio[3] as Readable;
  const timer = setTimeout(() => slirp.kill("SIGKILL"), options.timeoutMs);
  try {
    await Promise.race([
      once(ready, "data"),
      once(slirp, "exit").then(() => {
        throw new Error(`slirp4netns failed: ${errors.join("").trim() || "no output"}`);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  return slirp;
}
