import assert from "node:assert/strict";
import { sandboxPids } from "./support/cgroups.ts";
import { statSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
  type InvokeAgentRuntimeCommandOutput,
} from "@aws-sdk/client-bedrock-agentcore";
import { DeleteAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, installAgent, installAgentZip, waitFor } from "./support/agents.ts";
import { hostSuite, quickLifecycleArgs, useTestBerth } from "./support/berth.ts";
import { createRuntime as createRuntimeIn, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const harness = useTestBerth(
  [
    ...quickLifecycleArgs,
    "--agent-startup-timeout-seconds",
    "4",
    "--session-pids",
    "64",
    "--session-memory-bytes",
    String(256 * 2 ** 20),
  ],
  (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
    installAgent(berth.dataDir, agentSources.nodeExample, "node-example");
    installAgent(berth.dataDir, agentSources.pythonExample, "python-example");
  },
);
const createRuntime = (
  ...args: Parameters<typeof createRuntimeIn> extends [unknown, ...infer Rest] ? Rest : never
) => createRuntimeIn(harness(), ...args);

async function invoke(
  arn: string,
  sessionId: string,
  payload: unknown,
  extra: Partial<ConstructorParameters<typeof InvokeAgentRuntimeCommand>[0]> = {},
) {
  return harness().data.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: sessionId,
      payload: Buffer.from(JSON.stringify(payload)),
      contentType: "application/json",
      ...extra,
    }),
  );
}

async function invokeJson(
  arn: string,
  sessionId: string,
  payload: unknown,
): Promise<Record<string, unknown>> {
  const response = await invoke(arn, sessionId, payload);
  return JSON.parse(await readBody(response)) as Record<string, unknown>;
}

async function readBody(response: InvokeAgentRuntimeCommandOutput): Promise<string> {
  return (await response.response?.transformToString()) ?? "";
}

async function sessionsOf(runtimeId: string) {
  return harness().berth.sessions.list(runtimeId);
}

