import type { ChildProcess } from "node:child_process";
import { chownSync, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import type { Sandbox, SandboxDriver, SandboxExit, SandboxSpec } from "../../core/sandbox.ts";
import { CgroupTree, type CgroupLimits } from "./cgroups.ts";
import { mountArgs, sandboxPaths, sandboxUser } from "./mounts.ts";
import { UidPool } from "./uid-pool.ts";
import { HostFirewall } from "./host-firewall.ts";
import {
  mapIdentity,
  readChildPid,
  release,
  spawnInCgroups,
  startUserModeNetwork,
} from "./launch.ts";

export interface BubblewrapOptions {
  /** Per-sandbox folders (the agent socket lives here); must be reachable by sandbox uids. */
  runRoot: string;
  uidBase: number;
  maxSandboxes: number;
  limits: CgroupLimits;
  /** Interpreters put on PATH inside the sandbox: name -> host binary. */
  interpreters: Record<string, string>;
  cgroupParent: string;
  /** "public": outbound through slirp4netns, filtered by the host firewall; "none": loopback only. */
  outbound: "public" | "none";
  /** CIDRs sandboxes may reach although they are private (e.g. an internal model gateway). */
  allowedNetworks: string[];
}

export class SandboxCapacityError extends Error {}

/**
 * Sandboxes with bubblewrap: new user, pid, mount, network, ipc, uts and cgroup namespaces, a
 * host uid of their own (never root), cgroup limits, and --die-with-parent so none outlives the
 * server. Berth reaches the agent's port 8080 through a Unix socket that socat bridges inside
 * the sandbox's own network namespace, so no host port is ever opened.
 */
export class BubblewrapDriver implements SandboxDriver {
  private readonly options: BubblewrapOptions;
  private readonly uids: UidPool;
  private readonly cgroups: CgroupTree;
  private readonly live = new Set<BubblewrapSandbox>();
  private readonly firewall: HostFirewall | undefined;

  private constructor(options: BubblewrapOptions) {
    this.options = options;
    this.uids = new UidPool(options.uidBase, options.maxSandboxes);
    this.cgroups = new CgroupTree(options.cgroupParent);
    this.firewall =
      options.outbound === "public"
        ? new HostFirewall({
            name: options.cgroupParent,
            uidBase: options.uidBase,
            uidCount: options.maxSandboxes,
            allowedNetworks: options.allowedNetworks,
          })
        : undefined;
  }

  /** Clears what a previous run left (cgroups, run folders): nothing stale is trusted. */
  static async create(options: BubblewrapOptions): Promise<BubblewrapDriver> {
    const driver = new BubblewrapDriver(options);
    await driver.cgroups.prepare();
    if (options.outbound === "public") {
      requireTunDevice();
      await driver.firewall?.install();
    }
    rmSync(options.runRoot, { recursive: true, force: true });
    mkdirSync(options.runRoot, { recursive: true, mode: 0o711 });
    // If the server dies without running its shutdown, kill the sandboxes on the way out.
    process.once("exit", () => {
      driver.cgroups.killAllSync();
    });
    return driver;
  }

  describe(): string {
    return `bubblewrap, ${this.cgroups.describe()}, outbound ${this.options.outbound}`;
  }

  async start(spec: SandboxSpec, signal: AbortSignal): Promise<Sandbox> {
    const uid = this.uids.take();
    if (uid === undefined)
      throw new SandboxCapacityError(`all ${this.options.maxSandboxes} sandbox slots are in use`);
    const runDir = join(this.options.runRoot, spec.name);
    let cgroupCreated = false;
    try {
      signal.throwIfAborted();
      const files = writeIdentityFiles(runDir, uid);
      const procsFiles = await this.cgroups.create(spec.name, this.options.limits);
      cgroupCreated = true;
      const sandbox = await this.launch(spec, uid, runDir, procsFiles, files);
      this.live.add(sandbox);
      void sandbox.exited.finally(async () => {
        this.live.delete(sandbox);
        await this.cgroups.remove(spec.name).catch(() => undefined);
        removeRunFolder(runDir);
        this.uids.give(uid);
      });
      return sandbox;
    } catch (error) {
      if (cgroupCreated) await this.cgroups.remove(spec.name).catch(() => undefined);
      removeRunFolder(runDir);
      this.uids.give(uid);
      throw error;
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.live].map((sandbox) => sandbox.kill()));
    await this.cgroups.removeParent();
    await this.firewall?.remove();
    rmSync(this.options.runRoot, { recursive: true, force: true });
  }

  private async launch(
    spec: SandboxSpec,
    uid: number,
    runDir: string,
    procsFiles: string[],
    files: { passwd: string; group: string; hosts: string; resolvConf: string },
  ): Promise<BubblewrapSandbox> {
    const environment: Record<string, string> = {
      PATH: `${sandboxPaths.interpreters}:/usr/local/bin:/usr/bin:/bin`,
      HOME: sandboxPaths.home,
      USER: sandboxUser.name,
      LANG: "C.UTF-8",
      ...spec.environment,
    };
    const bwrapArgs = [
      "--unshare-user",
      "--unshare-pid",
      "--unshare-ipc",
      "--unshare-uts",
      "--unshare-net",
      "--unshare-cgroup-try",
      "--uid",
      String(sandboxUser.uid),
      "--gid",
      String(sandboxUser.gid),
      "--hostname",
      "sandbox",
      "--die-with-parent",
      "--new-session",
      "--info-fd",
      "3",
      "--userns-block-fd",
      "4",
      ...mountArgs({
        codeDir: spec.codeDir,
        runDir,
        interpreters: this.options.interpreters,
        passwdFile: files.passwd,
        groupFile: files.group,
        hostsFile: files.hosts,
        resolvConfFile: files.resolvConf,
      }),
      "--chdir",
      sandboxPaths.app,
      "--clearenv",
      ...Object.entries(environment).flatMap(([name, value]) => ["--setenv", name, value]),
      "--",
      "/bin/sh",
      "-c",
      // socat bridges the run folder's socket to the agent's port inside this network namespace.
      `socat UNIX-LISTEN:${sandboxPaths.agentSocket},fork,unlink-early TCP4:127.0.0.1:8080 2>/dev/null & exec "$@"`,
      "berth-agent",
      ...spec.command,
    ];
    const child = spawnInCgroups({
      uid,
      procsFiles,
      command: ["bwrap", ...bwrapArgs],
      extraPipes: 2,
    });
    for (const stream of ["stdout", "stderr"] as const) {
      const output = child[stream];
      if (output === null) continue;
      createInterface({ input: output, crlfDelay: Infinity }).on("line", (line) => {
        spec.onOutput(stream, line.length > 4096 ? `${line.slice(0, 4096)}…` : line);
      });
    }
    const exited = new Promise<SandboxExit>((resolve) => {
      child.once("exit", (code, exitSignal) => {
        resolve({ code, signal: exitSignal });
      });
      child.once("error", () => {
        resolve({ code: null, signal: null });
      });
    });
    const sandbox = new BubblewrapSandbox(
      spec.name,
      join(runDir, "agent.sock"),
      child.pid,
      exited,
      this.cgroups,
    );
    try {
      const childPid = await readChildPid(child.stdio[3] as Readable, exited);
      mapIdentity(childPid, sandboxUser.uid, uid);
      release(child.stdio[4] as Writable);
      if (this.options.outbound === "public") {
        // The agent may already be starting; it has no route out until the network is up, and
        // the host firewall is in place before any sandbox exists.
        sandbox.network = await startUserModeNetwork({
          uid,
          procsFiles,
          childPid,
          timeoutMs: 5000,
        });
      }
      return sandbox;
    } catch (error) {
      await sandbox.kill();
      throw error;
    }
  }
}

