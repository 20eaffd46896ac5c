import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
  StopRuntimeSessionCommand,
  type InvokeAgentRuntimeCommandCommandOutput,
  type InvokeAgentRuntimeCommandStreamOutput,
} from "@aws-sdk/client-bedrock-agentcore";
import { outputTextToBytes } from "../src/core/output-text.ts";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { hostSuite, quickLifecycleArgs, useTestBerth } from "./support/berth.ts";
import { sandboxGroups } from "./support/cgroups.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";
import { collect, invokeProbe as invokeProbeIn } from "./support/commands.ts";

const harness = useTestBerth(
  [...quickLifecycleArgs, "--command-kill-grace-ms", "300", "--sandbox-outbound", "none"],
  (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
  },
);

let probe: { arn: string; id: string } | undefined;
async function probeRuntime() {
  probe ??= await createRuntime(harness(), "probe", {
    environmentVariables: { GREETING: "hello from the runtime" },
  });
  return probe;
}

async function startCommand(
  sessionId: string,
  command: string,
  timeout?: number,
): Promise<InvokeAgentRuntimeCommandCommandOutput> {
  const runtime = await probeRuntime();
  return harness().data.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: runtime.arn,
      runtimeSessionId: sessionId,
      body: { command, ...(timeout === undefined ? {} : { timeout }) },
    }),
  );
}

function eventsOf(
  response: InvokeAgentRuntimeCommandCommandOutput,
): AsyncIterator<InvokeAgentRuntimeCommandStreamOutput, undefined> {
  assert.ok(response.stream !== undefined, "the response has an event stream");
  return response.stream[Symbol.asyncIterator]() as AsyncIterator<
    InvokeAgentRuntimeCommandStreamOutput,
    undefined
  >;
}

async function nextEvent(
  iterator: AsyncIterator<InvokeAgentRuntimeCommandStreamOutput, undefined>,
): Promise<InvokeAgentRuntimeCommandStreamOutput | undefined> {
  return (await iterator.next()).value;
}

async function run(sessionId: string, command: string, timeout?: number) {
  return collect(await startCommand(sessionId, command, timeout));
}

async function invokeProbe(sessionId: string, payload: unknown) {
  return invokeProbeIn(harness().data, (await probeRuntime()).arn, sessionId, payload);
}

