// One suite for the SandboxDriver interface (src/core/sandbox.ts), run against every driver:
// the plain-process driver always, bubblewrap where it can run (as root, on the real parts).
// Each driver runs the probe agent (test/agents/probe) from a code folder of the suite's own.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { chmodSync, chownSync, cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BubblewrapDriver } from "../../src/adapters/bubblewrap/driver.ts";
import { sandboxUser } from "../../src/adapters/bubblewrap/mounts.ts";
import { nativeBinary } from "../../src/adapters/host/native-binaries.ts";
import { RootMounts } from "../../src/adapters/host/root-mounts.ts";
import { ProcessDriver } from "../../src/adapters/process/driver.ts";
import { CommandOutputEncoder } from "../../src/core/output-encoder.ts";
import { outputTextToBytes } from "../../src/core/output-text.ts";
import type {
  Sandbox,
  SandboxCommand,
  SandboxDriver,
  SandboxExit,
  SandboxSpec,
} from "../../src/core/sandbox.ts";
import type { AgentHealth } from "../../src/core/sessions.ts";
import { binaryForSandboxes } from "../../src/main/sandbox-host.ts";
import { pingAgent } from "../../src/wire/agent-client.ts";
import { agentSources, waitFor } from "../support/agents.ts";
import { hostSuite, removeDir } from "../support/berth.ts";
import { invokeSandboxProbe } from "../support/sandbox-probe.ts";

interface BuiltDriver {
  driver: SandboxDriver;
  /** Closes what was built for the driver (after the driver itself). */
  release(): Promise<void>;
}

/** A driver to run the suite against, and what differs in setting one up. */
interface DriverUnderTest {
  name: string;
  /** Why the suite cannot run against it here, if it cannot. */
  skip: string | undefined;
  /** Builds the driver with its folders under `root` (a folder any user may traverse). */
  create(root: string): Promise<BuiltDriver>;
  /** Makes `folder` a volume this driver's agents can write in. */
  prepareVolume(folder: string): void;
}

const driversUnderTest: DriverUnderTest[] = [
  {
    name: "process",
    skip: undefined,
    create: (root) =>
      Promise.resolve({
        driver: new ProcessDriver({
          runRoot: join(root, "processes"),
          interpreters: { node: process.execPath },
          maxOutputLineBytes: 16_384,
        }),
        release: () => Promise.resolve(),
      }),
    prepareVolume: () => undefined,
  },
  {
    name: "bubblewrap",
    skip: hostSuite.skip,
    create: createBubblewrapDriver,
    // Files are stored as the sandbox's own user; each sandbox sees them through an idmapping.
    prepareVolume: (folder) => {
      chownSync(folder, sandboxUser.uid, sandboxUser.gid);
    },
  },
];

/**
 * Bubblewrap as the server builds it (src/main/parts.ts), with a cgroup parent and uids of its
 * own (as test/support/berth.ts gives each test server), and its root mount helper confined to
 * the suite's folder.
 */
async function createBubblewrapDriver(root: string): Promise<BuiltDriver> {
  const mounts = await RootMounts.start(join(root, "mount-helper.sock"), root);
  const slot = (process.pid * 16 + 15) % 60_000;
  try {
    const driver = await BubblewrapDriver.create({
      runRoot: join(root, "sessions"),
      uidBase: 3_000_000 + slot * 64,
      maxSandboxes: 8,
      limits: { memoryBytes: 2 ** 30, pids: 256, cpus: 1 },
      totalLimits: { memoryBytes: 4 * 2 ** 30, pids: 2048 },
      interpreters: { node: binaryForSandboxes(process.execPath, join(root, "interpreters")) },
      bridge: nativeBinary("berth-bridge"),
      mounts,
      cgroupParent: `berth-test-${process.pid}-contract`,
      outbound: "none",
      allowedNetworks: [],
      prestartPerVersion: 0,
      seccomp: true,
      maxOutputLineBytes: 16_384,
    });
    return { driver, release: () => mounts.close() };
  } catch (error) {
    await mounts.close();
    throw error;
  }
}

