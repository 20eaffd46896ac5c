import type { ChildProcess } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import type {
  Sandbox,
  SandboxCommand,
  SandboxDriver,
  SandboxExit,
  SandboxSpec,
  SandboxTerminal,
  TerminalOptions,
} from "../../core/sandbox.ts";
import { NoSandboxSlotError } from "../../core/sandbox.ts";
import type { RootMounts } from "../host/root-mounts.ts";
import { CgroupTree, type CgroupLimits } from "./cgroups.ts";
import { ExecServer, type ExecRequest } from "./exec-server.ts";
import { HostFirewall } from "./host-firewall.ts";
import { prepareSandboxEtc, sandboxPaths, unmountAllUnder } from "./mounts.ts";
import { nativeBinary } from "../host/native-binaries.ts";
import { PreparedShell, type ShellContext } from "./shell.ts";
import { ShellPool } from "./shell-pool.ts";
import { UidPool } from "./uid-pool.ts";

export interface BubblewrapOptions {
  /** Per-sandbox folders, root's (the agent socket lives here); traversable by sandbox uids. */
  runRoot: string;
  uidBase: number;
  maxSandboxes: number;
  limits: CgroupLimits;
  /** What all sandboxes together may use: the parent cgroup's limits. */
  totalLimits: { memoryBytes: number; pids: number };
  /** Interpreters put on PATH inside code sandboxes: name -> host binary. */
  interpreters: Record<string, string>;
  /** native/bin/berth-bridge: copied into a root-owned folder every sandbox sees read-only. */
  bridge: string;
  /** Makes the sandboxes' mounts (run folders, image roots, volumes); the caller's to close. */
  mounts: RootMounts;
  cgroupParent: string;
  /** "public": outbound through slirp4netns, filtered by the host firewall; "none": loopback only. */
  outbound: "public" | "none";
  /** CIDRs sandboxes may reach although they are private (e.g. an internal model gateway). */
  allowedNetworks: string[];
  /** Prepared sandbox shells kept ready per runtime version (0: none). */
  prestartPerVersion: number;
  /** Whether sandboxes and their commands run under Berth's seccomp filter (docs/security.md). */
  seccomp: boolean;
  /** Longest line of agent output passed on; a longer one is cut there (see agent-output.ts). */
  maxOutputLineBytes: number;
}

/** Uids beyond maxSandboxes that prepared shells may hold, so they never crowd out sessions. */
const pooledShellLimit = 16;

/**
 * Sandboxes with bubblewrap: new user, pid, mount, network, ipc, uts and cgroup namespaces, a
 * host uid of their own (never root), cgroup limits, and --die-with-parent so none outlives the
 * server. Berth reaches the agent's port (SandboxSpec.agentPort) through a Unix socket that
 * berth-bridge relays inside the sandbox's own network namespace, so no host port is ever
 * opened.
 */
export class BubblewrapDriver implements SandboxDriver {
  /** Session storage comes as a host folder, bound in through an idmapped mount (mountVolumes). */
  readonly volumeKinds: SandboxDriver["volumeKinds"] = ["host-directory"];
  /** What an image sandbox's bwrap mounts over in the image's root (imageMountArgs in
   * mounts.ts, and the bridge's folder at /run/berth). */
  readonly imageRootNeeds: SandboxDriver["imageRootNeeds"] = {
    folders: ["proc", "dev", "mnt", "run/berth"],
    files: ["etc/hosts", "etc/resolv.conf"],
  };
  private readonly options: BubblewrapOptions;
  private readonly cgroups: CgroupTree;
  private readonly context: ShellContext;
  private readonly pool: ShellPool;
  private readonly live = new Set<BubblewrapSandbox>();
  private readonly firewall: HostFirewall | undefined;
  private reaper: ChildProcess | undefined;
  private execServer: ExecServer | undefined;
  private readonly killOnExit = (): void => {
    this.cgroups.killAllSync();
  };

  private constructor(options: BubblewrapOptions) {
    this.options = options;
    this.cgroups = new CgroupTree(options.cgroupParent);
    const uidCount = options.maxSandboxes + pooledShellLimit;
    this.context = {
      uids: new UidPool(options.uidBase, uidCount),
      cgroups: this.cgroups,
      limits: options.limits,
      runRoot: options.runRoot,
      etcDir: join(options.runRoot, "etc"),
      interpreters: options.interpreters,
      maxOutputLineBytes: options.maxOutputLineBytes,
      bridgeDir: join(options.runRoot, "bridge"),
      listen: nativeBinary("berth-listen"),
      seccomp: options.seccomp,
      shareMountPoint: (directory) => options.mounts.shareMountPoint(directory),
      mountImageRoot: (request) => options.mounts.imageRoot(request),
      unmount: (directory) => options.mounts.unmount(directory),
    };
    this.pool = new ShellPool({
      perSpec: options.prestartPerVersion,
      maxShells: pooledShellLimit,
      idleMs: 10 * 60_000,
      prepare: (launch) => PreparedShell.prepare(this.context, launch),
    });
    this.firewall =
      options.outbound === "public"
        ? new HostFirewall({
            name: options.cgroupParent,
            uidBase: options.uidBase,
            uidCount,
            allowedNetworks: options.allowedNetworks,
          })
        : undefined;
  }