describe("InvokeAgentRuntimeCommand", () => {
  it("streams contentStart, output and contentStop with the process's own exit code", async () => {
    const session = newSessionId();
    const finished = await run(session, "echo out; echo err >&2; exit 3");
    assert.deepEqual(finished.events[0]?.chunk?.contentStart, {});
    assert.equal(finished.stdout, "out\n");
    assert.equal(finished.stderr, "err\n");
    assert.equal(finished.exitCode, 3);
    assert.equal(finished.status, "COMPLETED");
    assert.equal((await run(session, "true")).exitCode, 0);
    assert.equal((await run(session, "kill -KILL $$")).exitCode, 137, "128 + SIGKILL");
    assert.equal((await run(session, "exec /no/such/program")).exitCode, 127);
  });

  it("keeps stdout and stderr apart, each in order, and in order with each other", async () => {
    const finished = await run(
      newSessionId(),
      "for i in 1 2 3; do echo out$i; sleep 0.02; echo err$i >&2; sleep 0.02; done",
    );
    assert.equal(finished.stdout, "out1\nout2\nout3\n");
    assert.equal(finished.stderr, "err1\nerr2\nerr3\n");
    const sequence = finished.events
      .flatMap((event) => event.chunk?.contentDelta ?? [])
      .map((delta) => (delta.stdout ?? delta.stderr ?? "").trim());
    assert.deepEqual(sequence, ["out1", "err1", "out2", "err2", "out3", "err3"]);
  });

  it("delivers output as it is written, not at the end", hostSuite, async () => {
    const session = newSessionId();
    const response = await startCommand(
      session,
      "echo first; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo second",
    );
    const iterator = eventsOf(response);
    assert.deepEqual((await nextEvent(iterator))?.chunk?.contentStart, {});
    const first = await iterator.next();
    assert.equal(first.value?.chunk?.contentDelta?.stdout, "first\n");
    // The first command is still waiting: a second one on the same session lets it finish.
    assert.equal((await run(session, "touch /tmp/go")).exitCode, 0);
    const rest: string[] = [];
    for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) {
      if (next.value.chunk?.contentDelta?.stdout !== undefined)
        rest.push(next.value.chunk.contentDelta.stdout);
    }
    assert.deepEqual(rest, ["second\n"]);
  });

  it(
    "runs in the agent's sandbox: same uid, environment, working directory and files",
    hostSuite,
    async () => {
      const session = newSessionId();
      const agent = await invokeProbe(session, { action: "whoami" });
      const finished = await run(
        session,
        'echo "$(id -u) $(id -g) $(pwd) $(hostname)"; echo "$GREETING"; echo "$PORT"; ls /proc | grep -c "^[0-9]"',
      );
      const [identity, greeting, port] = finished.stdout.split("\n");
      assert.equal(identity, `${String(agent["uid"])} ${String(agent["gid"])} /app sandbox`);
      assert.equal(greeting, "hello from the runtime");
      assert.equal(port, "8080");
      const written = await invokeProbe(session, {
        action: "write",
        path: "/tmp/from-agent",
        content: "agent wrote this",
      });
      assert.equal(written["error"], undefined);
      assert.equal((await run(session, "cat /tmp/from-agent")).stdout, "agent wrote this");
      await run(session, "echo command wrote this > /tmp/from-command");
      assert.deepEqual(await invokeProbe(session, { action: "read", path: "/tmp/from-command" }), {
        ok: "command wrote this\n",
      });
    },
  );

  it("never leaks the server's environment and never runs as host root", hostSuite, async () => {
    process.env["BERTH_TEST_SECRET"] = "must-not-leak";
    try {
      const finished = await run(
        newSessionId(),
        "env; grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs):' /proc/self/status; cat /proc/self/uid_map",
      );
      assert.doesNotMatch(finished.stdout, /must-not-leak/);
      assert.match(finished.stdout, /^Uid:\s+1000\s+1000\s+1000\s+1000$/m);
      assert.match(finished.stdout, /^Groups:\s+$/m);
      assert.match(finished.stdout, /^CapEff:\s+0+$/m);
      assert.match(finished.stdout, /^CapBnd:\s+0+$/m);
      assert.match(finished.stdout, /^NoNewPrivs:\s+1$/m);
      const hostUid = Number(/^\s*1000\s+(\d+)\s+1$/m.exec(finished.stdout)?.[1]);
      assert.ok(hostUid >= 1000, "uid 1000 maps to an unprivileged host uid");
    } finally {
      delete process.env["BERTH_TEST_SECRET"];
    }
  });

  it("is stateless: each command is a fresh bash", hostSuite, async () => {
    const session = newSessionId();
    await run(session, "export LEFT_BEHIND=1; cd /tmp");
    const finished = await run(session, 'echo "[$LEFT_BEHIND] $(pwd)"');
    assert.equal(finished.stdout, "[] /app\n");
  });

  it(
    "on timeout kills the command and everything it started, escapes included",
    hostSuite,
    async () => {
      const session = newSessionId();
      const started = performance.now();
      const finished = await run(
        session,
        [
          "setsid bash -c 'trap \"\" TERM; echo $$ > /tmp/escaped; exec sleep 600' &",
          "(bash -c 'trap \"\" TERM; echo $BASHPID > /tmp/orphan; sleep 600' &) ;",
          "trap '' TERM; while [ ! -s /tmp/escaped ] || [ ! -s /tmp/orphan ]; do sleep 0.01; done;",
          "echo ready; sleep 600",
        ].join(" "),
        1,
      );
      assert.equal(finished.status, "TIMED_OUT");
      assert.equal(finished.exitCode, 137, "bash ignored SIGTERM, so SIGKILL ended it");
      assert.equal(finished.stdout, "ready\n");
      assert.ok(performance.now() - started < 10_000);
      const check = await run(
        session,
        'for pid in $(cat /tmp/escaped /tmp/orphan); do kill -0 "$pid" 2>/dev/null && echo "alive $pid"; done; ps -eo args',
      );
      assert.doesNotMatch(check.stdout, /alive|sleep 600/);
    },
  );

  it("leaves a command's background processes running when it completes normally", async () => {
    const session = newSessionId();
    const finished = await run(session, "sleep 600 > /dev/null 2>&1 & echo started");
    assert.equal(finished.status, "COMPLETED");
    assert.equal(finished.stdout, "started\n");
    assert.match((await run(session, "ps -eo args")).stdout, /sleep 600/);
  });

  it("runs concurrently with a long invocation on the same session", async () => {
    const session = newSessionId();
    const runtime = await probeRuntime();
    const streaming = await harness().data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: runtime.arn,
        runtimeSessionId: session,
        payload: Buffer.from(JSON.stringify({ action: "stream", key: "long", count: 3 })),
      }),
    );
    const finished = await run(session, "echo beside the invocation");
    assert.equal(finished.stdout, "beside the invocation\n");
    await invokeProbe(session, { action: "release", key: "long" });
    assert.match((await streaming.response?.transformToString()) ?? "", /"n":3/);
  });

  it("counts as activity: a running command keeps the session past its idle timeout", async () => {
    const runtime = await createRuntime(harness(), "probe", {
      lifecycleConfiguration: { idleRuntimeSessionTimeout: 1, maxLifetime: 3600 },
    });
    const session = newSessionId();
    const send = (command: string) =>
      harness()
        .data.send(
          new InvokeAgentRuntimeCommandCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId: session,
            body: { command },
          }),
        )
        .then(collect);
    await send("echo kept > /tmp/marker");
    const long = await send("sleep 2.5; cat /tmp/marker");
    assert.equal(long.stdout, "kept\n", "the same sandbox after more than the idle timeout");
    await waitFor("the idle session to end", async () =>
      (await harness().berth.sessions.list(runtime.id)).length === 0 ? true : undefined,
    );
  });

  it("starts a session that is not running, as an invoke would", hostSuite, async () => {
    const runtime = await probeRuntime();
    const session = newSessionId();
    assert.equal((await run(session, "echo started")).stdout, "started\n");
    const sessions = await harness().berth.sessions.list(runtime.id);
    assert.ok(sessions.some((info) => info.sessionId === session && info.state === "running"));
    await invokeProbe(session, { action: "remember", value: "before stop" });
    await harness().data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
    );
    assert.equal((await run(session, "test -e /tmp/go; echo $?")).stdout, "1\n");
    assert.deepEqual(await invokeProbe(session, { action: "recall" }), { memory: [] });
  });

  it("ends the stream with runtimeClientError when the session is stopped mid-command", async () => {
    const runtime = await probeRuntime();
    const session = newSessionId();
    const response = await startCommand(session, "echo running; sleep 600");
    const iterator = eventsOf(response);
    await iterator.next(); // contentStart
    assert.equal((await nextEvent(iterator))?.chunk?.contentDelta?.stdout, "running\n");
    await harness().data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
    );
    await assert.rejects(
      async () => {
        for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) {
          // drain until the in-stream error
        }
      },
      (error: Error) =>
        error.name === "RuntimeClientError" &&
        /session ended.*StopRuntimeSession/.test(error.message),
    );
  });

  it("keeps output that is not UTF-8, as U+DC80..U+DCFF, and joins characters split across writes", async () => {
    const finished = await run(
      newSessionId(),
      "printf 'a\\xff\\xfeb\\n'; printf '\\xe2\\x82'; sleep 0.05; printf '\\xac\\n'; printf '\\xc3' >&2",
    );
    assert.equal(finished.stdout, "a\udcff\udcfeb\n€\n");
    assert.deepEqual(
      [...outputTextToBytes(finished.stdout)],
      [0x61, 0xff, 0xfe, 0x62, 0x0a, 0xe2, 0x82, 0xac, 0x0a],
    );
    assert.equal(finished.stderr, "\udcc3", "a truncated sequence at the end is kept too");
  });

  it(
    "holds the server's memory flat while a client reads a flood of output slowly",
    hostSuite,
    async () => {
      const session = newSessionId();
      const total = 256 * 2 ** 20;
      const response = await startCommand(
        session,
        `python3 -c "
import sys
block = b'x' * 65536
for i in range(${total / 65536}):
    sys.stdout.buffer.write(block)
    sys.stdout.flush()
    open('/tmp/progress', 'w').write(str(i + 1))
"`,
      );
      const iterator = eventsOf(response);
      await iterator.next(); // contentStart
      let received = (await nextEvent(iterator))?.chunk?.contentDelta?.stdout?.length ?? 0;
      const memoryBefore = process.memoryUsage().rss;
      // Not reading: the writer must come to a stop, held by backpressure down to its pipe.
      let last = -1;
      const stalledAt = await waitFor("the writer to stall", async () => {
        const progress = Number((await run(session, "cat /tmp/progress")).stdout);
        const stalled = progress === last;
        last = progress;
        return stalled ? progress : undefined;
      });
      assert.ok(stalledAt * 65536 < 64 * 2 ** 20, `the writer stalled after ${stalledAt} blocks`);
      assert.ok(
        process.memoryUsage().rss - memoryBefore < 64 * 2 ** 20,
        "server memory stayed flat",
      );
      for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) {
        received += next.value.chunk?.contentDelta?.stdout?.length ?? 0;
        if (next.value.chunk?.contentStop !== undefined)
          assert.equal(next.value.chunk.contentStop.exitCode, 0);
      }
      assert.equal(received, total, "every byte arrived");
    },
  );

  it("leaves no process or cgroup behind once commands and sessions end", hostSuite, async () => {
    const runtime = await probeRuntime();
    const session = newSessionId();
    await run(session, "sleep 7341 >/dev/null 2>&1 & true");
    for (let i = 0; i < 3; i += 1) await run(session, "true");
    const emptyCommandGroups = () =>
      sandboxGroups(harness().settings.bubblewrapCgroupParent)
        .flatMap((group) =>
          readdirSync(group, { withFileTypes: true })
            .filter((entry) => entry.isDirectory())
            .map((entry) => join(group, entry.name)),
        )
        .filter((group) => readFileSync(join(group, "cgroup.procs"), "utf8").trim() === "");
    // Removed just after each answer has gone out, so possibly a moment after it arrives.
    await waitFor("finished commands' groups to be removed", () =>
      emptyCommandGroups().length === 0 ? true : undefined,
    );
    // bash may exit before its background child has exec'd sleep: wait for it to show up.
    await waitFor("the background sleep", () =>
      hostProcesses(/^sleep\0?7341/).length === 1 ? true : undefined,
    );
    await harness().data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
    );
    assert.deepEqual(hostProcesses(/^sleep\0?7341/), [], "the stop took the background process");
  });
});