/** Bytes a command writes back: valid text and escapes, every kind of invalid UTF-8, noise. */
const commandBytes = Buffer.concat([
  Buffer.from('text, "quotes", \\ and \t control \u0001 characters, € 😀 \u2028\n'),
  Buffer.from([0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80, 0xff, 0x80, 0xe2, 0x82]),
  randomBytes(200_000),
  Buffer.from("😀".repeat(20_000)),
  Buffer.from([0xf0, 0x9f, 0x98]), // a character cut short for good by the end
]);

for (const driverUnderTest of driversUnderTest) {
  describe(
    `SandboxDriver contract: ${driverUnderTest.name}`,
    { skip: driverUnderTest.skip ?? false },
    () => {
      let root = "";
      let codeDir = "";
      let built: BuiltDriver | undefined;
      const live = new Set<Sandbox>();

      before(async () => {
        root = mkdtempSync(join(tmpdir(), "berth-sandbox-contract-"));
        // Sandbox users (bubblewrap) pass through to the code folder.
        chmodSync(root, 0o755);
        codeDir = join(root, "code");
        cpSync(agentSources.probe, codeDir, { recursive: true });
        writeFileSync(join(codeDir, "output.bin"), commandBytes, { mode: 0o644 });
        built = await driverUnderTest.create(root);
      });

      after(async () => {
        await Promise.all([...live].map((sandbox) => sandbox.kill()));
        await built?.driver.close();
        await built?.release();
        removeDir(root);
      });

      function requireDriver(): SandboxDriver {
        assert.ok(built !== undefined, "the driver is created in before()");
        return built.driver;
      }

      /** The probe's launch; onOutput gathers its lines. */
      function probeSpec(options: Partial<SandboxSpec> = {}): SandboxSpec {
        return {
          filesystem: { kind: "code", codeDir },
          command: ["node", "main.js"],
          environment: { PORT: "8080", GREETING: "hello from the spec" },
          agentPort: 8080,
          volumes: [],
          onOutput: () => undefined,
          ...options,
        };
      }

      async function startProbe(options: Partial<SandboxSpec> = {}): Promise<Sandbox> {
        const sandbox = await requireDriver().start(
          probeSpec(options),
          new AbortController().signal,
        );
        live.add(sandbox);
        void sandbox.exited.finally(() => live.delete(sandbox));
        return sandbox;
      }

      /**
       * Waits until the agent answers /ping, as a session does before it is running (and before
       * any command runs in it: bubblewrap's exec can fail just after start, "cannot change to /app").
       */
      function untilHealthy(sandbox: Sandbox): Promise<AgentHealth> {
        return waitFor("the probe to answer /ping", () =>
          pingAgent(sandbox.agentEndpoint, 2_000, 4_096).catch(() => undefined),
        );
      }

      it("starts the agent, which answers /ping at agentEndpoint, and reports it", async () => {
        assert.ok(requireDriver().describe().length > 0);
        const sandbox = await startProbe();
        assert.equal(await untilHealthy(sandbox), "Healthy");
        const usage = await sandbox.usage();
        assert.ok(usage.memoryBytes === undefined || usage.memoryBytes > 0);
        assert.ok(usage.processes === undefined || usage.processes > 0);
      });

      it("reports the CPU time the sandbox's processes used, growing as they work", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        const before = (await sandbox.usage()).cpuSeconds;
        assert.ok(before !== undefined && before > 0, `starting node took CPU: ${String(before)}`);
        // The agent starts a process that fills 200 MiB and waits for it.
        const hog = await invokeSandboxProbe(sandbox, { action: "hog", megabytes: 200 });
        assert.equal(hog["output"], "allocated");
        const after = (await sandbox.usage()).cpuSeconds ?? 0;
        assert.ok(after > before, `CPU time grew: ${String(before)} s, then ${String(after)} s`);
      });

      it("passes each line the agent writes on stdout to onOutput", async () => {
        const line = lineSeen("stdout", "probe: never listening");
        const sandbox = await startProbe({
          environment: { PORT: "8080", PROBE_START: "never" },
          onOutput: line.onOutput,
        });
        await line.seen;
        await sandbox.kill();
      });

      it("passes stderr lines to onOutput, and settles exited with the agent's exit", async () => {
        const line = lineSeen("stderr", "probe: crashing at startup as asked");
        const sandbox = await startProbe({
          environment: { PORT: "8080", PROBE_START: "crash" },
          onOutput: line.onOutput,
        });
        await line.seen;
        assert.deepEqual(await sandbox.exited, { code: 3, signal: null });
      });

      it("runs a command beside the agent: its working directory and environment", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        const agent = await invokeSandboxProbe(sandbox, { action: "whoami" });
        const env = agent["env"] as Record<string, string>;
        const finished = await runToEnd(
          await sandbox.exec(["/bin/sh", "-c", 'pwd; printf "%s\\n" "$GREETING" "$PORT"']),
        );
        assert.equal(
          finished.stdout.toString(),
          `${String(agent["cwd"])}\nhello from the spec\n${env["PORT"] ?? ""}\n`,
        );
        assert.deepEqual(finished.exit, { code: 0, signal: null });
      });

      it("gives back a command's output as the exact bytes written, invalid UTF-8 included", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        const finished = await runToEnd(
          await sandbox.exec(["/bin/sh", "-c", "cat output.bin; cat output.bin >&2"]),
        );
        assert.ok(finished.stdout.equals(commandBytes), "stdout is the bytes written");
        assert.ok(finished.stderr.equals(commandBytes), "stderr is the bytes written");
      });

      it("reports a command's exit code, or the signal that killed it", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        const exited = await runToEnd(await sandbox.exec(["/bin/sh", "-c", "exit 7"]));
        assert.deepEqual(exited.exit, { code: 7, signal: null });
        const killed = await runToEnd(await sandbox.exec(["/bin/sh", "-c", "kill -KILL $$"]));
        assert.deepEqual(killed.exit, { code: null, signal: "SIGKILL" });
      });

      it("terminate ends a command that ignores SIGTERM, and the processes it started", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        const command = await sandbox.exec([
          "/bin/sh",
          "-c",
          "trap '' TERM; sleep 600 & echo $!; wait",
        ]);
        const reader = new OutputReader(command);
        const sleeper = (await reader.untilStdout(/^(\d+)\n/))[1];
        await command.terminate(200);
        const finished = await reader.toEnd();
        assert.equal(finished.exit.code, null, "ended by a signal");
        // The sleeper as the agent sees it (same pid namespace): gone, or a zombie left for
        // init to reap; either way no longer running.
        const stat = await invokeSandboxProbe(sandbox, {
          action: "read",
          path: `/proc/${sleeper}/stat`,
        });
        const running = stat["ok"];
        if (running !== undefined) assert.match(running as string, /^\d+ \(sleep\) Z /);
      });

      it("kill ends the sandbox: exited settles and the agent answers no more", async () => {
        const sandbox = await startProbe();
        await untilHealthy(sandbox);
        await sandbox.kill();
        const exit = await sandbox.exited;
        assert.ok(exit.code !== 0 || exit.signal !== null, "not an ordinary exit");
        await assert.rejects(pingAgent(sandbox.agentEndpoint, 2_000, 4_096));
      });

      it("attaches a host-directory volume the agent writes in, and the host sees its files", async () => {
        assert.ok(requireDriver().volumeKinds.includes("host-directory"));
        const volume = mkdtempSync(join(root, "volume-"));
        driverUnderTest.prepareVolume(volume);
        const sandbox = await startProbe({
          volumes: [
            {
              mountPath: "/mnt/workspace",
              volume: { kind: "host-directory", volumeId: "contract-volume", path: volume },
            },
          ],
        });
        await untilHealthy(sandbox);
        const written = await invokeSandboxProbe(sandbox, {
          action: "write",
          path: "/mnt/workspace/note.txt",
          content: "written by the agent",
        });
        assert.deepEqual(written, {});
        await sandbox.kill();
        assert.equal(readFileSync(join(volume, "note.txt"), "utf8"), "written by the agent");
      });

      it("refuses to start once aborted, and an abort during start leaves nothing running", async () => {
        const reason = new Error("the session was stopped");
        await assert.rejects(
          requireDriver().start(probeSpec(), AbortSignal.abort(reason)),
          (error) => error === reason,
        );
        const controller = new AbortController();
        const starting = requireDriver().start(probeSpec(), controller.signal);
        controller.abort(reason);
        const outcome = await starting.catch((error: unknown) => error);
        if (outcome === reason) return;
        // A driver may finish starting: the caller then kills what it got.
        assert.ok(typeof outcome === "object" && outcome !== null && "kill" in outcome);
        const sandbox = outcome as Sandbox;
        await sandbox.kill();
        await sandbox.exited;
      });
    },
  );
}

