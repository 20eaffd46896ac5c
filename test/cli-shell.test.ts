import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { after, before, beforeEach, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { WebSocket, type RawData } from "ws";
import {
  decodeFrame,
  encodeFrame,
  parseStatus,
  shellChannels,
  shellProtocol,
  type ShellStatus,
} from "../src/core/shell-channels.ts";
import { agentSources, installAgent } from "./support/agents.ts";
import { berthBin } from "./support/berth-process.ts";
import { hostSuite, removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { cliEnv, Tmux } from "./support/tmux.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));

/**
 * `berth shell` as a person uses it: in a real terminal (a tmux pane), typing, reading the screen,
 * resizing the window, against a real Berth whose shells run in real sandboxes.
 */
describe("berth shell in a terminal (a host suite: real sandboxes, as root)", hostSuite, () => {
  let berth: TestBerth;
  let runtimeName = "";
  let tmux: Tmux;

  before(async () => {
    berth = await startTestBerth();
    installAgent(berth.dataDir, agentSources.probe, "probe");
    const runtime = await createRuntime(berth, "probe");
    runtimeName = runtime.id.replace(/-[a-zA-Z0-9]{10}$/, "");
    cliEnvironment = cliEnv(berth);
    tmux = new Tmux(cliEnvironment);
  });
  after(async () => {
    tmux.close();
    await berth.close();
    removeDir(berth.dataDir);
  });
  // Each test reads a screen of its own: nothing an earlier test printed can match.
  beforeEach(() => {
    tmux.freshWindow();
  });

  it("opens a shell at the window's size, follows resizes, passes Ctrl-C and the exit code, and restores the terminal", async () => {
    const session = newSessionId("tty");
    tmux.type(`${berthCommand("shell", runtimeName, "--session", session)}; echo CLI-EXIT:$?`);
    await tmux.run("echo READY-$((20+1))", /^READY-21$/m);
    assert.match(await tmux.run("echo SIZE:$(stty size)", /^SIZE:.*$/m), /^SIZE:30 100$/);
    tmux.resize(120, 40);
    await tmux.until("the shell sees the new size", async () => {
      const shown = await tmux.run("echo SIZE:$(stty size)", /^SIZE:.*$/m);
      return shown === "SIZE:40 120";
    });
    await tmux.run("echo SLEEPING; sleep 300", /^SLEEPING$/m);
    tmux.keys("C-c");
    assert.equal(await tmux.run("echo STATUS:$?", /^STATUS:\d+$/m), "STATUS:130");
    tmux.type("exit 7");
    await tmux.screenMatches(/^CLI-EXIT:7$/m);
    assert.equal(await tmux.run(modeCommand, /^MODE:.*$/m), "MODE:echo,icanon,");
  });

  it("restores the terminal and exits 128+N when a signal ends the CLI", async () => {
    const session = newSessionId("sig");
    tmux.type(`${berthCommand("shell", runtimeName, "--session", session)}; echo CLI-EXIT:$?`);
    await tmux.run("echo READY-$((30+2))", /^READY-32$/m);
    const cli = tmux.foregroundChild();
    process.kill(cli, "SIGTERM");
    // Not at a line's start: the shell, hung up at its prompt, left the cursor after it.
    await tmux.screenMatches(/CLI-EXIT:143$/m);
    assert.equal(await tmux.run(modeCommand, /^MODE:.*$/m), "MODE:echo,icanon,");
  });

  it("runs `berth exec -it`'s command in the shell and exits with its code", async () => {
    const session = newSessionId("exec");
    tmux.type(
      `${berthCommand("exec", "-it", runtimeName, "--session", session, "--")} 'echo EXEC-$((6*7)); exit 5'; echo CLI-EXIT:$?`,
    );
    await tmux.screenMatches(/^CLI-EXIT:5$/m);
    assert.match(tmux.screen(), /^EXEC-42\s*$/m);
  });

  it("takes piped input and ends the shell at its end (Ctrl-D)", async () => {
    const session = newSessionId("pipe");
    const run = await runCli(["shell", runtimeName, "--session", session], "echo PIPED-$((2+3))\n");
    assert.equal(run.code, 0, run.stderr);
    assert.match(run.stdout, /^PIPED-5\r?$/m);
  });

  it("prints a presigned URL a plain WebSocket client (no headers, no signing) opens a shell with", async () => {
    const session = newSessionId("url");
    const printed = await runCli(
      ["shell", runtimeName, "--session", session, "--print-url", "--expires", "60"],
      "",
    );
    assert.equal(printed.code, 0, printed.stderr);
    const url = printed.stdout.trim();
    assert.match(url, /^ws:\/\/127\.0\.0\.1:\d+\/runtimes\/arn%3Aaws%3A.*\/ws\/shells\?/);
    const socket = new WebSocket(url, [shellProtocol]);
    const statuses: ShellStatus[] = [];
    let output = "";
    socket.on("message", (data: RawData) => {
      const frame = decodeFrame(data as Buffer);
      if (frame?.channel === shellChannels.stdout) output += frame.payload.toString("utf8");
      if (frame?.channel === shellChannels.status) {
        const status = parseStatus(frame.payload);
        if (status !== undefined) statuses.push(status);
      }
    });
    await once(socket, "open");
    socket.send(encodeFrame(shellChannels.stdin, Buffer.from("echo URL-$((1+2)); exit 3\r")));
    await once(socket, "close");
    assert.equal(statuses[0]?.status, "Running");
    assert.equal(statuses[0].runtimeSessionId, session, "the URL's session");
    assert.equal(statuses.at(-1)?.exitCode, 3);
    assert.match(output, /URL-3/);
  });
});

/** `stty -a`'s echo and icanon flags, sorted: "echo,icanon," in a terminal left as it was. */
const modeCommand =
  "echo MODE:$(stty -a | tr -s ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo | sort | tr '\\n' ,)";

function berthCommand(...args: string[]): string {
  return [process.execPath, berthBin, ...args].join(" ");
}

let cliEnvironment: NodeJS.ProcessEnv = {};

/** Runs `berth ARGS` with piped stdio (no terminal). */
async function runCli(
  args: string[],
  stdin: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [berthBin, ...args], {
    cwd: repositoryRoot,
    env: cliEnvironment,
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  child.stdin.end(stdin);
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}
