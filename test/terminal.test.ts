// Terminals inside bubblewrap sandboxes (Sandbox.openTerminal): a pseudo-terminal made inside the
// sandbox by native/berth-exec, driven here through the real driver, with a real bash, stty,
// python3 and cat on it, as a person at a terminal (or a program hostile to Berth) would.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { chmodSync, cpSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { finished } from "node:stream/promises";
import { after, before, describe, it } from "node:test";
import { BubblewrapDriver } from "../src/adapters/bubblewrap/driver.ts";
import { nativeBinary } from "../src/adapters/host/native-binaries.ts";
import { RootMounts } from "../src/adapters/host/root-mounts.ts";
import type { Sandbox, SandboxTerminal, TerminalOptions } from "../src/core/sandbox.ts";
import { binaryForSandboxes } from "../src/main/sandbox-host.ts";
import { pingAgent } from "../src/wire/agent-client.ts";
import { agentSources, waitFor } from "./support/agents.ts";
import { hostSuite, removeDir } from "./support/berth.ts";
import { invokeSandboxProbe } from "./support/sandbox-probe.ts";

/** Longest any one expected piece of output may take to show. */
const outputTimeoutMs = 20_000;

/**
 * What a terminal has shown so far, as text (latin1: one character per byte), and waits for
 * patterns in it. Each wait looks only past what earlier waits matched, so a pattern is never
 * satisfied by old output.
 */
class Screen {
  text = "";
  private consumed = 0;
  private readonly waiters = new Set<() => void>();

  constructor(terminal: SandboxTerminal) {
    terminal.output.on("data", (chunk: Buffer) => {
      this.text += chunk.toString("latin1");
      for (const waiter of this.waiters) waiter();
    });
  }

  /** Resolves with the first match of `pattern` in output not yet matched. */
  waitFor(pattern: RegExp): Promise<RegExpExecArray> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const match = pattern.exec(this.text.slice(this.consumed));
        if (match === null) return;
        this.consumed += match.index + match[0].length;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(match);
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        const tail = JSON.stringify(this.text.slice(-400));
        reject(new Error(`no ${String(pattern)} on the terminal; it ends with ${tail}`));
      }, outputTimeoutMs);
      this.waiters.add(check);
      check();
    });
  }
}

/** An interactive bash without start-up files, so that only what a test types runs. */
const bash = ["/bin/bash", "--noprofile", "--norc", "-i"];
const plainTerminal: TerminalOptions = {
  columns: 100,
  rows: 30,
  environment: { TERM: "dumb", PS1: "$ " },
};

