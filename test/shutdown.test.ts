import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { once } from "node:events";
import { describe, it } from "node:test";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
  type InvokeAgentRuntimeCommandOutput,
  type InvokeAgentRuntimeCommandStreamOutput,
} from "@aws-sdk/client-bedrock-agentcore";
import { BedrockAgentCoreControlClient } from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";
import { clientsOf, spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import { isolationArgs, makeDataDir, removeDir } from "./support/berth.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

interface Serve {
  process: BerthProcess;
  control: BedrockAgentCoreControlClient;
  data: BedrockAgentCoreClient;
  credentials: { accessKeyId: string; secretAccessKey: string };
}

/** `berth serve` as an operator runs it, the probe agent installed, and SDK clients for it. */
async function withServe(args: string[], test: (serve: Serve) => Promise<void>): Promise<void> {
  const dataDir = makeDataDir();
  installAgent(dataDir, agentSources.probe, "probe");
  const serveArgs = ["--data-dir", dataDir, "--sandbox-outbound", "none", ...args];
  const isolation = isolationArgs();
  const process = await spawnBerth(serveArgs, {}, isolation);
  const serve = { process, ...clientsOf(process.url, dataDir) };
  try {
    await test(serve);
  } finally {
    serve.control.destroy();
    serve.data.destroy();
    if ((await stopAfterFailure(process)).code !== 0) {
      // A Berth that did not shut down cleanly left its sandboxes' mounts and cgroups behind;
      // the next start with the same settings clears them, as it would on a real host.
      const again = await spawnBerth(serveArgs, {}, isolation);
      again.child.kill("SIGTERM");
      await again.exit;
    }
    removeDir(dataDir);
  }
}

/**
 * A test that failed may leave Berth running: shut it down without waiting (a second signal ends
 * the grace period, or kills a Berth that does not handle it). Resolves with how it exited.
 */
async function stopAfterFailure(process: BerthProcess): Promise<Awaited<BerthProcess["exit"]>> {
  if (process.child.exitCode === null && process.child.signalCode === null) {
    process.child.kill("SIGTERM");
    await waitFor("Berth to begin its shutdown", () => shuttingDown(process)).catch(
      () => undefined,
    );
    process.child.kill("SIGTERM");
  }
  return process.exit;
}

function shuttingDown(process: BerthProcess): boolean {
  return process.lines.some((line) => line["msg"] === "shutting down");
}

/** Waits until Berth has stopped taking connections (it began to drain). */
async function connectionsRefused(serve: Serve): Promise<void> {
  await waitFor("Berth to begin its shutdown", () => shuttingDown(serve.process));
  await waitFor("new connections to be refused", () =>
    sendRaw(serve.process.url, { method: "GET", path: "/", credentials: serve.credentials }).then(
      () => undefined,
      (error: unknown) =>
        (error as NodeJS.ErrnoException).code === "ECONNREFUSED" ? true : undefined,
    ),
  );
}

/** An invocation of the probe that streams its first SSE event, then holds until released. */
async function startStream(serve: Serve, arn: string, key: string) {
  const response = await serve.data.send(
    new InvokeAgentRuntimeCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: newSessionId(),
      payload: Buffer.from(JSON.stringify({ action: "stream", key, count: 3 })),
      accept: "text/event-stream",
    }),
  );
  return { response, body: readStream(response) };
}

interface ReadAnswer {
  /** Resolves once the first bytes came. */
  started: Promise<void>;
  /** The whole text once the answer ended, and how it failed if it did. */
  whole: Promise<{ text: string; failed?: string }>;
}

function readStream(response: InvokeAgentRuntimeCommandOutput): ReadAnswer {
  const chunks: string[] = [];
  let first: () => void = () => undefined;
  const started = new Promise<void>((resolve) => (first = resolve));
  const whole = (async () => {
    for await (const chunk of response.response as unknown as AsyncIterable<Uint8Array>) {
      chunks.push(Buffer.from(chunk).toString("utf8"));
      first();
    }
    return chunks.join("");
  })().then(
    (text): { text: string; failed?: string } => ({ text }),
    (error: unknown) => ({ text: chunks.join(""), failed: String(error) }),
  );
  return { started, whole };
}

async function startCommand(serve: Serve, arn: string, command: string) {
  const response = await serve.data.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: arn,
      runtimeSessionId: newSessionId(),
      body: { command },
    }),
  );
  assert.ok(response.stream !== undefined);
  return response.stream[Symbol.asyncIterator]() as AsyncIterator<
    InvokeAgentRuntimeCommandStreamOutput,
    undefined
  >;
}

/** Reads a command's events to the end: its output and last event, or the error it ended with. */
async function finish(
  events: AsyncIterator<InvokeAgentRuntimeCommandStreamOutput, undefined>,
): Promise<{ stdout: string; stop?: unknown; error?: Error }> {
  let stdout = "";
  let last: InvokeAgentRuntimeCommandStreamOutput | undefined;
  try {
    for (let next = await events.next(); next.done !== true; next = await events.next()) {
      stdout += next.value.chunk?.contentDelta?.stdout ?? "";
      last = next.value;
    }
    return { stdout, stop: last?.chunk?.contentStop };
  } catch (error) {
    return { stdout, error: error as Error };
  }
}