class BubblewrapSandbox implements Sandbox {
  readonly name: string;
  readonly agentEndpoint: { socketPath: string };
  readonly exited: Promise<SandboxExit>;
  private readonly pid: number | undefined;
  private readonly cgroups: CgroupTree;
  /** The sandbox's slirp4netns, when it has outbound access. */
  network: ChildProcess | undefined;

  constructor(
    name: string,
    socketPath: string,
    pid: number | undefined,
    exited: Promise<SandboxExit>,
    cgroups: CgroupTree,
  ) {
    this.name = name;
    this.agentEndpoint = { socketPath };
    this.pid = pid;
    this.exited = exited;
    this.cgroups = cgroups;
  }

  async kill(): Promise<void> {
    // SIGKILL of bwrap tears down its pid namespace: every process inside dies with it, including
    // ones that called setsid or double-forked. The cgroup sweep catches anything racing that.
    for (const pid of [this.pid, this.network?.pid]) {
      if (pid === undefined) continue;
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    await this.exited;
    await this.cgroups.remove(this.name).catch(() => undefined);
  }

  usage() {
    return this.cgroups.usage(this.name);
  }
}

/** slirp4netns opens /dev/net/tun as the sandbox's uid; creating a device still needs
 * CAP_NET_ADMIN in the sandbox's own namespace, which is why 0666 is the kernel's usual mode. */
function requireTunDevice(): void {
  if ((statSync("/dev/net/tun").mode & 0o006) !== 0o006) {
    throw new Error(
      "sandboxOutbound=public needs /dev/net/tun readable and writable by all users (the usual mode 0666): run `chmod 0666 /dev/net/tun` (scripts/setup.sh does), or start with --sandbox-outbound none",
    );
  }
}

function removeRunFolder(runDir: string): void {
  rmSync(runDir, { recursive: true, force: true });
  rmSync(`${runDir}.etc`, { recursive: true, force: true });
}

/** The sandbox's /etc/passwd, /etc/group and /etc/hosts, owned by root and readable by the sandbox. */
function writeIdentityFiles(
  runDir: string,
  uid: number,
): { passwd: string; group: string; hosts: string; resolvConf: string } {
  mkdirSync(runDir, { mode: 0o700 });
  chownSync(runDir, uid, uid);
  const etcDir = `${runDir}.etc`;
  mkdirSync(etcDir, { recursive: true, mode: 0o755 });
  const files = {
    passwd: join(etcDir, "passwd"),
    group: join(etcDir, "group"),
    hosts: join(etcDir, "hosts"),
    resolvConf: join(etcDir, "resolv.conf"),
  };
  // slirp4netns answers DNS at 10.0.2.3 and forwards it to the host's resolvers.
  writeFileSync(files.resolvConf, "nameserver 10.0.2.3\n", { mode: 0o644 });
  writeFileSync(
    files.passwd,
    `root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n${sandboxUser.name}:x:${sandboxUser.uid}:${sandboxUser.gid}:agent:${sandboxPaths.home}:/bin/sh\n`,
    { mode: 0o644 },
  );
  writeFileSync(files.group, `root:x:0:\n${sandboxUser.name}:x:${sandboxUser.gid}:\n`, {
    mode: 0o644,
  });
  writeFileSync(files.hosts, "127.0.0.1 localhost sandbox\n::1 localhost\n", { mode: 0o644 });
  return files;
}