describe("terminals in bubblewrap sandboxes", hostSuite, () => {
  let root = "";
  let mounts: RootMounts | undefined;
  let driver: BubblewrapDriver | undefined;
  let sandbox: Sandbox | undefined;
  const terminals = new Set<SandboxTerminal>();

  before(async () => {
    root = mkdtempSync(join(tmpdir(), "berth-terminal-"));
    chmodSync(root, 0o755); // sandbox users pass through to the code folder
    const codeDir = join(root, "code");
    cpSync(agentSources.probe, codeDir, { recursive: true });
    mounts = await RootMounts.start(join(root, "mount-helper.sock"), root);
    const slot = (process.pid * 16 + 15) % 60_000;
    driver = await BubblewrapDriver.create({
      runRoot: join(root, "sessions"),
      uidBase: 3_000_000 + slot * 64,
      maxSandboxes: 2,
      limits: { memoryBytes: 2 ** 30, pids: 256, cpus: 1 },
      totalLimits: { memoryBytes: 2 * 2 ** 30, pids: 1024 },
      interpreters: { node: binaryForSandboxes(process.execPath, join(root, "interpreters")) },
      bridge: nativeBinary("berth-bridge"),
      mounts,
      cgroupParent: `berth-test-${process.pid}-terminal`,
      outbound: "none",
      allowedNetworks: [],
      prestartPerVersion: 0,
      seccomp: true,
      maxOutputLineBytes: 16_384,
    });
    sandbox = await driver.start(
      {
        filesystem: { kind: "code", codeDir },
        command: ["node", "main.js"],
        environment: { PORT: "8080" },
        agentPort: 8080,
        volumes: [],
        onOutput: () => undefined,
      },
      new AbortController().signal,
    );
    const running = sandbox;
    // Commands can fail just after the start ("cannot change to /app"): wait as a session does.
    await waitFor("the probe to answer /ping", () =>
      pingAgent(running.agentEndpoint, 2_000, 4_096).catch(() => undefined),
    );
  });

  after(async () => {
    await Promise.all([...terminals].map((terminal) => terminal.terminate(0)));
    await sandbox?.kill();
    await driver?.close();
    await mounts?.close();
    removeDir(root);
  });

  function requireSandbox(): Sandbox {
    assert.ok(sandbox !== undefined, "the sandbox is started in before()");
    return sandbox;
  }

  /** A terminal, its output not read yet. */
  async function startTerminal(argv = bash, options = plainTerminal): Promise<SandboxTerminal> {
    const terminal = await requireSandbox().openTerminal(argv, options);
    terminals.add(terminal);
    void terminal.exited.finally(() => terminals.delete(terminal));
    return terminal;
  }

  /** A terminal whose output a Screen reads as it comes. */
  async function openTerminal(
    argv = bash,
    options = plainTerminal,
  ): Promise<{ terminal: SandboxTerminal; screen: Screen; type: (text: string) => Promise<void> }> {
    const terminal = await startTerminal(argv, options);
    const screen = new Screen(terminal);
    return { terminal, screen, type: (text) => terminal.write(Buffer.from(text)) };
  }

  it("starts with the requested window size; a resize changes it and sends SIGWINCH", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(`trap 'echo "winch:$(stty size)"' WINCH; echo "size:$(stty size)"\n`);
    await screen.waitFor(/size:30 100/);
    terminal.resize(120, 40);
    await type(`echo "size:$(stty size)"\n`);
    await screen.waitFor(/size:40 120/);
    // bash runs the trap at once if the signal finds it waiting for input, else when it has
    // read the next line: by the end of the command after, either way.
    await type(`echo "next:$((1+1))"\n`);
    await screen.waitFor(/next:2/);
    assert.match(screen.text, /winch:40 120/);
    await type("exit\n");
    assert.deepEqual(await terminal.exited, { code: 0, signal: null });
  });

  it("is the shell's controlling terminal, a /dev/pts of the sandbox's own", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(`echo "tty:$(tty)"; test -t 0 && test -t 1 && echo "terminal:$((6*7))"\n`);
    await screen.waitFor(/tty:\/dev\/pts\/\d+\r\n/);
    await screen.waitFor(/terminal:42/);
    // Job control needs the terminal to be the controlling one: /dev/tty opens only then.
    await type(
      `echo "controlling:$(cat /proc/$$/stat | cut -d' ' -f7)"; : < /dev/tty && echo "dev-tty:ok"\n`,
    );
    const [, device] = await screen.waitFor(/controlling:(\d+)/);
    assert.notEqual(device, "0", "the shell has a controlling terminal");
    await screen.waitFor(/dev-tty:ok/);
    await type("exit\n");
    await terminal.exited;
  });

  it("runs as the agent's user and sees the files the agent wrote", async () => {
    const running = requireSandbox();
    const agent = await invokeSandboxProbe(running, { action: "whoami" });
    await invokeSandboxProbe(running, {
      action: "write",
      path: "/tmp/from-the-agent",
      content: "written by the agent",
    });
    const { terminal, screen, type } = await openTerminal();
    await type(`echo "uid:$(id -u)"; echo "read:$(cat /tmp/from-the-agent)"\n`);
    const [, uid] = await screen.waitFor(/uid:(\d+)/);
    assert.equal(Number(uid), agent.uid);
    await screen.waitFor(/read:written by the agent/);
    // The sandbox's environment (HOME, the spec's PORT), with the terminal's own (TERM) on top.
    await type(`echo "env:$TERM:$HOME:$PORT"\n`);
    await screen.waitFor(/env:dumb:\/home\/agent:8080/);
    await type("exit\n");
    await terminal.exited;
  });

  it("gives a line typed at the terminal to a program reading it", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(`echo "ready:$((1+1))"; read X; echo "got:$X"\n`);
    await screen.waitFor(/ready:2/);
    await type("hello terminal\n");
    await screen.waitFor(/got:hello terminal/);
    await type("exit\n");
    await terminal.exited;
  });

  it("runs the python3 REPL", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type("python3 -q\n");
    await screen.waitFor(/>>> /);
    await type("print(6*7)\n");
    await screen.waitFor(/\r\n42\r\n/);
    await type("exit()\n");
    await type(`echo "back:$((40+2))"\n`);
    await screen.waitFor(/back:42/);
    await type("exit\n");
    await terminal.exited;
  });

  it("ends the foreground job on Ctrl-C, and the shell goes on", async () => {
    const { terminal, screen, type } = await openTerminal();
    // The job says when it runs, from the very process that becomes the sleep.
    await type(`sh -c 'echo "foreground:$((1+1))"; exec sleep 1000'\n`);
    await screen.waitFor(/foreground:2/);
    await type("\x03");
    await type(`echo "status:$?"\n`);
    await screen.waitFor(/status:130/);
    await type(`echo "still-here:$((2+2))"\n`);
    await screen.waitFor(/still-here:4/);
    await type("exit\n");
    await terminal.exited;
  });

  it("passes the program's exit status back, after everything it wrote", async () => {
    const { terminal, type } = await openTerminal();
    await type("exit 3\n");
    assert.deepEqual(await terminal.exited, { code: 3, signal: null });
    // A program that writes up to its exit: all of it is read before exited settles.
    const counting = await openTerminal(["/bin/sh", "-c", "seq 1 20000; exit 4"]);
    assert.deepEqual(await counting.terminal.exited, { code: 4, signal: null });
    await finished(counting.terminal.output);
    assert.match(counting.screen.text, /\r\n19999\r\n20000\r\n$/);
    assert.equal(counting.screen.text.split("\r\n").length, 20001);
  });

  it("takes 1 MiB typed into `cat > file` whole, the typing held while cat is behind", async () => {
    const { terminal, screen, type } = await openTerminal();
    // Lines shorter than the terminal's line buffer (4 KiB), as a person types them.
    const typed = Buffer.from(
      (
        randomBytes(768 * 1024)
          .toString("base64")
          .match(/.{1,64}/g) ?? []
      ).join("\n") + "\n",
    );
    assert.ok(typed.length > 2 ** 20);
    await type(`stty -echo; echo "typing:$((1+2))"; cat > /tmp/typed\n`);
    await screen.waitFor(/typing:3/);
    await terminal.write(typed);
    await type("\x04");
    await type(`stty echo; echo "typed:$(wc -c < /tmp/typed) $(sha256sum < /tmp/typed)"\n`);
    const [, size, digest] = await screen.waitFor(/typed:(\d+) ([0-9a-f]{64})/);
    assert.equal(Number(size), typed.length);
    assert.equal(digest, createHash("sha256").update(typed).digest("hex"));
    await type("exit\n");
    await terminal.exited;
  });

  it("holds typing back while the program does not read, then takes all of it", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(
      `stty -echo; sh -c 'echo "holding:$$"; exec sleep 1000'; echo "count:$(wc -c)"; stty echo; echo "drained:$((2+2))"\n`,
    );
    const [, sleeper] = await screen.waitFor(/holding:(\d+)/);
    const typed = Buffer.from(`${"x".repeat(63)}\n`.repeat(64 * 1024)); // 4 MiB
    let taken = false;
    const typing = terminal.write(Buffer.concat([typed, Buffer.from("\x04")])).then(() => {
      taken = true;
    });
    // Far more than the terminal, berth-exec and the socket between hold: while the sleeper
    // reads nothing, the write cannot be taken whole (looked at once a command beside it ran).
    assert.equal(await exitCodeOf(`kill -0 ${sleeper}`), 0, "the sleeper is there");
    assert.equal(taken, false, "4 MiB of typing is held while nothing reads it");
    assert.equal(await exitCodeOf(`kill ${sleeper}`), 0);
    await typing;
    const [, count] = await screen.waitFor(/count:(\d+)/);
    assert.equal(Number(count), typed.length);
    await screen.waitFor(/drained:4/);
    await type("exit\n");
    await terminal.exited;
  });

  it("holds a flood of output at the terminal while it is read slowly, not in Berth", async () => {
    const terminal = await startTerminal();
    const output = terminal.output;
    const startBytes = process.memoryUsage().arrayBuffers;
    let largestBuffered = 0;
    let largestGrowth = 0;
    let received = 0;
    let nextStall = 0;
    let tail = "";
    await terminal.write(Buffer.from(`head -c 64M /dev/zero | base64; echo "flood:$((6*7))"\n`));
    while (!/flood:42/.test(tail)) {
      if (received >= nextStall) {
        // Every 4 MiB the reader stops for as long as a command beside the terminal takes, and
        // looks at what came in meanwhile: a reader that does not read must hold the flood back.
        nextStall += 4 * 2 ** 20;
        await exitCodeOf("true");
        largestBuffered = Math.max(largestBuffered, output.readableLength);
      }
      const chunk = output.read() as Buffer | null;
      if (chunk === null) {
        await once(output, "readable");
        continue;
      }
      received += chunk.length;
      tail = (tail + chunk.toString("latin1")).slice(-64);
      largestGrowth = Math.max(largestGrowth, process.memoryUsage().arrayBuffers - startBytes);
    }
    assert.ok(received > 64 * 2 ** 20, `the whole flood arrived (${received} bytes)`);
    // At most the stream's high-water mark, and the frames of the socket reads that reached it.
    const bound = output.readableHighWaterMark + 128 * 1024;
    assert.ok(largestBuffered <= bound, `at most ${bound} bytes buffered (${largestBuffered})`);
    assert.ok(
      largestGrowth < 32 * 2 ** 20,
      `Berth's buffers grew by less than 32 MiB for ${received} bytes (${largestGrowth})`,
    );
    await terminal.write(Buffer.from("exit\n"));
    output.resume();
    await terminal.exited;
  });

  it("terminate() ends the shell and the background jobs it left", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(`sleep 1000 & echo "job:$!"\n`);
    const [, job] = await screen.waitFor(/job:(\d+)/);
    assert.equal(await exitCodeOf(`kill -0 ${job}`), 0, "the job runs");
    await terminal.terminate(300);
    const exit = await terminal.exited;
    assert.ok(exit.signal !== null, `the shell was signalled (${JSON.stringify(exit)})`);
    assert.equal(await exitCodeOf(`kill -0 ${job} 2>/dev/null`), 1, "the job is gone");
  });

  it("hangUp() ends an interactive shell (which ignores SIGTERM) by SIGHUP, as a closed window does", async () => {
    const { terminal, screen, type } = await openTerminal();
    await type(`echo "shell:$$"\n`);
    const [, shell] = await screen.waitFor(/shell:(\d+)/);
    terminal.hangUp();
    assert.equal((await terminal.exited).signal, "SIGHUP");
    // Gone by the SIGHUP itself: no grace to wait out, nothing left for terminate().
    await waitFor("the shell to be gone", async () =>
      (await exitCodeOf(`kill -0 ${shell} 2>/dev/null`)) === 1 ? true : undefined,
    );
  });

  it("as an attacker in the sandbox: the shell holds no terminal master and no socket to Berth", async () => {
    const { terminal, screen, type } = await openTerminal();
    // Listed to a file by ls, a child: the shell itself opens nothing to do it.
    await type(
      `ls -l /proc/$$/fd/ > /tmp/shell-fds; sed -n 's/.* -> /fd:/p' /tmp/shell-fds; echo "shell-fds:$((1+1))"\n`,
    );
    await screen.waitFor(/shell-fds:2/);
    // Lines sed printed, not the echo of the command typed.
    const targets = [...screen.text.matchAll(/\r\nfd:([^\r\n]*)/g)].map((match) => match[1]);
    assert.ok(targets.length >= 3, `stdin, stdout and stderr at least: ${targets.join(", ")}`);
    for (const target of targets) assert.match(target ?? "", /^\/dev\/pts\/\d+$/);
    // No process of the sandbox (the agent, the shell, what it runs) holds a terminal's master.
    await type(
      `for f in /proc/[0-9]*/fd/*; do readlink $f; done 2>/dev/null | grep -c ptmx; echo "masters:$((1+2))"\n`,
    );
    await screen.waitFor(/\r\n0\r\n.*masters:3/s);
    // And what runs on the terminal is under Berth's seccomp filter: no new namespaces.
    await type(`unshare --user true 2>/dev/null; echo "unshare:$?"\n`);
    const [, unshareStatus] = await screen.waitFor(/unshare:(\d+)/);
    assert.notEqual(unshareStatus, "0");
    await type("exit\n");
    await terminal.exited;
  });

  it("refuses a window size the kernel cannot hold, and a program that cannot run", async () => {
    const running = requireSandbox();
    await assert.rejects(running.openTerminal(bash, { ...plainTerminal, columns: 0 }), RangeError);
    await assert.rejects(
      running.openTerminal(bash, { ...plainTerminal, rows: 65_536 }),
      RangeError,
    );
    await assert.rejects(
      running.openTerminal(["/no/such/shell"], plainTerminal),
      /cannot run \/no\/such\/shell: No such file or directory/,
    );
  });

  /** The exit code of a command run beside the terminal (sandbox.exec), output ignored. */
  async function exitCodeOf(script: string): Promise<number | null> {
    const command = await requireSandbox().exec(["/bin/sh", "-c", script]);
    command.output.resume();
    return (await command.exited).code;
  }
});