describe("invoking agents", () => {
  it(
    "runs an agent written with the bedrock-agentcore npm SDK, keeping its memory per session",
    hostSuite,
    async () => {
      const runtime = await createRuntime("node-example");
      const session = newSessionId();
      const first = await invokeJson(runtime.arn, session, { prompt: "hello" });
      assert.equal(first["turns"], 1);
      assert.match(String(first["reply"]), new RegExp(`session ${session}`));
      const second = await invokeJson(runtime.arn, session, { prompt: "again" });
      assert.equal(second["turns"], 2, "the same session reaches the same agent process");
      const other = await invokeJson(runtime.arn, newSessionId(), { prompt: "hi" });
      assert.equal(other["turns"], 1, "a new session id gets a fresh sandbox");
    },
  );

  it("streams the SDK agent's SSE frames through unchanged", hostSuite, async () => {
    const runtime = await createRuntime("node-example");
    const response = await invoke(
      runtime.arn,
      newSessionId(),
      { prompt: "one two three", stream: true },
      { accept: "text/event-stream" },
    );
    assert.match(response.contentType ?? "", /text\/event-stream/);
    const body = await readBody(response);
    const frames = body.split("\n\n").filter((frame) => frame.startsWith("data: "));
    assert.ok(frames.length >= 5, `several SSE frames (got ${frames.length})`);
    assert.match(body, /"delta":"two "/);
  });

  it("runs a plain Python agent using only the standard library", hostSuite, async () => {
    const runtime = await createRuntime("python-example", {}, "main.py");
    const session = newSessionId();
    const reply = await invokeJson(runtime.arn, session, { prompt: "ping" });
    assert.equal(reply["reply"], "python agent heard: ping");
    assert.equal(reply["session"], session);
    assert.equal((await invokeJson(runtime.arn, session, { prompt: "again" }))["turns"], 2);
  });

  it("delivers streamed chunks as the agent writes them, not at the end", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    const response = await invoke(runtime.arn, session, { action: "stream", key: "k1", count: 3 });
    const stream = response.response as unknown as AsyncIterable<Buffer>;
    const iterator = stream[Symbol.asyncIterator]();
    const firstChunk = await iterator.next();
    assert.match(
      Buffer.from(firstChunk.value as Buffer).toString("utf8"),
      /"n":1/,
      "the first frame arrives while the agent still holds the rest",
    );
    const released = await invokeJson(runtime.arn, session, { action: "release", key: "k1" });
    assert.equal(released["released"], true);
    let rest = "";
    for (let next = await iterator.next(); next.done !== true; next = await iterator.next())
      rest += Buffer.from(next.value).toString("utf8");
    assert.match(rest, /"n":3/);
  });

  it("passes the session id, a request id and content type to the agent, and the response's session id back", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    const response = await invoke(runtime.arn, session, { action: "headers" });
    assert.equal(response.runtimeSessionId, session);
    const echoed = JSON.parse(await readBody(response)) as {
      headers: Record<string, string>;
      url: string;
    };
    assert.equal(echoed.url, "/invocations");
    assert.equal(echoed.headers["x-amzn-bedrock-agentcore-runtime-session-id"], session);
    assert.match(
      echoed.headers["x-amzn-bedrock-agentcore-runtime-request-id"] ?? "",
      /^[0-9a-f-]{36}$/,
    );
    assert.equal(echoed.headers["content-type"], "application/json");
    assert.equal(
      echoed.headers["authorization"],
      undefined,
      "the caller's SigV4 signature never reaches the agent",
    );
  });

  it("starts exactly one sandbox for concurrent first invocations of a session", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    const counts = await Promise.all(
      [1, 2, 3, 4].map((value) => invokeJson(runtime.arn, session, { action: "remember", value })),
    );
    assert.deepEqual(counts.map((reply) => reply["count"]).sort(), [1, 2, 3, 4]);
    assert.equal((await sessionsOf(runtime.id)).length, 1);
  });

  it("runs an agent shipped as a .zip code artifact", hostSuite, async () => {
    installAgentZip(harness().dataDir, agentSources.probe, "probe-zipped");
    const runtime = await createRuntime("probe-zipped.zip");
    const who = (await invokeJson(runtime.arn, newSessionId(), { action: "whoami" })) as {
      cwd: string;
    };
    assert.equal(who.cwd, "/app");
  });

  it("unpacks a .zip when the runtime is created, so a missing entry point fails creation", async () => {
    installAgentZip(harness().dataDir, agentSources.pythonExample, "no-node-entry");
    const runtime = await createRuntime("no-node-entry.zip", {}, "main.js", "CREATE_FAILED");
    assert.match(runtime.failureReason ?? "", /Entry point main\.js not found/);
  });

  it("passes allow-listed custom headers to the agent, and no others", async () => {
    const runtime = await createRuntime("probe", {
      requestHeaderConfiguration: {
        requestHeaderAllowlist: ["X-Amzn-Bedrock-AgentCore-Runtime-Custom-Team"],
      },
    });
    const command = new InvokeAgentRuntimeCommand({
      agentRuntimeArn: runtime.arn,
      runtimeSessionId: newSessionId(),
      payload: Buffer.from(JSON.stringify({ action: "headers" })),
      contentType: "application/json",
    });
    // The SDK has no member for custom headers; callers add them as AgentCore's docs show.
    command.middlewareStack.add(
      (next) => async (args) => {
        const request = args.request as { headers: Record<string, string> };
        request.headers["x-amzn-bedrock-agentcore-runtime-custom-team"] = "blue";
        request.headers["x-amzn-bedrock-agentcore-runtime-custom-other"] = "hidden";
        return next(args);
      },
      { step: "build", name: "customHeaders" },
    );
    const response = await harness().data.send(command);
    const echoed = JSON.parse((await response.response?.transformToString()) ?? "{}") as {
      headers: Record<string, string>;
    };
    assert.equal(echoed.headers["x-amzn-bedrock-agentcore-runtime-custom-team"], "blue");
    assert.equal(echoed.headers["x-amzn-bedrock-agentcore-runtime-custom-other"], undefined);
  });

  it("reaches a runtime by bare id as well as by ARN, and by a named endpoint", async () => {
    const runtime = await createRuntime("probe");
    const reply = await invokeJson(runtime.id, newSessionId(), { action: "recall" });
    assert.deepEqual(reply["memory"], []);
    await assert.rejects(invoke(runtime.arn, newSessionId(), {}, { qualifier: "nope" }), {
      name: "ResourceNotFoundException",
      message: /no endpoint named nope/,
    });
  });
});

