// WebSockets (issue 18) against baselines measured in the same run. Needs root (real sandboxes).
// A `berth serve` process (default settings) runs test/agents/websocket; the client is the `ws`
// package, the upgrade signed with SigV4 headers. Prints JSON. Settings: BENCH_SAMPLES (500),
// BENCH_MEGABYTES (256).
//
// - relay: a warm WebSocket through Berth to the agent's /ws (the session's sandbox, its bridge,
//   Berth's relay) against the same agent program run on the host and reached directly:
//   a 32-byte text echo round trip (interleaved) and binary throughput (1 MiB messages, echoed).
// - shell: opening a shell (upgrade to bash's first prompt) and a keystroke's echo round
//   trip (one byte typed, its echo by the terminal read back), against the WebSocket echo round
//   trip through Berth measured beside it (the transport's share).
import { spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { WebSocket } from "ws";
import { installWebSocketAgent } from "../test/support/agents.ts";
import { newSessionId } from "../test/support/runtimes.ts";
import { ShellTestClient } from "../test/support/shell-client.ts";
import {
  keepMessages,
  nextMessage,
  opened,
  sessionIdHeader,
  signUpgrade,
  type WebSocketTarget,
} from "../test/support/websockets.ts";
import {
  createReadyRuntime,
  percentiles,
  round,
  sdkClients,
  startBenchBerth,
  timeInterleaved,
} from "./support.ts";

const samples = Number(process.env["BENCH_SAMPLES"] ?? 500);
const megabytes = Number(process.env["BENCH_MEGABYTES"] ?? 256);

let agentDir = "";
const berth = await startBenchBerth({
  prepare: (dataDir) => {
    installWebSocketAgent(dataDir, "websocket");
    agentDir = `${dataDir}/artifacts/agents/websocket`;
  },
});
const direct = await startDirectAgent(agentDir);
try {
  const { control } = sdkClients(berth);
  const arn = await createReadyRuntime(control, `bench_ws_${process.pid}`, "websocket");
  const target = (path: string): WebSocketTarget => ({
    endpoint: berth.url,
    credentials: berth.credentials,
    region: "us-east-1",
    path: `/runtimes/${encodeURIComponent(arn)}${path}`,
  });
  const sessionId = newSessionId("bench-ws");
  const throughBerth = await openThroughBerth(target("/ws"), sessionId);
  const directly = await opened(keepMessages(new WebSocket(`ws://127.0.0.1:${direct.port}/ws`)));
  await nextMessage(directly);
  const results = {
    cores: availableParallelism(),
    relay: await relay(throughBerth, directly),
    shell: await shell(target("/ws/shells"), sessionId, throughBerth),
  };
  console.log(JSON.stringify(results, null, 2));
  throughBerth.close();
  directly.close();
} finally {
  direct.stop();
  await berth.stop();
}

async function relay(throughBerth: WebSocket, directly: WebSocket) {
  const text = "x".repeat(32);
  const echo = (socket: WebSocket) => async () => {
    socket.send(text);
    await nextMessage(socket);
  };
  for (let index = 0; index < 50; index += 1) await echo(throughBerth)(); // warm-up
  const [viaBerth, direct] = await timeInterleaved(samples, echo(throughBerth), echo(directly));
  const piece = Buffer.alloc(1 << 20, 5);
  const throughput = async (socket: WebSocket): Promise<number> => {
    const started = performance.now();
    for (let sent = 0; sent < megabytes; sent += 1) {
      socket.send(piece);
      await nextMessage(socket);
    }
    return round(megabytes / ((performance.now() - started) / 1000));
  };
  const berthMBps = await throughput(throughBerth);
  const directMBps = await throughput(directly);
  return {
    echoRoundTripMs: { berth: percentiles(viaBerth), direct: percentiles(direct) },
    echoedMegabytesPerSecond: {
      berth: berthMBps,
      direct: directMBps,
      ratio: round(berthMBps / directMBps),
    },
  };
}

async function shell(target: WebSocketTarget, sessionId: string, throughBerth: WebSocket) {
  const opens: number[] = [];
  for (let index = 0; index < 20; index += 1) {
    const upgrade = await signUpgrade(
      { ...target, query: { shellId: `bench-${index}` } },
      { [sessionIdHeader]: sessionId },
    );
    const started = performance.now();
    const client = await ShellTestClient.open(upgrade.url, { headers: upgrade.headers });
    await client.until("$ "); // the prompt: bash is up and reading
    opens.push(performance.now() - started);
    // Not timed: the shell's end.
    client.type("exit\n");
    await client.closed;
  }
  const upgrade = await signUpgrade(target, { [sessionIdHeader]: sessionId });
  const client = await ShellTestClient.open(upgrade.url, { headers: upgrade.headers });
  client.type("stty -icanon; PS1='$ '; echo ready\n");
  await client.until("ready\r\n");
  const keystroke = async (): Promise<void> => {
    const from = client.text.length;
    client.type("a");
    await client.until("a", from);
  };
  const echo = async (): Promise<void> => {
    throughBerth.send("x");
    await nextMessage(throughBerth);
  };
  const [keys, echoes] = await timeInterleaved(samples, keystroke, echo);
  client.hangUp();
  return {
    openMs: percentiles(opens),
    keystrokeEchoMs: percentiles(keys),
    webSocketEchoMs: percentiles(echoes),
  };
}

async function openThroughBerth(target: WebSocketTarget, sessionId: string): Promise<WebSocket> {
  const { url, headers } = await signUpgrade(target, { [sessionIdHeader]: sessionId });
  const socket = await opened(keepMessages(new WebSocket(url, { headers })));
  await nextMessage(socket); // the agent's greeting
  return socket;
}

/** The agent program on the host, on a free port: the baseline without Berth or a sandbox. */
async function startDirectAgent(dir: string): Promise<{ port: number; stop: () => void }> {
  const port = 20_000 + (process.pid % 20_000);
  const child = spawn(process.execPath, [`${dir}/main.js`], {
    env: { PORT: String(port) },
    stdio: "ignore",
  });
  for (;;) {
    const probe = new WebSocket(`ws://127.0.0.1:${port}/ws`);
    const ok = await new Promise<boolean>((resolve) => {
      probe.once("open", () => {
        resolve(true);
      });
      probe.once("error", () => {
        resolve(false);
      });
    });
    probe.terminate();
    if (ok) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return { port, stop: () => child.kill() };
}
