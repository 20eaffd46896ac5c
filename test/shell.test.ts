import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import { shellCloseCodes } from "../src/core/shell-channels.ts";
import { agentSources, installAgent } from "./support/agents.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { ShellTestClient } from "./support/shell-client.ts";
import {
  presignUpgrade,
  RefusedUpgrade,
  sessionIdHeader,
  signUpgrade,
  type WebSocketTarget,
} from "./support/websockets.ts";

/** Ctrl-C, as a terminal sends it. */
const interrupt = "\u0003";

describe("InvokeAgentRuntimeCommandShell: a terminal in the session's sandbox", hostSuite, () => {
  const harness = useTestBerth(["--sandbox-outbound", "none"], (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
  });
  let probe: { arn: string; id: string } | undefined;
  const probeRuntime = async () => (probe ??= await createRuntime(harness(), "probe"));

  async function target(query: Record<string, string>, arn?: string): Promise<WebSocketTarget> {
    const berth = harness();
    const runtimeArn = arn ?? (await probeRuntime()).arn;
    return {
      endpoint: berth.berth.url,
      credentials: berth.berth.credentials,
      region: berth.settings.region,
      path: `/runtimes/${encodeURIComponent(runtimeArn)}/ws/shells`,
      query,
    };
  }

  /** A shell, the upgrade signed with SigV4 headers (the session id among them); past its prompt. */
  async function openShell(
    sessionId: string,
    query: Record<string, string> = {},
    arn?: string,
  ): Promise<ShellTestClient> {
    const { url, headers } = await signUpgrade(await target(query, arn), {
      [sessionIdHeader]: sessionId,
    });
    const client = await ShellTestClient.open(url, { headers });
    await client.status(0);
    return client;
  }

  /** Types a line and waits for what it prints (the echo of the line itself is skipped). */
  async function run(client: ShellTestClient, line: string, expected: string | RegExp) {
    const from = client.text.length;
    client.type(`${line}\r`);
    return client.until(expected, from);
  }

  it("is a login bash on a terminal: its size, TERM, and a resize it sees", async () => {
    const client = await openShell(newSessionId());
    const opened = client.statuses[0];
    assert.equal(opened?.status, "Running");
    assert.equal(opened.reconnected, false);
    await run(client, "stty size", "24 80");
    await run(client, 'echo "$TERM:$0"', /xterm-256color:-?(\/bin\/)?bash/);
    client.resize(120, 40);
    await run(client, "stty size", "40 120");
    client.hangUp();
    assert.equal((await client.finalStatus()).code, shellCloseCodes.ended);
  });

  it("runs interactive programs that read the terminal: read, the python3 REPL", async () => {
    const client = await openShell(newSessionId());
    // read's own prompt says it is reading: typed before, the line could meet bash still
    // switching the terminal back from its line editor.
    await run(client, 'read -r -p "say> " line; echo "got:[$line]"', /\rsay> $/);
    await run(client, "typed by a person", "got:[typed by a person]");
    await run(client, "python3 -q", ">>> ");
    await run(client, "print(6 * 7)", /42\r\n>>> /);
    await run(client, "exit()", /\$ $|# $/);
    await run(client, "echo py$((1 + 1))done", "py2done");
    client.hangUp();
    await client.closed;
  });

  it("interrupts the foreground job on Ctrl-C, and ends with exit's status in the last status frame", async () => {
    const client = await openShell(newSessionId());
    // "ready42" is printed by the job itself, in the foreground: Ctrl-C then reaches it, not bash.
    await run(client, "sh -c 'echo ready$((40 + 2)); exec sleep 300'", "ready42");
    const from = client.text.length;
    client.type(interrupt);
    // bash, seeing its job die of SIGINT, drops the rest of that line: $? is asked on the next.
    await client.until(/\^C[\s\S]*\$ $/, from);
    await run(client, "echo rc$((1000 + $?))", "rc1130");
    client.type("exit 7\r");
    const { status, code } = await client.finalStatus();
    assert.equal(code, shellCloseCodes.ended);
    assert.equal(status?.status, "Failure");
    assert.equal(status.exitCode, 7);
    assert.deepEqual(status.details, { causes: [{ reason: "ExitCode", message: "7" }] });
  });

  it("ends when bash exits, though a background job still holds the terminal open", async () => {
    const client = await openShell(newSessionId());
    await run(client, "sleep 300 & echo bg$((1 + 1))", "bg2");
    client.type("exit 3\r");
    const { status } = await client.finalStatus();
    assert.equal(status?.exitCode, 3);
  });

  it("opens from a presigned URL, the session id and size in its query", async () => {
    const sessionId = newSessionId();
    const url = await presignUpgrade(
      await target({ [sessionIdHeader]: sessionId, width: "100", height: "30" }),
      { expiresIn: 60 },
    );
    const client = await ShellTestClient.open(url);
    assert.equal((await client.status(0)).runtimeSessionId, sessionId);
    await run(client, "stty size", "30 100");
    client.type("exit\r");
    assert.equal((await client.finalStatus()).status?.status, "Success");
  });

  it("reattaches after a dropped connection: the shell and its state kept, its output replayed once", async () => {
    const sessionId = newSessionId();
    const shellId = `reattach-${process.pid}`;
    const first = await openShell(sessionId, { shellId });
    await run(first, "export MARK=kept-$((40 + 2))", /\$ $|# $/);
    await run(
      first,
      "for i in $(seq 1 300); do echo line-$i; sleep 0.005; done; echo fin$((1 + 1))",
      "line-5\r\n",
    );
    await first.drop(); // mid-output: no close frame, no WebSocket close
    const again = await openShell(sessionId, { shellId });
    assert.equal(again.statuses[0]?.reconnected, true);
    await again.until("fin2");
    const text = again.text;
    assert.ok(text.startsWith(first.text), "the replay begins with what the first connection saw");
    for (const n of [1, 5, 6, 150, 300]) {
      const count = text.split(`line-${n}\r\n`).length - 1;
      assert.equal(count, 1, `line-${n} arrives exactly once`);
    }
    await run(again, 'echo "$MARK"', "kept-42");
    again.hangUp();
    await again.closed;
  });

  it("shares the agent's sandbox: its files, its uid", async () => {
    const sessionId = newSessionId();
    const { arn } = await probeRuntime();
    const { data } = harness();
    await invokeProbe(data, arn, sessionId, {
      action: "write",
      path: "/tmp/from-agent.txt",
      content: "written by the agent",
    });
    const whoami = await invokeProbe(data, arn, sessionId, { action: "whoami" });
    const client = await openShell(sessionId);
    await run(client, "cat /tmp/from-agent.txt; echo", "written by the agent");
    await run(client, "echo uid=$(id -u)", `uid=${String(whoami["uid"])}`);
    await run(client, "echo from-the-shell > /tmp/from-shell.txt; echo w$((1 + 1))", "w2");
    const read = await invokeProbe(data, arn, sessionId, {
      action: "read",
      path: "/tmp/from-shell.txt",
    });
    assert.deepEqual(read, { ok: "from-the-shell\n" });
    client.hangUp();
    await client.closed;
  });

  it("closes with the session: StopRuntimeSession ends the shell and says so", async () => {
    const sessionId = newSessionId();
    const client = await openShell(sessionId);
    await run(client, "echo up$((1 + 1))", "up2");
    await harness().data.send(
      new StopRuntimeSessionCommand({
        agentRuntimeArn: (await probeRuntime()).arn,
        runtimeSessionId: sessionId,
      }),
    );
    const { status, code } = await client.finalStatus();
    assert.equal(code, shellCloseCodes.ended);
    assert.equal(status?.reason, "SessionEnded");
    assert.match(status.message ?? "", /StopRuntimeSession/);
  });

  it("refuses an 11th shell on one runtime with ServiceQuotaExceededException", async () => {
    const { arn } = await createRuntime(harness(), "probe");
    const sessionId = newSessionId();
    const shells: ShellTestClient[] = [];
    for (let index = 0; index < 10; index += 1) shells.push(await openShell(sessionId, {}, arn));
    const refused = await openShell(sessionId, {}, arn).catch((error: unknown) => error);
    assert.ok(refused instanceof RefusedUpgrade, String(refused));
    assert.equal(refused.errorType, "ServiceQuotaExceededException");
    assert.match(refused.body, /maxShellsPerRuntime/);
    const hungUp = shells.pop();
    hungUp?.hangUp();
    await hungUp?.closed;
    shells.push(await openShell(sessionId, {}, arn));
    for (const shell of shells) shell.hangUp();
    await Promise.all(shells.map((shell) => shell.closed));
  });
});