  /** Clears what a previous run left (cgroups, run folders, firewall rules): nothing stale is trusted. */
  static async create(options: BubblewrapOptions): Promise<BubblewrapDriver> {
    const driver = new BubblewrapDriver(options);
    try {
      await driver.cgroups.prepare(options.totalLimits);
      if (options.outbound === "public") {
        requireTunDevice();
        await driver.firewall?.install();
      }
      // A crashed server can leave volumes mounted in run folders: unmount before removing.
      if (existsSync(options.runRoot)) unmountAllUnder(options.runRoot);
      rmSync(options.runRoot, { recursive: true, force: true });
      mkdirSync(options.runRoot, { recursive: true, mode: 0o711 });
      prepareSandboxEtc(driver.context.etcDir);
      prepareBridgeDir(options.bridge, driver.context.bridgeDir);
      const execDir = join(options.runRoot, "exec");
      mkdirSync(execDir, { mode: 0o700 });
      driver.execServer = await ExecServer.start(join(execDir, "berth-exec.sock"), {
        seccomp: options.seccomp,
      });
    } catch (error) {
      // Undo what was set up (firewall chain, cgroups), so a failed start leaves nothing behind.
      await driver.close().catch(() => undefined);
      throw error;
    }
    // If the server dies without running its shutdown, its sandboxes die too: at once on an
    // ordinary exit, and through the reaper when the process is killed outright.
    process.once("exit", driver.killOnExit);
    driver.reaper = driver.cgroups.startReaper();
    return driver;
  }

  describe(): string {
    return `bubblewrap, ${this.cgroups.describe()}, outbound ${this.options.outbound}`;
  }

  async start(spec: SandboxSpec, signal: AbortSignal): Promise<Sandbox> {
    signal.throwIfAborted();
    const launch = {
      filesystem: spec.filesystem,
      command: spec.command,
      environment: spec.environment,
      agentPort: spec.agentPort,
    };
    const shell = this.pool.take(launch) ?? (await PreparedShell.prepare(this.context, launch));
    if (shell === undefined) {
      throw new NoSandboxSlotError(
        `every sandbox uid is taken (${this.context.uids.describe()}: from bubblewrapUidBase, maxSessions + ${pooledShellLimit} of them), by running sandboxes, prepared ones and ones still being torn down`,
      );
    }
    shell.onOutput = spec.onOutput;
    const sandbox = new BubblewrapSandbox(shell, this.cgroups, this.requireExecServer());
    this.live.add(sandbox);
    void sandbox.exited.finally(() => this.live.delete(sandbox));
    try {
      await this.mountVolumes(shell, spec.volumes);
      shell.run();
      // Only after run(): bwrap configures the sandbox's loopback itself once released. The
      // agent starts meanwhile; it has no route out until the network is up, and the host
      // firewall was in place before any sandbox existed.
      if (this.options.outbound === "public") await shell.connectNetwork();
      return sandbox;
    } catch (error) {
      await sandbox.kill();
      throw error;
    }
  }

  /** Every step runs even if an earlier one fails, so nothing is left behind for lack of trying. */
  async close(): Promise<void> {
    const steps: (() => unknown)[] = [
      () => {
        process.off("exit", this.killOnExit);
        this.pool.close();
      },
      () => Promise.all([...this.live].map((sandbox) => sandbox.kill())),
      () => this.execServer?.close(),
      () => this.cgroups.removeParent(),
      () => this.firewall?.remove(),
      () => {
        unmountAllUnder(this.options.runRoot);
        rmSync(this.options.runRoot, { recursive: true, force: true });
      },
      () => this.reaper?.stdin?.end(),
    ];
    const failures: unknown[] = [];
    for (const step of steps) {
      try {
        await step();
      } catch (error) {
        failures.push(error);
      }
    }
    if (failures.length > 0)
      throw new AggregateError(failures, "the sandbox driver did not shut down cleanly");
  }

