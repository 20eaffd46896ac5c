import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { after, before, beforeEach, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { shortSession } from "../src/cli/logs.ts";
import { installAgent } from "./support/agents.ts";
import { berthBin } from "./support/berth-process.ts";
import { removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { cliEnv, Tmux } from "./support/tmux.ts";

const tmuxMissing = (() => {
  try {
    execFileSync("tmux", ["-V"]);
    return false;
  } catch {
    return "needs tmux";
  }
})();

/**
 * `berth logs` as a person uses it: in a real terminal (a tmux pane), against a real Berth whose
 * sessions run test/agents/printer, the screen read back as the agent prints.
 */
describe("berth logs in a terminal", { skip: tmuxMissing }, () => {
  let berth: TestBerth;
  let runtime: { id: string; arn: string };
  let tmux: Tmux;

  before(async () => {
    berth = await startTestBerth();
    installAgent(
      berth.dataDir,
      fileURLToPath(new URL("agents/printer", import.meta.url)),
      "printer",
    );
    runtime = await createRuntime(berth, "printer");
    tmux = new Tmux(cliEnv(berth));
  });
  after(async () => {
    tmux.close();
    await berth.close();
    removeDir(berth.dataDir);
  });
  beforeEach(() => {
    tmux.freshWindow();
  });

  const print = (sessionId: string, lines: { stdout?: string[]; stderr?: string[] }) =>
    berth.data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: runtime.arn,
        runtimeSessionId: sessionId,
        payload: Buffer.from(JSON.stringify({ action: "print", ...lines })),
      }),
    );
  const logs = (...args: string[]) =>
    [process.execPath, berthBin, "logs", runtime.id, ...args].join(" ");

  it("--follow shows each line as the agent prints it, and exits when the session ends", async () => {
    const session = newSessionId("follow");
    await print(session, { stdout: ["FIRST-LINE"] });
    tmux.type(`${logs("--session", session, "--follow")}; echo CLI-EXIT:$?`);
    await tmux.screenMatches(/^FIRST-LINE$/m);
    await print(session, { stdout: ["PRINTED-WHILE-FOLLOWING"] });
    await tmux.screenMatches(/^PRINTED-WHILE-FOLLOWING$/m);
    await print(session, { stderr: ["AN-ERROR-LINE"] });
    await tmux.screenMatches(/^AN-ERROR-LINE$/m);
    assert.doesNotMatch(tmux.screen(), /^CLI-EXIT:\d+$/m, "still following");
    await berth.data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
    );
    await tmux.screenMatches(/^\[berth\] session ended: stopped by StopRuntimeSession$/m);
    await tmux.screenMatches(/^CLI-EXIT:0$/m);
  });

  it("follows every session of the runtime, each line with its session, until Ctrl-C", async () => {
    const first = newSessionId("live-one");
    const second = newSessionId("live-two");
    await print(first, { stdout: ["EARLIER-LINE"] });
    tmux.type(logs("--follow"));
    await tmux.screenMatches(/EARLIER-LINE$/m);
    await print(second, { stdout: ["NEW-SESSION-LINE"] });
    await print(first, { stdout: ["OLD-SESSION-LINE"] });
    const screen = await tmux.screenMatches(/OLD-SESSION-LINE$/m).then(() => tmux.screen());
    assert.ok(screen.includes(`${shortSession(second)} | NEW-SESSION-LINE`), screen);
    assert.ok(screen.includes(`${shortSession(first)} | OLD-SESSION-LINE`), screen);
    tmux.keys("C-c");
    // Ended by the signal, as a program following output is: bash says 128 + SIGINT.
    assert.equal(await tmux.run("echo STATUS:$?", /^STATUS:\d+$/m), "STATUS:130");
  });

  it("shows every session's lines, each with its session, when no session is named", async () => {
    const first = newSessionId("one");
    const second = newSessionId("two");
    await print(first, { stdout: ["FROM-ONE"] });
    await print(second, { stdout: ["FROM-TWO"] });
    tmux.type(`${logs()}; echo CLI-EXIT:$?`);
    await tmux.screenMatches(/^CLI-EXIT:0$/m);
    const screen = tmux.screen();
    assert.ok(screen.includes(`${shortSession(first)} | FROM-ONE`), screen);
    assert.ok(screen.includes(`${shortSession(second)} | FROM-TWO`), screen);
  });
});