/** Host pids whose command line contains the marker (a sandboxed command's bash). */
function pidsRunning(marker: string): number[] {
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker);
      } catch {
        return false; // gone meanwhile
      }
    })
    .map(Number);
}

const lastEvent =
  /\n\nevent: error\ndata: \{"error":"InternalServerException","message":"Berth shut down before this request finished[^\n]*\}\n\n$/;

describe("graceful shutdown of berth serve", () => {
  it("finishes requests in flight, refuses new ones, and ends long streams with a last event", async () => {
    await withServe(["--shutdown-grace-seconds", "600"], async (serve) => {
      const runtime = await createRuntime(serve, "probe");
      const streams = await Promise.all(
        Array.from({ length: 10 }, (_, index) => startStream(serve, runtime.arn, `k${index}`)),
      );
      await Promise.all(streams.map((stream) => stream.body.started));
      // A short command: it finishes when told to (SIGUSR1), after the shutdown began.
      const marker = `short-command-${process.pid}`;
      const short = await startCommand(
        serve,
        runtime.arn,
        `trap 'echo done; exit 0' USR1; echo started; while :; do sleep 0.05; done # ${marker}`,
      );
      await short.next(); // contentStart
      assert.equal((await short.next()).value?.chunk?.contentDelta?.stdout, "started\n");
      const long = await startCommand(serve, runtime.arn, "echo long; sleep 600");
      await long.next(); // contentStart
      assert.equal((await long.next()).value?.chunk?.contentDelta?.stdout, "long\n");

      serve.process.child.kill("SIGTERM");
      await connectionsRefused(serve);
      const [bash] = pidsRunning(marker);
      assert.ok(bash !== undefined, "the short command still runs once the shutdown began");
      process.kill(bash, "SIGUSR1");
      const shortDone = await finish(short);
      assert.equal(shortDone.error, undefined);
      assert.equal(shortDone.stdout, "done\n");
      assert.deepEqual(shortDone.stop, { exitCode: 0, status: "COMPLETED" });

      // A second signal ends the grace period: what still runs is ended, each with a last word.
      serve.process.child.kill("SIGTERM");
      const bodies = await Promise.all(streams.map((stream) => stream.body.whole));
      for (const body of bodies) {
        assert.equal(body.failed, undefined, `the stream ended cleanly: ${body.text}`);
        assert.match(body.text, /^data: \{"n":1\}\n\n/);
        assert.match(body.text, lastEvent);
      }
      const longDone = await finish(long);
      assert.ok(longDone.error, "the long command's stream ended with an exception event");
      assert.equal(longDone.error.name, "InternalServerException");
      assert.match(longDone.error.message, /Berth shut down before this request finished/);
      assert.deepEqual(await serve.process.exit, { code: 0, signal: null });
    });
  });

  it("ends what still runs once the grace period is over", async () => {
    await withServe(["--shutdown-grace-seconds", "1"], async (serve) => {
      const runtime = await createRuntime(serve, "probe");
      const stream = await startStream(serve, runtime.arn, "never");
      await stream.body.started;
      serve.process.child.kill("SIGTERM");
      const body = await stream.body.whole;
      assert.equal(body.failed, undefined, `the stream ended cleanly: ${body.text}`);
      assert.match(body.text, lastEvent);
      assert.deepEqual(await serve.process.exit, { code: 0, signal: null });
      assert.ok(serve.process.lines.some((line) => line["msg"] === "grace period over"));
    });
  });

  it("answers a request still arriving on an open connection with a retryable error", async () => {
    await withServe(["--shutdown-grace-seconds", "600"], async (serve) => {
      const runtime = await createRuntime(serve, "probe");
      const stream = await startStream(serve, runtime.arn, "held");
      await stream.body.started;
      // A connection whose request is under way (its headers not yet complete) when Berth
      // begins to drain, so it is not closed as idle.
      const { hostname, port } = new URL(serve.process.url);
      const socket: Socket = connect(Number(port), hostname);
      await once(socket, "connect");
      socket.write(
        `GET /berth/v1/runtimes/${runtime.id}/sessions HTTP/1.1\r\nHost: ${hostname}\r\n`,
      );
      serve.process.child.kill("SIGTERM");
      // Logged as the shutdown begins: from then on, what arrives meets the drain.
      await waitFor("Berth to begin its shutdown", () => shuttingDown(serve.process));
      const answer: Buffer[] = [];
      socket.on("data", (chunk: Buffer) => answer.push(chunk));
      socket.write("\r\n");
      await once(socket, "close");
      const text = Buffer.concat(answer).toString("utf8");
      assert.match(text, /^HTTP\/1\.1 429 /);
      assert.match(text, /\r\nx-amzn-errortype: ThrottlingException\r\n/i);
      assert.match(text, /\r\nconnection: close\r\n/i);
      assert.match(text, /shutting down/);
      serve.process.child.kill("SIGTERM");
      assert.match((await stream.body.whole).text, lastEvent);
      assert.deepEqual(await serve.process.exit, { code: 0, signal: null });
    });
  });
});