  /**
   * Mounts each volume in the sandbox's run folder, where bwrap's bind of /mnt picks it up, as an
   * idmapped mount through the sandbox's own user namespace: files stored as the sandbox user
   * belong to whichever host uid this sandbox has. Done before the sandbox runs, so the agent
   * starts with its storage in place.
   */
  private async mountVolumes(shell: PreparedShell, volumes: SandboxSpec["volumes"]): Promise<void> {
    for (const { mountPath, volume } of volumes) {
      if (volume.kind !== "host-directory")
        throw new Error(`bubblewrap attaches host-directory volumes only, not ${volume.kind}`);
      const name = mountPath.slice(`${sandboxPaths.volumes}/`.length);
      if (!/^[a-zA-Z0-9._-]+$/.test(name) || name === "." || name === "..")
        throw new Error(`mount path ${mountPath} is not a folder directly under /mnt`);
      const target = join(shell.runDir, "mnt", name);
      mkdirSync(target);
      await this.options.mounts.idmapMount(volume.path, target, shell.childPid);
    }
  }

  private requireExecServer(): ExecServer {
    if (this.execServer === undefined) throw new Error("the sandbox driver is not started");
    return this.execServer;
  }
}

class BubblewrapSandbox implements Sandbox {
  readonly name: string;
  readonly agentEndpoint: { socketPath: string };
  readonly exited: Promise<SandboxExit>;
  private readonly shell: PreparedShell;
  private readonly cgroups: CgroupTree;
  private readonly execServer: ExecServer;
  private commandCounter = 0;

  constructor(shell: PreparedShell, cgroups: CgroupTree, execServer: ExecServer) {
    this.shell = shell;
    this.name = shell.name;
    this.agentEndpoint = { socketPath: shell.agentSocket };
    this.exited = shell.finished;
    this.cgroups = cgroups;
    this.execServer = execServer;
  }

  async exec(argv: string[]): Promise<SandboxCommand> {
    return this.inGroupOfItsOwn("command", (cgroupProcsFiles) =>
      this.execServer.run(this.execRequest(cgroupProcsFiles, {}, argv)),
    );
  }

  async openTerminal(argv: string[], options: TerminalOptions): Promise<SandboxTerminal> {
    return this.inGroupOfItsOwn("terminal", (cgroupProcsFiles) =>
      this.execServer.openTerminal(this.execRequest(cgroupProcsFiles, options.environment, argv), {
        columns: options.columns,
        rows: options.rows,
      }),
    );
  }

  /** A program beside the agent: its namespaces, uid, working directory and environment. */
  private execRequest(
    cgroupProcsFiles: string[],
    environment: Record<string, string>,
    argv: string[],
  ): ExecRequest {
    return {
      targetPid: this.shell.childPid,
      uid: this.shell.identity.uid,
      gid: this.shell.identity.gid,
      cwd: this.shell.workingDir,
      cgroupProcsFiles,
      environment: { ...this.shell.environment, ...environment },
      argv,
    };
  }

  /**
   * Starts a program in a cgroup of its own (`kind-N`), so that terminate() ends everything it
   * started, including what left its session or tree. The group goes once the program's exit is
   * out and what terminate() began is gone; if processes it left are still in it, it goes with
   * the sandbox.
   */
  private async inGroupOfItsOwn<Handle extends { exited: Promise<SandboxExit> }>(
    kind: string,
    start: (cgroupProcsFiles: string[]) => Promise<Handle>,
  ): Promise<Handle & { terminate: (graceMs: number) => Promise<void> }> {
    this.commandCounter += 1;
    const group = `${kind}-${this.commandCounter}`;
    const cgroupProcsFiles = this.cgroups.createChild(this.name, group);
    let handle: Handle;
    try {
      handle = await start(cgroupProcsFiles);
    } catch (error) {
      this.cgroups.removeChild(this.name, group);
      throw error;
    }
    let terminated: Promise<void> | undefined;
    return {
      ...handle,
      exited: handle.exited.then((exit) => {
        setImmediate(() => {
          void Promise.resolve(terminated).then(() => {
            this.cgroups.removeChild(this.name, group);
          });
        });
        return exit;
      }),
      terminate: (graceMs: number) =>
        (terminated = this.cgroups.terminateChild(this.name, group, graceMs)),
    };
  }

  async kill(): Promise<void> {
    // SIGKILL of bwrap tears down its pid namespace: every process inside dies with it, including
    // ones that called setsid or double-forked. The cgroup sweep catches anything racing that.
    this.shell.kill();
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

/** The bridge alone in a root-owned folder, bound read-only at /run/berth in every sandbox. */
function prepareBridgeDir(bridge: string, bridgeDir: string): void {
  mkdirSync(bridgeDir, { mode: 0o755 });
  copyFileSync(bridge, join(bridgeDir, "bridge"));
  chmodSync(join(bridgeDir, "bridge"), 0o755);
}