/** onOutput that resolves `seen` when the line arrives on the stream. */
function lineSeen(
  stream: "stdout" | "stderr",
  expected: string,
): { onOutput: SandboxSpec["onOutput"]; seen: Promise<void> } {
  let resolveSeen = (): void => undefined;
  const seen = new Promise<void>((resolve) => {
    resolveSeen = resolve;
  });
  return {
    onOutput: (from, line) => {
      if (from === stream && line === expected) resolveSeen();
    },
    seen,
  };
}

interface FinishedCommand {
  stdout: Buffer;
  stderr: Buffer;
  exit: SandboxExit;
}

/**
 * Reads a command's output as the core does (CommandOutputEncoder: bytes encoded, a driver's
 * output text passed through), decoded back to the bytes the program wrote.
 */
class OutputReader {
  private readonly command: SandboxCommand;
  private readonly encoder = new CommandOutputEncoder();
  private readonly texts = { stdout: [] as Buffer[], stderr: [] as Buffer[] };
  private readonly iterator: AsyncIterator<unknown>;

  constructor(command: SandboxCommand) {
    this.command = command;
    this.iterator = command.output[Symbol.asyncIterator]();
  }

  /** Reads until stdout so far matches `pattern`. */
  async untilStdout(pattern: RegExp): Promise<RegExpExecArray> {
    for (;;) {
      const match = pattern.exec(this.bytes("stdout").toString("utf8"));
      if (match !== null) return match;
      assert.ok(await this.readOne(), `the output ended before matching ${String(pattern)}`);
    }
  }

  async toEnd(): Promise<FinishedCommand> {
    while (await this.readOne());
    for (const { stream, text } of this.encoder.end()) this.texts[stream].push(...text);
    return {
      stdout: this.bytes("stdout"),
      stderr: this.bytes("stderr"),
      exit: await this.command.exited,
    };
  }

  private async readOne(): Promise<boolean> {
    const next = await this.iterator.next();
    if (next.done === true) return false;
    const piece = next.value as Parameters<CommandOutputEncoder["textOf"]>[0];
    this.texts[piece.stream].push(...this.encoder.textOf(piece));
    return true;
  }

  private bytes(stream: "stdout" | "stderr"): Buffer {
    const text = Buffer.concat(this.texts[stream]).toString("utf8");
    return outputTextToBytes(JSON.parse(`"${text}"`) as string);
  }
}

function runToEnd(command: SandboxCommand): Promise<FinishedCommand> {
  return new OutputReader(command).toEnd();
}
