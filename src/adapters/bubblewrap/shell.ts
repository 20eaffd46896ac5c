import type { ChildProcess } from "node:child_process";
import { mkdirSync, readdirSync, rmdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Readable, Writable } from "node:stream";
import type { SandboxExit, SandboxFilesystem, SandboxIdentity } from "../../core/sandbox.ts";
import { readAgentOutput } from "../host/agent-output.ts";
import type { CgroupLimits, CgroupTree } from "./cgroups.ts";
import {
  joinCgroups,
  mapIdentity,
  readChildPid,
  release,
  spawnBwrap,
  startUserModeNetwork,
} from "./launch.ts";
import { codeMountArgs, imageMountArgs, sandboxPaths, sandboxUser } from "./mounts.ts";
import { mountPointsUnder } from "../host/mount-table.ts";
import type { ImageRootRequest } from "../host/root-mounts.ts";
import type { UidPool } from "./uid-pool.ts";

/** What a sandbox runs: everything that shapes its bwrap command line. */
export interface LaunchSpec {
  filesystem: SandboxFilesystem;
  command: string[];
  environment: Record<string, string>;
  /** The agent's port inside the sandbox, where the bridge relays Berth's connections. */
  agentPort: number;
}

export interface ShellContext {
  uids: UidPool;
  cgroups: CgroupTree;
  limits: CgroupLimits;
  runRoot: string;
  etcDir: string;
  interpreters: Record<string, string>;
  /** Longest line of agent output passed to onOutput; a longer one is cut there. */
  maxOutputLineBytes: number;
  /**
   * A root-owned folder holding only `bridge` (berth-bridge): every sandbox's first program,
   * seen read-only at /run/berth.
   */
  bridgeDir: string;
  /** native/bin/berth-listen: makes the agent socket as root before bwrap starts. */
  listen: string;
  /** Whether berth-bridge installs Berth's seccomp filter (see native/berth-bridge.c). */
  seccomp: boolean;
  /** Makes a folder a shared mount point (see RootMounts.shareMountPoint). */
  shareMountPoint: (directory: string) => Promise<void>;
  /** Mounts an image sandbox's root (see RootMounts.imageRoot). */
  mountImageRoot: (request: ImageRootRequest) => Promise<void>;
  /** Unmounts a folder (see RootMounts.unmount). */
  unmount: (directory: string) => Promise<void>;
}

type OutputHandler = (stream: "stdout" | "stderr", line: string) => void;

let shellCounter = 0;

/** bwrap's fds: 3 its info, 4 its block pipe (see launch.ts), then the bridge's two. */
const readyFd = 5;
const environmentFd = 6;
const listenFd = 7;

/**
 * A sandbox set up up to the moment its command would start: own uid, cgroup, namespaces and
 * id maps, with bwrap waiting on --userns-block-fd. Preparing one costs most of a sandbox's
 * start-up; start() then only lets it run. Nothing of the agent has run yet.
 */
export class PreparedShell {
  readonly name: string;
  readonly uid: number;
  readonly runDir: string;
  /**
   * The agent's socket, in a folder only root can reach: Berth connects to it as root, so no
   * path a sandbox can change may lead there (see native/berth-listen.c).
   */
  readonly agentSocket: string;
  readonly procsFiles: string[];
  readonly child: ChildProcess;
  readonly childPid: number;
  readonly exited: Promise<SandboxExit>;
  /** Settles after exited, once the sandbox's host resources (mounts, cgroup, uid) are released. */
  finished: Promise<SandboxExit>;
  /** The environment the agent starts with; commands run with the same. */
  readonly environment: Record<string, string>;
  /** Who the agent runs as inside; commands run as the same. */
  readonly identity: SandboxIdentity;
  /** Where the agent starts; commands start there too. */
  readonly workingDir: string;
  onOutput: OutputHandler = () => undefined;
  /** The sandbox's slirp4netns, once it has outbound access. */
  network: ChildProcess | undefined;
  private networkStarting: Promise<void> | undefined;
  /** Settles once berth-bridge runs, that is once bwrap has finished the sandbox's set-up. */
  private readonly setUp: Promise<void>;
  private released = false;

  private constructor(fields: {
    name: string;
    uid: number;
    runDir: string;
    procsFiles: string[];
    child: ChildProcess;
    childPid: number;
    exited: Promise<SandboxExit>;
    launch: LaunchSpec;
  }) {
    this.name = fields.name;
    this.uid = fields.uid;
    this.runDir = fields.runDir;
    this.agentSocket = agentSocketIn(fields.runDir);
    this.procsFiles = fields.procsFiles;
    this.child = fields.child;
    this.childPid = fields.childPid;
    this.exited = fields.exited;
    this.finished = fields.exited;
    this.environment = sandboxEnvironment(fields.launch);
    this.identity = identityOf(fields.launch.filesystem);
    this.workingDir = workingDirOf(fields.launch.filesystem);
    this.setUp = bridgeStarted(readablePipe(fields.child, readyFd), fields.exited);
  }