/** Host pids whose command line matches, NUL-separated as /proc has it. */
function hostProcesses(pattern: RegExp): number[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        return pattern.test(readFileSync(`/proc/${pid}/cmdline`, "utf8"));
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

describe("the exec helper", hostSuite, () => {
  it("is started again when it dies, so commands keep working", async () => {
    const socket = join(harness().dataDir, "sessions", "exec", "berth-exec.sock");
    const helpers = hostProcesses(new RegExp(`berth-exec\0serve\0${socket}`));
    assert.equal(helpers.length, 1, "one helper per server");
    process.kill(helpers[0] ?? 0, "SIGKILL");
    await waitFor("the helper to be gone", () =>
      hostProcesses(new RegExp(`berth-exec\0serve\0${socket}`)).length === 0 ? true : undefined,
    );
    assert.equal((await run(newSessionId(), "echo still working")).stdout, "still working\n");
  });
});

describe("InvokeAgentRuntimeCommand validation", () => {
  const expectValidation = async (body: Record<string, unknown>, pattern: RegExp) => {
    const runtime = await probeRuntime();
    await assert.rejects(
      harness().data.send(
        new InvokeAgentRuntimeCommandCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: newSessionId(),
          body: body as { command: string; timeout?: number },
        }),
      ),
      (error: Error) => error.name === "ValidationException" && pattern.test(error.message),
    );
  };

  it("refuses an empty, over-long or missing command", async () => {
    await expectValidation({ command: "" }, /command: must be 1 to 65536 characters long/);
    await expectValidation({ command: "x".repeat(65_537) }, /command: must be 1 to 65536/);
    await expectValidation({}, /command: is required/);
    await expectValidation({ command: "echo \u0000" }, /command: must not contain a NUL/);
  });

  it("accepts a command of exactly 65,536 characters", async () => {
    const command = `echo ok #${"x".repeat(65_536 - 9)}`;
    assert.equal(command.length, 65_536);
    assert.equal((await run(newSessionId(), command)).stdout, "ok\n");
  });

  it("refuses a timeout out of range or not an integer", async () => {
    await expectValidation(
      { command: "true", timeout: 0 },
      /timeout: must be a whole number from 1 to 3600/,
    );
    await expectValidation({ command: "true", timeout: 3601 }, /timeout/);
    await expectValidation({ command: "true", timeout: 1.5 }, /timeout/);
    await expectValidation({ command: "true", timeout: "10" }, /timeout/);
  });

  it("refuses a malformed JSON body and a bad session id", async () => {
    const runtime = await probeRuntime();
    const berth = harness();
    const send = (body: string, sessionId: string) =>
      sendRaw(berth.berth.url, {
        method: "POST",
        path: `/runtimes/${encodeURIComponent(runtime.arn)}/commands`,
        body,
        credentials: berth.berth.credentials,
        headers: { "x-amzn-bedrock-agentcore-runtime-session-id": sessionId },
      });
    const malformed = await send("{not json", newSessionId());
    assert.equal(malformed.status, 400);
    assert.equal(malformed.headers["x-amzn-errortype"], "ValidationException");
    assert.match(malformed.body, /not valid JSON/);
    const shortId = await send(JSON.stringify({ command: "true" }), "too-short");
    assert.equal(shortId.status, 400);
    assert.match(shortId.body, /runtimeSessionId must be 33 to 256/);
  });

  it("answers ResourceNotFoundException for an unknown runtime or endpoint", async () => {
    const runtime = await probeRuntime();
    const unknownRuntime = runtime.arn.replace(/runtime\/.*/, "runtime/nothere-AAAAAAAAAA");
    await assert.rejects(
      harness().data.send(
        new InvokeAgentRuntimeCommandCommand({
          agentRuntimeArn: unknownRuntime,
          runtimeSessionId: newSessionId(),
          body: { command: "true" },
        }),
      ),
      { name: "ResourceNotFoundException" },
    );
    await assert.rejects(
      harness().data.send(
        new InvokeAgentRuntimeCommandCommand({
          agentRuntimeArn: runtime.arn,
          qualifier: "no_such_endpoint",
          runtimeSessionId: newSessionId(),
          body: { command: "true" },
        }),
      ),
      { name: "ResourceNotFoundException" },
    );
  });
});
