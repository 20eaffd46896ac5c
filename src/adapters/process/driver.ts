import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:net";
import { basename, join } from "node:path";
import type {
  ImageRootNeeds,
  Sandbox,
  SandboxCommand,
  SandboxDriver,
  SandboxExit,
  SandboxInterpreter,
  SandboxSpec,
  SandboxTerminal,
  SandboxUsage,
  VolumeHandle,
} from "../../core/sandbox.ts";
import { BerthError } from "../../core/errors.ts";
import { readAgentOutput } from "../host/agent-output.ts";
import { spawnInGroup, startCommand, type ProcessPlace } from "./command.ts";
import { killGroup, signalGroup } from "./process-groups.ts";
import { hostProgramPath, volumeVariables } from "./sandbox-environment.ts";

export interface ProcessDriverOptions {
  /** Each sandbox's own folder (its bin folder on PATH, its HOME) goes here. */
  runRoot: string;
  /** Programs on PATH by name in every sandbox: name -> host program (node -> Berth's node). */
  interpreters: Record<string, string>;
  /** Longest line of agent output passed on; a longer one is cut there (see agent-output.ts). */
  maxOutputLineBytes: number;
}

/**
 * NO ISOLATION. FOR TESTS ONLY. NEVER FOR AGENTS YOU DO NOT TRUST.
 *
 * Runs each agent as a plain child process of Berth: the same user, the same filesystem, the
 * same network, no limits. An agent can read and change everything Berth can. It exists so the
 * core (sessions, commands, storage) can be tested on any Linux or macOS machine without root;
 * `berth serve` refuses it outside tests.
 *
 * What a sandbox gets instead of isolation:
 *   - code only (filesystem kind "code"): cwd is the code folder itself, not /app; an image
 *     needs a root of its own and is refused;
 *   - the runtime's environment, HOME a folder of its own, PATH with a folder of its own first
 *     (the driver's interpreters and the runtime's interpreter commands, as symlinks);
 *   - PORT: a free port on 127.0.0.1 picked for it (not 8080: every agent shares the host's
 *     network), where the agent must listen, and Berth reaches it;
 *   - session storage (host-directory volumes) is NOT at its mountPath (there is no mount
 *     namespace): each volume's host folder is in BERTH_VOLUME_<MOUNT_PATH> (`/mnt/workspace`
 *     -> BERTH_VOLUME_MNT_WORKSPACE), and an agent run under this driver must use that;
 *   - "every process of the sandbox" is its process groups (the agent's, each command's):
 *     a process that leaves its group (setsid) is out of Berth's reach and survives the sandbox.
 */
export class ProcessDriver implements SandboxDriver {
  readonly volumeKinds: readonly VolumeHandle["kind"][] = ["host-directory"];
  /** No image roots: images are refused. */
  readonly imageRootNeeds: ImageRootNeeds = { folders: [], files: [] };
  private readonly options: ProcessDriverOptions;
  private readonly live = new Set<ProcessSandbox>();

  constructor(options: ProcessDriverOptions) {
    this.options = options;
  }

  describe(): string {
    return "process (NO ISOLATION: agents run as Berth's own user, for tests only)";
  }

  async start(spec: SandboxSpec, signal: AbortSignal): Promise<Sandbox> {
    signal.throwIfAborted();
    const { filesystem } = spec;
    if (filesystem.kind !== "code") {
      throw new Error(
        "the process driver runs code only: a container image needs a root of its own, which only an isolating sandbox driver (bubblewrap) gives it",
      );
    }
    const volumes = volumeVariables(spec.volumes);
    const port = await freeLoopbackPort();
    signal.throwIfAborted();
    mkdirSync(this.options.runRoot, { recursive: true });
    const folder = mkdtempSync(join(this.options.runRoot, "sandbox-"));
    try {
      const binDir = this.makeBinFolder(folder, filesystem.interpreter);
      const home = join(folder, "home");
      mkdirSync(home);
      const place: ProcessPlace = {
        cwd: filesystem.codeDir,
        environment: {
          HOME: home,
          LANG: "C.UTF-8",
          ...spec.environment,
          PATH: `${binDir}:${spec.environment["PATH"] ?? process.env["PATH"] ?? "/usr/bin:/bin"}`,
          PORT: String(port),
          ...volumes,
        },
      };
      const agent = await spawnInGroup(spec.command, place, "pipe");
      const sandbox = new ProcessSandbox(basename(folder), agent, port, place, () => {
        rmSync(folder, { recursive: true, force: true });
      });
      this.watchOutput(agent, spec.onOutput);
      this.live.add(sandbox);
      void sandbox.exited.finally(() => this.live.delete(sandbox));
      if (signal.aborted) {
        await sandbox.kill();
        throw signal.reason;
      }
      return sandbox;
    } catch (error) {
      rmSync(folder, { recursive: true, force: true });
      throw error;
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.live].map((sandbox) => sandbox.kill()));
  }

  /** The sandbox's own folder first on PATH: symlinks to the host programs it may run by name. */
  private makeBinFolder(folder: string, interpreter: SandboxInterpreter | undefined): string {
    const binDir = join(folder, "bin");
    mkdirSync(binDir);
    const programs: Record<string, string> = { ...this.options.interpreters };
    for (const [name, path] of Object.entries(interpreter?.commands ?? {}))
      programs[name] = hostProgramPath(path, interpreter?.binds ?? []);
    for (const [name, program] of Object.entries(programs)) {
      if (name.includes("/") || name === "." || name === "..")
        throw new Error(`interpreter command name ${JSON.stringify(name)} is not a file name`);
      symlinkSync(program, join(binDir, name));
    }
    return binDir;
  }

  private watchOutput(agent: ChildProcess, onOutput: SandboxSpec["onOutput"]): void {
    const { stdout, stderr } = agent;
    if (stdout !== null)
      readAgentOutput(stdout, this.options.maxOutputLineBytes, (line) => {
        onOutput("stdout", line);
      });
    if (stderr !== null)
      readAgentOutput(stderr, this.options.maxOutputLineBytes, (line) => {
        onOutput("stderr", line);
      });
  }
}