describe("isolation", hostSuite, () => {
  let runtime: { arn: string; id: string };
  before(async () => {
    runtime = await createRuntime("probe", { environmentVariables: { MODEL: "tiny" } });
  });

  it("runs the agent as an unprivileged user, never host root", async () => {
    const who = (await invokeJson(runtime.arn, newSessionId(), { action: "whoami" })) as {
      uid: number;
      pid: number;
      hostname: string;
      cwd: string;
    };
    assert.equal(who.uid, 1000);
    assert.equal(who.hostname, "sandbox");
    assert.equal(who.cwd, "/app");
    const hostPids = sandboxPids(harness().settings.bubblewrapCgroupParent);
    assert.ok(hostPids.length > 0);
    for (const pid of hostPids) {
      const uid = statSync(`/proc/${pid}`).uid;
      assert.ok(uid >= 3_000_000, `sandbox process ${pid} runs as host uid ${uid}`);
    }
  });

  it("gives the agent only its runtime's environment variables", async () => {
    process.env["BERTH_TEST_SERVER_SECRET"] = "must-not-leak";
    const who = (await invokeJson(runtime.arn, newSessionId(), { action: "whoami" })) as {
      env: Record<string, string>;
    };
    assert.equal(who.env["MODEL"], "tiny");
    assert.equal(who.env["PORT"], "8080");
    assert.equal(who.env["BERTH_TEST_SERVER_SECRET"], undefined);
    const unexpected = Object.keys(who.env).filter(
      (name) =>
        !["MODEL", "PORT", "PATH", "HOME", "USER", "LANG", "PWD", "AWS_REGION"].includes(name),
    );
    assert.deepEqual(unexpected, []);
  });

  it("hides the data directory, /root and the host's processes", async () => {
    const session = newSessionId();
    const dataDir = (await invokeJson(runtime.arn, session, {
      action: "list",
      path: harness().dataDir,
    })) as { error?: string };
    assert.equal(dataDir.error, "ENOENT");
    const database = (await invokeJson(runtime.arn, session, {
      action: "read",
      path: join(harness().dataDir, "berth.db"),
    })) as { error?: string };
    assert.equal(database.error, "ENOENT");
    const root = (await invokeJson(runtime.arn, session, { action: "list", path: "/root" })) as {
      error?: string;
    };
    assert.equal(root.error, "ENOENT");
    const processes = (await invokeJson(runtime.arn, session, { action: "processes" })) as {
      pids: string[];
    };
    assert.ok(
      processes.pids.length < 10,
      `only the sandbox's own processes (${processes.pids.join(",")})`,
    );
    const shadow = (await invokeJson(runtime.arn, session, {
      action: "read",
      path: "/etc/shadow",
    })) as { error?: string };
    assert.equal(shadow.error, "ENOENT");
  });

  it("keeps one session's files and processes from another", async () => {
    const first = newSessionId();
    const second = newSessionId();
    await invokeJson(runtime.arn, first, {
      action: "write",
      path: "/tmp/mine.txt",
      content: "first's secret",
    });
    assert.equal(
      (
        (await invokeJson(runtime.arn, first, { action: "read", path: "/tmp/mine.txt" })) as {
          ok?: string;
        }
      ).ok,
      "first's secret",
    );
    const peek = (await invokeJson(runtime.arn, second, {
      action: "read",
      path: "/tmp/mine.txt",
    })) as { error?: string };
    assert.equal(peek.error, "ENOENT");
    const code = (await invokeJson(runtime.arn, second, {
      action: "write",
      path: "/app/main.js",
      content: "overwritten",
    })) as { error?: string };
    assert.equal(code.error, "EROFS", "the agent's code is read-only");
  });

  it("cannot reach the server's port or other host services", async () => {
    const berthPort = harness().berth.port;
    const reply = (await invokeJson(runtime.arn, newSessionId(), {
      action: "connect",
      host: "127.0.0.1",
      port: berthPort,
    })) as { connected: boolean };
    assert.equal(reply.connected, false);
  });
});