  /** Returns undefined when every uid is in use. */
  static async prepare(
    context: ShellContext,
    launch: LaunchSpec,
  ): Promise<PreparedShell | undefined> {
    const uid = context.uids.take();
    if (uid === undefined) return undefined;
    shellCounter += 1;
    const name = `sb${process.pid.toString(36)}-${shellCounter.toString(36)}`;
    const runDir = join(context.runRoot, name);
    let child: ChildProcess | undefined;
    let childPid: number | undefined;
    try {
      // Root's, and nothing in it is the sandbox's to write: what a sandbox can write on the
      // host's disk is its session storage alone (bounded), never this folder.
      mkdirSync(runDir, { mode: 0o711 });
      mkdirSync(join(runDir, "host"), { mode: 0o700 });
      mkdirSync(join(runDir, "mnt"), { mode: 0o755 });
      // Before bwrap copies the host's mounts: volumes mounted here later reach the sandbox.
      await context.shareMountPoint(join(runDir, "mnt"));
      if (launch.filesystem.kind === "image") {
        mkdirSync(join(runDir, "root"), { mode: 0o755 });
        await context.shareMountPoint(join(runDir, "root"));
        // The image's idmapped copy and the writable layer: root's alone, and mounted after the
        // sandbox's copy of the host's mounts was made, so the sandbox never sees them.
        mkdirSync(join(runDir, "host", "scratch"), { mode: 0o700 });
      }
      const procsFiles = await context.cgroups.create(name, context.limits);
      child = spawnBwrap({
        uid,
        listen: context.listen,
        agentSocket: agentSocketIn(runDir),
        listenFd,
        readyFd,
        environmentFd,
        args: bwrapArguments(context, launch, runDir),
        environment: sandboxEnvironment(launch),
      });
      const spawned = child;
      const exited = new Promise<SandboxExit>((resolve) => {
        spawned.once("exit", (code, signal) => {
          resolve({ code, signal });
        });
        spawned.once("error", () => {
          resolve({ code: null, signal: null });
        });
      });
      // Once bwrap is gone, its info and block pipes would keep Berth's event loop alive.
      void exited.then(() => {
        (spawned.stdio[3] as Readable).destroy();
        (spawned.stdio[4] as Writable).destroy();
        readablePipe(spawned, readyFd).destroy();
      });
      childPid = await readChildPid(spawned.stdio[3] as Readable, exited);
      joinCgroups(procsFiles, [spawned.pid ?? 0, childPid]);
      mapIdentity(childPid, identityOf(launch.filesystem), uid);
      if (launch.filesystem.kind === "image") {
        await context.mountImageRoot({
          root: launch.filesystem.rootfsDir,
          inside: launch.filesystem.user,
          hostId: uid,
          scratch: join(runDir, "host", "scratch"),
          // The writable layer is memory, charged to the sandbox's own memory limit.
          sizeBytes: context.limits.memoryBytes,
          target: join(runDir, "root"),
        });
      }
      const shell = new PreparedShell({
        name,
        uid,
        runDir,
        procsFiles,
        child: spawned,
        childPid,
        exited,
        launch,
      });
      for (const stream of ["stdout", "stderr"] as const) {
        const output = spawned[stream];
        if (output === null) continue;
        readAgentOutput(output, context.maxOutputLineBytes, (line) => {
          shell.onOutput(stream, line);
        });
      }
      shell.finished = exited.then(async (exit) => {
        await context.cgroups.remove(name).catch(() => undefined);
        await removeRunDir(context, runDir).catch(() => undefined);
        context.uids.give(uid);
        return exit;
      });
      return shell;
    } catch (error) {
      child?.kill("SIGKILL");
      // Not yet released, the sandbox's first process waits on its block pipe: it cannot have
      // exited, so its pid is still its own. It may not be in the cgroup yet.
      if (childPid !== undefined) killQuietly(childPid);
      await context.cgroups.remove(name).catch(() => undefined);
      await removeRunDir(context, runDir).catch(() => undefined);
      context.uids.give(uid);
      throw error;
    }
  }

  /** Lets bwrap finish the sandbox (mounts, then the command). */
  run(): void {
    this.released = true;
    release(this.child.stdio[4] as Writable);
  }

  /**
   * Attaches outbound networking (idempotent); call after run(). slirp4netns configures the
   * namespace's loopback too, so it must wait until bwrap has finished its own set-up: the
   * bridge's first act, a byte on its ready pipe, marks that moment.
   */
  connectNetwork(): Promise<void> {
    this.networkStarting ??= this.setUp
      .then(() =>
        startUserModeNetwork({
          uid: this.uid,
          procsFiles: this.procsFiles,
          childPid: this.childPid,
          timeoutMs: 5000,
        }),
      )
      .then((network) => {
        this.network = network;
      });
    return this.networkStarting;
  }

  kill(): void {
    this.child.kill("SIGKILL");
    this.network?.kill("SIGKILL");
    // A shell never released still waits on its block pipe (its pid cannot have been reused);
    // killing only bwrap's parent would leave it waiting there forever.
    if (!this.released) killQuietly(this.childPid);
  }
}

