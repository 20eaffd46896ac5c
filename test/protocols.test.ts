import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  GetAgentCardCommand,
  InvokeAgentRuntimeCommand,
  type InvokeAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore";
import { agentSources, installAgent } from "./support/agents.ts";
import { hostSuite, removeDir, startTestBerth, useTestBerth } from "./support/berth.ts";
import { clientEnvironment, requirePythonClients, runProgram } from "./support/python.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const testAgent = (name: string) => fileURLToPath(new URL(`./agents/${name}`, import.meta.url));

describe("server protocols (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // Each protocol's agent runs in a real sandbox, listening on its own port (8000 MCP, 9000 A2A,
  // 8080 AG-UI), and is driven through Berth by the clients its users have.

  requirePythonClients();

  /**
   * The Python MCP SDK, installed once per run with pip into a folder of its own: the MCP test
   * server ships it beside its code (as a deployed agent would), and the Python client imports
   * it from there. Built with the Python 3.11 the runtime runs (its wheels are for cp311).
   */
  let mcpSdk = "";
  before(async () => {
    mcpSdk = mkdtempSync(join(tmpdir(), "berth-mcp-sdk-"));
    // --retries 0: a machine without the public index (its local mirror only) fails over at once.
    await promisify(execFile)(
      "python3.11",
      ["-m", "pip", "install", "--quiet", "--retries", "0", "--target", mcpSdk, "mcp"],
      { maxBuffer: 16 * 1024 * 1024 },
    ).catch((error: unknown) => {
      throw new Error(
        `The MCP tests need the Python MCP SDK: \`python3.11 -m pip install --target DIR mcp\` failed: ${String(error)}`,
      );
    });
    copyFileSync(join(testAgent("mcp"), "server.py"), join(mcpSdk, "server.py"));
  });
  after(() => {
    removeDir(mcpSdk);
  });

  const harness = useTestBerth([], (berth) => {
    installAgent(berth.dataDir, mcpSdk, "mcp");
    installAgent(berth.dataDir, testAgent("a2a"), "a2a");
    installAgent(berth.dataDir, testAgent("agui"), "agui");
    installAgent(berth.dataDir, agentSources.probe, "probe");
  });

  const mcpRuntime = (environmentVariables: Record<string, string> = {}) =>
    createRuntime(harness(), "mcp", {
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix: "mcp" } },
          runtime: "PYTHON_3_11",
          entryPoint: ["server.py"],
        },
      },
      protocolConfiguration: { serverProtocol: "MCP" },
      environmentVariables,
    });

  /** The runtime's sessions, as ListSessions answers. */
  async function sessionsOf(runtimeId: string): Promise<string[]> {
    const { berth } = harness();
    const answer = await sendRaw(berth.url, {
      method: "GET",
      path: `/berth/v1/runtimes/${runtimeId}/sessions`,
      credentials: berth.credentials,
    });
    assert.equal(answer.status, 200, answer.body);
    return (JSON.parse(answer.body) as { sessions: { sessionId: string }[] }).sessions.map(
      (session) => session.sessionId,
    );
  }

  describe("MCP", () => {
    interface Exchange {
      method: string | null;
      status: number;
      sentMcpSessionId: string | null;
      answeredMcpSessionId: string | null;
      answeredRuntimeSessionId: string | null;
      contentType: string | null;
    }
    interface Facts {
      pid: number;
      calls: number;
      mcpSessionId: string | null;
      runtimeSessionId: string | null;
    }
    interface ClientRun {
      server: string;
      tools: string[];
      added: number;
      counted: string;
      progress: { progress: number; total: number; message: string }[];
      facts: Facts[];
      exchanges: Exchange[];
    }

    /** Runs test/python/mcp_client.py (the MCP SDK's client, signing SigV4) against a runtime. */
    async function runMcpClient(arn: string): Promise<ClientRun> {
      const finished = await runProgram("python3", ["mcp_client.py", arn], {
        ...clientEnvironment(harness()),
        PYTHONPATH: mcpSdk,
      });
      assert.equal(finished.code, 0, finished.stderr);
      return JSON.parse(finished.stdout) as ClientRun;
    }

    /** What every MCP client run shows: each call worked, the progress arrived, one session. */
    async function assertOneSessionThroughout(run: ClientRun, runtimeId: string): Promise<string> {
      assert.equal(run.server, "berth-test-mcp");
      assert.deepEqual(run.tools, ["add", "count", "facts"]);
      assert.equal(run.added, 5);
      assert.equal(run.counted, "counted to 3");
      assert.deepEqual(
        run.progress.map((step) => [step.progress, step.total, step.message]),
        [
          [1, 3, "counted 1"],
          [2, 3, "counted 2"],
          [3, 3, "counted 3"],
        ],
      );
      const [initialize, ...later] = run.exchanges;
      assert.equal(initialize?.method, "initialize");
      assert.equal(initialize.sentMcpSessionId, null, "a raw MCP client's initialize names none");
      const session = initialize.answeredMcpSessionId ?? "";
      assert.ok(session.length >= 33, `initialize answered Mcp-Session-Id ${session}`);
      assert.equal(initialize.answeredRuntimeSessionId, session, "the MCP session is Berth's");
      for (const exchange of later) {
        const where = JSON.stringify(exchange);
        assert.equal(exchange.sentMcpSessionId, session, `the client kept its session: ${where}`);
        assert.equal(exchange.answeredMcpSessionId, session, where);
        assert.equal(exchange.answeredRuntimeSessionId, session, where);
      }
      // A notification's answer (202) reaches the client as it is, not as 200.
      const initialized = run.exchanges.find(
        (exchange) => exchange.method === "notifications/initialized",
      );
      assert.equal(initialized?.status, 202);
      // The tool that reports progress answered as an event stream, relayed as it came.
      const streamed = run.exchanges.filter((exchange) => exchange.method === "tools/call");
      assert.ok(
        streamed.some((exchange) => /^text\/event-stream/.test(exchange.contentType ?? "")),
      );
      // Every call reached the same server process, in the one session Berth runs.
      const [first, second] = run.facts;
      assert.equal(first?.pid, second?.pid);
      assert.deepEqual([first?.calls, second?.calls], [1, 2]);
      assert.equal(first?.runtimeSessionId, session);
      assert.deepEqual(await sessionsOf(runtimeId), [session]);
      return session;
    }

    it("the MCP SDK's client (SigV4): initialize, tools/list, tools/call, streamed progress, one session", async () => {
      const runtime = await mcpRuntime();
      const run = await runMcpClient(runtime.arn);
      const session = await assertOneSessionThroughout(run, runtime.id);
      // A stateless server is sent the Berth session id, as AgentCore sends its own.
      assert.equal(run.facts[0]?.mcpSessionId, session);
    });

    it("a stateful server (stateless_http=False) keeps its own session id, behind Berth's", async () => {
      const runtime = await mcpRuntime({ MCP_STATEFUL: "1" });
      const run = await runMcpClient(runtime.arn);
      const session = await assertOneSessionThroughout(run, runtime.id);
      // The server was sent the id it issued (it refuses any other); the client saw only Berth's.
      const serverOwn = run.facts[0]?.mcpSessionId ?? "";
      assert.match(serverOwn, /^[0-9a-f]{32}$/);
      assert.notEqual(serverOwn, session);
      assert.equal(run.facts[1]?.mcpSessionId, serverOwn);
    });

    it("the JS SDK's InvokeAgentRuntime carries MCP JSON-RPC, with mcpSessionId", async () => {
      const runtime = await mcpRuntime();
      const { data } = harness();
      const runtimeSessionId = newSessionId("mcp-js");
      const call = async (
        message: Record<string, unknown>,
        extra: Partial<InvokeAgentRuntimeCommandInput> = {},
      ) => {
        const answer = await data.send(
          new InvokeAgentRuntimeCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId,
            contentType: "application/json",
            accept: "application/json, text/event-stream",
            mcpProtocolVersion: "2025-06-18",
            payload: Buffer.from(JSON.stringify({ jsonrpc: "2.0", ...message })),
            ...extra,
          }),
        );
        const text = (await answer.response?.transformToString()) ?? "";
        return { answer, result: jsonRpcResult(text) };
      };

      const initialized = await call({
        id: 1,
        method: "initialize",
        params: {
          protocolVersion: "2025-06-18",
          capabilities: {},
          clientInfo: { name: "js-sdk", version: "1" },
        },
      });
      assert.equal(initialized.answer.statusCode, 200);
      assert.equal(initialized.answer.mcpSessionId, runtimeSessionId);
      assert.equal(initialized.answer.runtimeSessionId, runtimeSessionId);
      assert.equal(
        (initialized.result as { serverInfo: { name: string } }).serverInfo.name,
        "berth-test-mcp",
      );
      const mcp = { mcpSessionId: runtimeSessionId };

      const notified = await call({ method: "notifications/initialized" }, mcp);
      assert.equal(notified.answer.statusCode, 202);

      const added = await call(
        { id: 2, method: "tools/call", params: { name: "add", arguments: { a: 20, b: 22 } } },
        { ...mcp, mcpMethod: "tools/call", mcpName: "add" },
      );
      assert.equal(added.answer.statusCode, 200);
      assert.equal(added.answer.mcpSessionId, runtimeSessionId);
      assert.deepEqual((added.result as { structuredContent: unknown }).structuredContent, {
        result: 42,
      });
      const facts = await call(
        { id: 3, method: "tools/call", params: { name: "facts", arguments: {} } },
        mcp,
      );
      const [content] = (facts.result as { content: { text: string }[] }).content;
      const seen = JSON.parse(content?.text ?? "{}") as Record<string, unknown>;
      assert.equal(seen["mcpSessionId"], runtimeSessionId);
      assert.deepEqual(await sessionsOf(runtime.id), [runtimeSessionId]);
    });

    it("an MCP server that never listens fails its start naming port 8000", async () => {
      const berth = await startTestBerth(["--agent-startup-timeout-seconds", "2"]);
      try {
        installAgent(berth.dataDir, agentSources.probe, "probe");
        const runtime = await createRuntime(berth, "probe", {
          protocolConfiguration: { serverProtocol: "MCP" },
          environmentVariables: { PROBE_START: "never" },
        });
        await assert.rejects(
          berth.data.send(
            new InvokeAgentRuntimeCommand({
              agentRuntimeArn: runtime.arn,
              runtimeSessionId: newSessionId("mcp-never"),
              payload: Buffer.from("{}"),
            }),
          ),
          {
            name: "RuntimeClientError",
            message:
              /The MCP agent did not answer HTTP on port 8000 \(GET \/ping, any status\) within 2000 ms/,
          },
        );
      } finally {
        await berth.close();
        removeDir(berth.dataDir);
      }
    });
  });

  describe("A2A", () => {
    const a2aRuntime = () =>
      createRuntime(harness(), "a2a", { protocolConfiguration: { serverProtocol: "A2A" } });

    it("message/send through InvokeAgentRuntime reaches the agent at / on port 9000", async () => {
      const runtime = await a2aRuntime();
      const runtimeSessionId = newSessionId("a2a");
      const answer = await harness().data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId,
          contentType: "application/json",
          payload: Buffer.from(
            JSON.stringify({
              jsonrpc: "2.0",
              id: "req-1",
              method: "message/send",
              params: {
                message: {
                  role: "user",
                  messageId: "m-1",
                  kind: "message",
                  parts: [{ kind: "text", text: "hello agent" }],
                },
              },
            }),
          ),
        }),
      );
      assert.equal(answer.runtimeSessionId, runtimeSessionId);
      const reply = JSON.parse((await answer.response?.transformToString()) ?? "") as {
        id: string;
        result: { parts: { kind: string; text?: string; data?: Record<string, unknown> }[] };
      };
      assert.equal(reply.id, "req-1");
      assert.equal(reply.result.parts[0]?.text, "echo: hello agent");
      assert.equal(reply.result.parts[1]?.data?.["sessionId"], runtimeSessionId);
    });

    it("GetAgentCard (JS SDK) starts the session and answers the agent's own card", async () => {
      const runtime = await a2aRuntime();
      const runtimeSessionId = newSessionId("card-js");
      const answer = await harness().data.send(
        new GetAgentCardCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId }),
      );
      assert.equal(answer.statusCode, 200);
      assert.equal(answer.runtimeSessionId, runtimeSessionId);
      const card = answer.agentCard as { name: string; skills: { id: string }[]; url: string };
      assert.equal(card.name, "berth-test-a2a");
      assert.deepEqual(
        card.skills.map((skill) => skill.id),
        ["echo"],
      );
      assert.equal(card.url, "http://0.0.0.0:9000/", "the agent listened on port 9000");
      assert.deepEqual(await sessionsOf(runtime.id), [runtimeSessionId]);
    });

    it("GetAgentCard through boto3", async () => {
      const runtime = await a2aRuntime();
      const session = newSessionId("card-boto3");
      const program = `
import json, sys
from berth_env import client
answer = client("bedrock-agentcore").get_agent_card(agentRuntimeArn=sys.argv[1], runtimeSessionId=sys.argv[2])
print(json.dumps({"card": answer["agentCard"], "session": answer["runtimeSessionId"], "status": answer["statusCode"]}))
`;
      const finished = await runProgram(
        "python3",
        ["-c", program, runtime.arn, session],
        clientEnvironment(harness()),
      );
      assert.equal(finished.code, 0, finished.stderr);
      const result = JSON.parse(finished.stdout) as {
        card: { name: string };
        session: string;
        status: number;
      };
      assert.deepEqual(result, { card: result.card, session, status: 200 });
      assert.equal(result.card.name, "berth-test-a2a");
    });

    it("GetAgentCard of a runtime that is not A2A is a ValidationException that says so", async () => {
      const runtime = await createRuntime(harness(), "agui", {
        protocolConfiguration: { serverProtocol: "AGUI" },
      });
      await assert.rejects(
        harness().data.send(
          new GetAgentCardCommand({
            agentRuntimeArn: runtime.arn,
            runtimeSessionId: newSessionId("card-agui"),
          }),
        ),
        {
          name: "ValidationException",
          message: /GetAgentCard answers for A2A agents only: .* serves AGUI/,
        },
      );
      assert.deepEqual(await sessionsOf(runtime.id), [], "no session was started for it");
    });
  });

  describe("AG-UI", () => {
    it("an AG-UI agent's event stream on port 8080 /invocations, as for HTTP", async () => {
      const runtime = await createRuntime(harness(), "agui", {
        protocolConfiguration: { serverProtocol: "AGUI" },
      });
      const answer = await harness().data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: newSessionId("agui"),
          contentType: "application/json",
          accept: "text/event-stream",
          payload: Buffer.from(
            JSON.stringify({
              threadId: "t-1",
              runId: "r-1",
              messages: [{ id: "m-1", role: "user", content: "hi there" }],
              tools: [],
              context: [],
              state: {},
              forwardedProps: {},
            }),
          ),
        }),
      );
      assert.equal(answer.contentType, "text/event-stream");
      const events = ((await answer.response?.transformToString()) ?? "")
        .split("\n\n")
        .filter((block) => block.startsWith("data: "))
        .map((block) => JSON.parse(block.slice("data: ".length)) as Record<string, string>);
      assert.equal(events[0]?.["type"], "RUN_STARTED");
      assert.equal(events.at(-1)?.["type"], "RUN_FINISHED");
      const text = events
        .filter((event) => event["type"] === "TEXT_MESSAGE_CONTENT")
        .map((event) => event["delta"])
        .join("");
      assert.equal(text, "you said: hi there");
    });
  });
});

/**
 * The result of a JSON-RPC answer sent as JSON or as server-sent events (MCP allows both);
 * undefined for no answer (a notification's).
 */
function jsonRpcResult(text: string): unknown {
  if (text.trim() === "") return undefined;
  const json = text.trimStart().startsWith("{")
    ? text
    : (text
        .split("\n")
        .find((line) => line.startsWith("data: "))
        ?.slice("data: ".length) ?? "");
  const message = JSON.parse(json) as { result?: unknown; error?: unknown };
  assert.equal(message.error, undefined, text);
  return message.result;
}