describe("limits", hostSuite, () => {
  it("a fork bomb and a memory hog in one session leave another session answering", async () => {
    const runtime = await createRuntime("probe");
    const noisy = newSessionId();
    const calm = newSessionId();
    await invokeJson(runtime.arn, calm, { action: "remember", value: "before" });
    const bomb = (await invokeJson(runtime.arn, noisy, { action: "forkbomb" })) as {
      started: number;
    };
    assert.ok(bomb.started < 64, `the pids limit stopped the fork bomb (started ${bomb.started})`);
    const hog = (await invokeJson(runtime.arn, newSessionId(), {
      action: "hog",
      megabytes: 512,
    })) as { signal: string | null; output: string };
    assert.equal(hog.signal, "SIGKILL", "the memory limit OOM-killed the hog");
    assert.notEqual(hog.output, "allocated");
    const calmReply = (await invokeJson(runtime.arn, calm, { action: "recall" })) as {
      memory: string[];
    };
    assert.deepEqual(calmReply.memory, ["before"]);
  });
});

describe("lifecycle", () => {
  it("ends a session after its idle timeout, and the same id then starts fresh", async () => {
    const runtime = await createRuntime("probe", {
      lifecycleConfiguration: { idleRuntimeSessionTimeout: 1, maxLifetime: 60 },
    });
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "remember", value: "x" });
    assert.equal((await sessionsOf(runtime.id)).length, 1);
    await waitFor("the idle session to end", () =>
      harness().logLines.some(
        (line) =>
          line["msg"] === "session ended" &&
          line["reason"] === "idle timeout" &&
          line["sessionId"] === session,
      ),
    );
    assert.equal((await sessionsOf(runtime.id)).length, 0);
    assert.deepEqual(
      ((await invokeJson(runtime.arn, session, { action: "recall" })) as { memory: string[] })
        .memory,
      [],
    );
  });

  it("keeps a session whose agent says HealthyBusy past its idle timeout", async () => {
    const runtime = await createRuntime("probe", {
      lifecycleConfiguration: { idleRuntimeSessionTimeout: 1, maxLifetime: 60 },
    });
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "busy", on: true });
    // Berth polls /ping only once a session is past its idle deadline; each HealthyBusy answer
    // restarts the idle clock. Two such polls mean two idle deadlines passed while busy.
    const busyPolls = async () => {
      const response = await sendRaw(harness().berth.url, {
        method: "GET",
        path: `/berth/v1/runtimes/${runtime.id}/logs?sessionId=${session}`,
        credentials: harness().berth.credentials,
      });
      const { lines } = JSON.parse(response.body) as { lines: { line: string }[] };
      return lines.filter((line) => line.line === "probe: pinged while busy").length;
    };
    await waitFor("two polls answered HealthyBusy", async () => (await busyPolls()) >= 2);
    assert.equal((await sessionsOf(runtime.id)).length, 1, "a HealthyBusy agent is not idle");
    await invokeJson(runtime.arn, session, { action: "busy", on: false });
    await waitFor(
      "the session to end once the agent is idle",
      async () => (await sessionsOf(runtime.id)).length === 0,
    );
  });

  it("ends a session at its max lifetime even while it is in use", async () => {
    const runtime = await createRuntime("probe", {
      lifecycleConfiguration: { idleRuntimeSessionTimeout: 1, maxLifetime: 2 },
    });
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "busy", on: true });
    await waitFor("max lifetime", () =>
      harness().logLines.some(
        (line) =>
          line["msg"] === "session ended" &&
          line["reason"] === "max lifetime reached" &&
          line["sessionId"] === session,
      ),
    );
    assert.equal((await sessionsOf(runtime.id)).length, 0);
  });

  it("StopRuntimeSession ends the session at once, its open stream included", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "remember", value: "kept until stop" });
    const response = await invoke(runtime.arn, session, {
      action: "stream",
      key: "never",
      count: 2,
    });
    const streamDone = readBody(response).then(
      () => "completed",
      (error: unknown) => `failed: ${String(error)}`,
    );
    const stopped = await harness().data.send(
      new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
    );
    assert.equal(stopped.runtimeSessionId, session);
    assert.match(await streamDone, /^failed/, "the open stream is cut, not completed");
    assert.equal((await sessionsOf(runtime.id)).length, 0);
    const fresh = (await invokeJson(runtime.arn, session, { action: "recall" })) as {
      memory: string[];
    };
    assert.deepEqual(fresh.memory, [], "the same id starts a fresh sandbox");
  });

  it("answers ResourceNotFoundException when stopping a session that is not running", async () => {
    const runtime = await createRuntime("probe");
    await assert.rejects(
      harness().data.send(
        new StopRuntimeSessionCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: newSessionId(),
        }),
      ),
      { name: "ResourceNotFoundException" },
    );
  });

  it("deleting a runtime stops its sessions", async () => {
    const runtime = await createRuntime("probe");
    await invokeJson(runtime.arn, newSessionId(), { action: "recall" });
    await harness().control.send(new DeleteAgentRuntimeCommand({ agentRuntimeId: runtime.id }));
    assert.equal((await sessionsOf(runtime.id)).length, 0);
  });
});

