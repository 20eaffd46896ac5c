import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { hostname } from "node:os";
import { after, before, beforeEach, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { agentSources, installAgent } from "./support/agents.ts";
import { berthBin } from "./support/berth-process.ts";
import { hostSuite, removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId, workspace } from "./support/runtimes.ts";
import { cliEnv, Tmux } from "./support/tmux.ts";

const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));

/** `berth top` against a real Berth whose sessions run in real sandboxes. */
describe("berth top (a host suite: real sandboxes, as root)", hostSuite, () => {
  let berth: TestBerth;
  let runtime = { id: "", arn: "" };
  let runtimeName = "";
  const busySession = newSessionId("top-busy");
  const quietSession = newSessionId("top-quiet");
  let tmux: Tmux;

  before(async () => {
    berth = await startTestBerth();
    installAgent(berth.dataDir, agentSources.probe, "probe");
    runtime = await createRuntime(berth, "probe", workspace);
    runtimeName = runtime.id.replace(/-[a-zA-Z0-9]{10}$/, "");
    await invokeProbe(berth.data, runtime.arn, quietSession, { action: "whoami" });
    // Keeps one CPU busy for a minute in the background, beside the agent; it ends with the session.
    const started = await runCommand(
      berth.data,
      runtime.arn,
      busySession,
      "node -e 'const end = Date.now() + 60000; while (Date.now() < end);' > /dev/null 2>&1 & echo started",
    );
    assert.equal(started.stdout, "started\n");
    cliEnvironment = cliEnv(berth);
    tmux = new Tmux(cliEnvironment);
  });
  after(async () => {
    tmux.close();
    await berth.close();
    removeDir(berth.dataDir);
  });
  beforeEach(() => {
    tmux.freshWindow();
  });

  it("--once --json: every session with its node, CPU % from two samples, memory, storage, age and idle time", async () => {
    const { code, stdout, stderr } = await runCli(["top", "--once", "--json", "--interval", "1"]);
    assert.equal(code, 0, stderr);
    const { sessions } = JSON.parse(stdout) as { sessions: Record<string, unknown>[] };
    assert.deepEqual(
      sessions.map((session) => session["session"]),
      [busySession, quietSession],
      "the busiest first",
    );
    const [busy, quiet] = sessions;
    assert.ok(busy !== undefined && quiet !== undefined);
    // One CPU spinning: near 100 % (the sandbox may use up to sessionCpus, 2).
    assert.ok(Number(busy["cpuPercent"]) > 50, `busy: ${String(busy["cpuPercent"])} %`);
    assert.ok(Number(quiet["cpuPercent"]) < 20, `quiet: ${String(quiet["cpuPercent"])} %`);
    for (const session of sessions) {
      assert.equal(session["runtime"], runtime.id.replace(/-[a-zA-Z0-9]{10}$/, ""));
      assert.equal(session["node"], berth.settings.nodeName || hostname());
      assert.equal(session["state"], "running");
      assert.ok(Number(session["memoryBytes"]) > 1_000_000);
      assert.ok(Number(session["storageUsedBytes"]) > 0, "the workspace volume's used bytes");
      assert.ok(Number(session["ageSeconds"]) > 0);
      assert.equal(typeof session["idleSeconds"], "number");
    }
  });

  it("--once prints one table of a runtime's sessions and exits", async () => {
    const { code, stdout, stderr } = await runCli([
      "top",
      runtimeName,
      "--once",
      "--interval",
      "0.5",
    ]);
    assert.equal(code, 0, stderr);
    const lines = stdout.trimEnd().split("\n");
    assert.match(
      lines[0] ?? "",
      /^RUNTIME +SESSION +NODE +STATE +CPU% +MEMORY +STORAGE +AGE +IDLE$/,
    );
    assert.equal(lines.length, 3);
    assert.match(
      lines[1] ?? "",
      new RegExp(`^${runtimeName} +${busySession} .* running +\\d+\\.\\d +[\\d.]+ MiB`),
    );
    assert.match(lines[2] ?? "", new RegExp(`^${runtimeName} +${quietSession} `));
  });

  it("refuses a runtime that does not exist, and the live view without a terminal", async () => {
    const absent = await runCli(["top", "no_such_runtime", "--once"]);
    assert.equal(absent.code, 1);
    assert.match(absent.stderr, /No agent runtime named or with id "no_such_runtime"/);
    const piped = await runCli(["top"]);
    assert.equal(piped.code, 2);
    assert.match(piped.stderr, /the live view needs a terminal; use --once/);
  });

  it("redraws in place on the alternate screen and gives the terminal back on q and on Ctrl-C", async () => {
    tmux.type("echo BEFORE-TOP");
    tmux.type(`${berthCommand("top", "--interval", "0.3")}; echo TOP-EXIT:$?`);
    await tmux.screenMatches(/^berth top — .* 2 sessions on 1 node/m);
    // The session ids are cut to fit, their start kept.
    await tmux.screenMatches(new RegExp(`^${runtimeName} +${busySession.slice(0, 12)}`, "m"));
    // Redrawn, not scrolled: one header on the screen however many refreshes went by.
    const firstClock = /— (\d+:\d+:\d+.*)$/m.exec(tmux.screen())?.[1];
    await tmux.until("a refresh", () =>
      Promise.resolve(/— (\d+:\d+:\d+.*)$/m.exec(tmux.screen())?.[1] !== firstClock),
    );
    assert.equal(tmux.screen().match(/^berth top — /gm)?.length, 1);
    tmux.keys("q");
    await tmux.screenMatches(/^TOP-EXIT:0$/m);
    // The shell's screen is back as it was, with no table left on it.
    assert.match(tmux.screen(), /^BEFORE-TOP$/m);
    assert.doesNotMatch(tmux.screen(), /^berth top — /m);

    tmux.type(`${berthCommand("top", runtimeName)}; echo TOP-EXIT:$?`);
    await tmux.screenMatches(/^berth top — .* 2 sessions/m);
    tmux.keys("C-c");
    await tmux.screenMatches(/^TOP-EXIT:0$/m);
    assert.equal(await tmux.run(modeCommand, /^MODE:.*$/m), "MODE:echo,icanon,");
  });
});

const modeCommand =
  "echo MODE:$(stty -a | tr -s ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo | sort | tr '\\n' ,)";

function berthCommand(...args: string[]): string {
  return [process.execPath, berthBin, ...args].join(" ");
}

let cliEnvironment: NodeJS.ProcessEnv = {};

/** Runs `berth ARGS` with piped stdio (no terminal). */
async function runCli(
  args: string[],
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
  child.stdin.end();
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}