/** How long an ended sandbox's pipes may stay open (held by a process that left its group). */
const pipesCloseMs = 2_000;

class ProcessSandbox implements Sandbox {
  readonly name: string;
  readonly agentEndpoint: { host: string; port: number };
  readonly exited: Promise<SandboxExit>;
  private readonly agent: ChildProcess & { pid: number };
  private readonly place: ProcessPlace;
  /** The process groups of the commands started in it, each ended with the sandbox. */
  private readonly commandGroups = new Set<number>();
  private ended = false;

  constructor(
    name: string,
    agent: ChildProcess & { pid: number },
    port: number,
    place: ProcessPlace,
    removeFolder: () => void,
  ) {
    this.name = name;
    this.agent = agent;
    this.place = place;
    this.agentEndpoint = { host: "127.0.0.1", port };
    const agentExit = new Promise<SandboxExit>((resolve) => {
      agent.once("exit", (code, signal) => {
        resolve({ code, signal });
      });
    });
    this.exited = agentExit.then(async (exit) => {
      // The sandbox ends with its agent: whatever it or its commands left running goes too.
      this.ended = true;
      // `exited` settles whatever the clean-up meets: a process left over is the test's to see,
      // and a rejection here would reach no one.
      await this.killGroups().catch(() => undefined);
      await pipesClosed(agent, pipesCloseMs);
      try {
        removeFolder();
      } catch {
        // a folder a process still writes to: removed with the data directory
      }
      return exit;
    });
  }

  openTerminal(): Promise<SandboxTerminal> {
    return Promise.reject(
      new BerthError(
        "ValidationException",
        "The process sandbox driver (for tests without root) has no terminals: run Berth with --sandbox-driver bubblewrap for shells",
      ),
    );
  }

  async exec(argv: string[]): Promise<SandboxCommand> {
    if (this.ended) throw new Error("the sandbox has ended");
    return startCommand(argv, this.place, (groupId) => {
      // The sandbox may have ended while the command started: it goes at once, as if with it.
      if (this.ended) signalGroup(groupId, "SIGKILL");
      else this.commandGroups.add(groupId);
    });
  }

  async kill(): Promise<void> {
    if (!this.ended) signalGroup(this.agent.pid, "SIGKILL");
    await this.exited;
  }

  /**
   * VmRSS and CPU time of the agent's own process (with its children it waited for) where /proc
   * has them (Linux); commands beside it are not counted.
   */
  usage(): Promise<SandboxUsage> {
    let memoryBytes: number | undefined;
    try {
      const status = readFileSync(`/proc/${this.agent.pid}/status`, "utf8");
      const kibibytes = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
      if (kibibytes !== undefined) memoryBytes = Number(kibibytes) * 1024;
    } catch {
      // No /proc (macOS), or the agent has just gone.
    }
    return Promise.resolve({
      memoryBytes,
      processes: undefined,
      cpuSeconds: cpuSecondsOf(this.agent.pid),
    });
  }

  private async killGroups(): Promise<void> {
    const groups = [this.agent.pid, ...this.commandGroups];
    this.commandGroups.clear();
    await Promise.all(groups.map((groupId) => killGroup(groupId)));
  }
}

/** Resolves when the child's pipes have closed, or destroys them after timeoutMs. */
async function pipesClosed(child: ChildProcess, timeoutMs: number): Promise<void> {
  const pipes = [child.stdout, child.stderr].filter((pipe) => pipe !== null);
  const open = pipes.filter((pipe) => !pipe.closed);
  if (open.length === 0) return;
  const closed = Promise.all(
    open.map((pipe) => new Promise((resolve) => pipe.once("close", resolve))),
  );
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, timeoutMs);
  });
  await Promise.race([closed, late]);
  clearTimeout(timer);
  for (const pipe of open) pipe.destroy();
}

/**
 * A port on 127.0.0.1 nothing listens on at this moment. Another process may take it before the
 * agent listens (the agent then fails to start, as it would on a busy port): fine for tests.
 */
async function freeLoopbackPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (address === null || typeof address === "string") throw new Error("no port was given");
  return address.port;
}

/** Linux counts /proc/PID/stat's CPU times in USER_HZ ticks, 100 a second on every architecture. */
const ticksPerSecond = 100;

/** utime + stime + cutime + cstime of /proc/PID/stat, in seconds; undefined without /proc. */
function cpuSecondsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces and parentheses): state is field 3.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = fields.slice(11, 15).reduce((sum, field) => sum + Number(field), 0);
    return Number.isFinite(ticks) ? ticks / ticksPerSecond : undefined;
  } catch {
    return undefined;
  }
}