describe("agent failures", () => {
  it("an agent that crashes mid-invocation gives RuntimeClientError, and the next invoke starts fresh", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "remember", value: "lost" });
    await assert.rejects(
      invoke(runtime.arn, session, { action: "exit", code: 7 }),
      (error: Error & { $metadata?: { httpStatusCode?: number } }) => {
        assert.equal(error.name, "RuntimeClientError");
        assert.equal(error.$metadata?.httpStatusCode, 424);
        assert.match(error.message, /exit code 7|exiting with 7/);
        return true;
      },
    );
    assert.deepEqual(
      ((await invokeJson(runtime.arn, session, { action: "recall" })) as { memory: string[] })
        .memory,
      [],
    );
  });

  it("an agent that crashes at startup gives RuntimeClientError with its last output", async () => {
    const runtime = await createRuntime("probe", {
      environmentVariables: { PROBE_START: "crash" },
    });
    await assert.rejects(invoke(runtime.arn, newSessionId(), {}), {
      name: "RuntimeClientError",
      message: /exited during startup \(exit code 3\).*crashing at startup/,
    });
    assert.equal((await sessionsOf(runtime.id)).length, 0);
  });

  it("an agent that never answers /ping fails after the startup timeout", async () => {
    const runtime = await createRuntime("probe", {
      environmentVariables: { PROBE_START: "never" },
    });
    await assert.rejects(invoke(runtime.arn, newSessionId(), {}), {
      name: "RuntimeClientError",
      message: /did not answer GET \/ping on port 8080 within 4000 ms/,
    });
    assert.equal((await sessionsOf(runtime.id)).length, 0);
  });

  it("an agent answering 5xx gives RuntimeClientError with the agent's answer", async () => {
    const runtime = await createRuntime("probe");
    await assert.rejects(invoke(runtime.arn, newSessionId(), { action: "status", status: 503 }), {
      name: "RuntimeClientError",
      message: /answered 503.*probe answered 503/,
    });
  });
});

describe("data-plane validation", () => {
  it("refuses a session id shorter than 33 characters", async () => {
    const runtime = await createRuntime("probe");
    await assert.rejects(invoke(runtime.arn, "too-short", {}), {
      name: "ValidationException",
      message: /33 to 256/,
    });
  });

  it("refuses an unknown runtime", async () => {
    await assert.rejects(
      invoke(
        "arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/ghost-0123456789",
        newSessionId(),
        {},
      ),
      { name: "ResourceNotFoundException" },
    );
  });

  it("answers ConflictException while the endpoint has no READY version", async () => {
    const broken = await createRuntime("missing", {}, "main.js", "CREATE_FAILED");
    await assert.rejects(invoke(broken.arn, newSessionId(), {}), {
      name: "ConflictException",
      message: /no READY version.*CREATE_FAILED/,
    });
  });

  it("lists sessions with state and resource use through Berth's operator API", async () => {
    const runtime = await createRuntime("probe");
    const session = newSessionId();
    await invokeJson(runtime.arn, session, { action: "recall" });
    const response = await sendRaw(harness().berth.url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtime.id}/sessions`,
      credentials: harness().berth.credentials,
    });
    assert.equal(response.status, 200);
    const listed = JSON.parse(response.body) as {
      sessions: { sessionId: string; state: string; usage: { memoryBytes: number } }[];
    };
    const [first] = listed.sessions;
    assert.ok(first);
    assert.equal(first.sessionId, session);
    assert.equal(first.state, "running");
    assert.ok(first.usage.memoryBytes > 1_000_000);
  });
});