function killQuietly(pid: number): void {
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/**
 * Unmounts what is mounted in a sandbox's run folder, deepest first, then removes it: removing
 * first could reach into a mounted volume and delete a session's data. A mount point that will
 * not go stops the removal (the next start of the server clears it).
 */
async function removeRunDir(context: ShellContext, runDir: string): Promise<void> {
  if (await removedAsMade(context, runDir).catch(() => false)) return;
  for (const point of mountPointsUnder(runDir)) {
    if (point !== runDir) await context.unmount(point);
  }
  rmSync(runDir, { recursive: true, force: true });
}

/**
 * The common case, without reading the host's whole mount table: a code sandbox without
 * volumes has one mount point (its `mnt`) and a few entries, each removed by name, never
 * recursively. Anything else in the folder (a volume's mount point, an image's root) leaves it
 * to removeRunDir's full way. Returns whether the folder is gone. (Reading the table and a
 * recursive removal, on Berth's one thread for every sandbox, cost O(all mounts) each: with 200
 * sandboxes ending together they ended one after another, see bench/session-expiry.ts.)
 */
async function removedAsMade(context: ShellContext, runDir: string): Promise<boolean> {
  const host = join(runDir, "host");
  const volumes = join(runDir, "mnt");
  const holds = (folder: string, allowed: string[]) =>
    readdirSync(folder).every((entry) => allowed.includes(entry));
  if (!holds(runDir, ["host", "mnt"]) || !holds(volumes, []) || !holds(host, ["agent.sock"]))
    return false;
  await context.unmount(volumes);
  rmSync(join(host, "agent.sock"), { force: true });
  for (const folder of [host, volumes, runDir]) rmdirSync(folder);
  return true;
}

/** Resolves on berth-bridge's byte on its ready pipe; rejects if the sandbox exits first. */
function bridgeStarted(ready: Readable, exited: Promise<unknown>): Promise<void> {
  const started = new Promise<void>((resolve, reject) => {
    ready.once("data", () => {
      resolve();
    });
    ready.once("error", reject);
  });
  const failed = exited.then(() => {
    throw new Error("the sandbox exited during its set-up");
  });
  const settled = Promise.race([started, failed]);
  settled.catch(() => undefined); // awaited only if the sandbox asks for outbound access
  return settled;
}

/** ChildProcess types only the first five stdio entries; the ready pipe comes after them. */
function readablePipe(child: ChildProcess, fd: number): Readable {
  return (child.stdio as readonly unknown[])[fd] as Readable;
}

function agentSocketIn(runDir: string): string {
  return join(runDir, "host", "agent.sock");
}

/**
 * What a process in the sandbox sees. Code sandboxes get the basics a program expects, then the
 * runtime's own; an image brings its own basics (its Env), which the plan has already merged.
 */
function sandboxEnvironment(launch: LaunchSpec): Record<string, string> {
  if (launch.filesystem.kind === "image") return launch.environment;
  return {
    PATH: `${sandboxPaths.interpreters}:/usr/local/bin:/usr/bin:/bin`,
    HOME: sandboxPaths.home,
    USER: sandboxUser.name,
    LANG: "C.UTF-8",
    ...launch.environment,
  };
}

function identityOf(filesystem: SandboxFilesystem): SandboxIdentity {
  return filesystem.kind === "image" ? filesystem.user : sandboxUser;
}

function workingDirOf(filesystem: SandboxFilesystem): string {
  return filesystem.kind === "image" ? filesystem.workingDir : sandboxPaths.app;
}

function bwrapArguments(context: ShellContext, launch: LaunchSpec, runDir: string): string[] {
  const identity = identityOf(launch.filesystem);
  const filesystemArgs =
    launch.filesystem.kind === "image"
      ? imageMountArgs({ rootDir: join(runDir, "root"), runDir, etcDir: context.etcDir })
      : codeMountArgs({
          codeDir: launch.filesystem.codeDir,
          runDir,
          etcDir: context.etcDir,
          interpreters: context.interpreters,
          interpreter: launch.filesystem.interpreter,
        });
  return [
    "--unshare-user",
    "--unshare-pid",
    // berth-bridge is pid 1: no process of the sandbox is outside its seccomp filter.
    "--as-pid-1",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-net",
    "--unshare-cgroup-try",
    "--uid",
    String(identity.uid),
    "--gid",
    String(identity.gid),
    "--cap-drop",
    "ALL",
    "--hostname",
    "sandbox",
    "--die-with-parent",
    "--new-session",
    "--info-fd",
    "3",
    "--userns-block-fd",
    "4",
    ...filesystemArgs,
    "--ro-bind",
    context.bridgeDir,
    sandboxPaths.run,
    "--chdir",
    workingDirOf(launch.filesystem),
    "--",
    // The bridge relays the socket Berth handed down to the agent's port inside this network
    // namespace, starts the agent and stays as the sandbox's init.
    sandboxPaths.bridge,
    ...(context.seccomp ? [] : ["--no-seccomp"]),
    String(listenFd),
    String(readyFd),
    String(launch.agentPort),
    ...launch.command,
  ];
}
