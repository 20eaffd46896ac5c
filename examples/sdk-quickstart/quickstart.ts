// The README quick start from TypeScript, with the official AWS SDK clients pointed at Berth.
// Run it after `berth runtimes create demo ...` (see the README):
//   BERTH_ENDPOINT=http://127.0.0.1:8787 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
//     node examples/sdk-quickstart/quickstart.ts [runtime-name]
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import {
  BedrockAgentCoreControlClient,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";

const config = {
  endpoint: process.env["BERTH_ENDPOINT"] ?? "http://127.0.0.1:8787",
  region: process.env["AWS_REGION"] ?? "us-east-1",
};
const control = new BedrockAgentCoreControlClient(config);
const data = new BedrockAgentCoreClient(config);

const name = process.argv[2] ?? "demo";
const runtimes = await control.send(new ListAgentRuntimesCommand({}));
const runtime = runtimes.agentRuntimes?.find((candidate) => candidate.agentRuntimeName === name);
if (runtime?.agentRuntimeArn === undefined)
  throw new Error(`no runtime named ${name}: create it first`);
const agentRuntimeArn = runtime.agentRuntimeArn;
const runtimeSessionId = `sdk-quickstart-${Date.now()}-${"0".repeat(20)}`;

/** Runs a shell command in the session, printing its output as it streams; returns its exit code. */
async function run(command: string): Promise<number> {
  const response = await data.send(
    new InvokeAgentRuntimeCommandCommand({ agentRuntimeArn, runtimeSessionId, body: { command } }),
  );
  for await (const event of response.stream ?? []) {
    const delta = event.chunk?.contentDelta;
    if (delta?.stdout !== undefined) process.stdout.write(delta.stdout);
    if (delta?.stderr !== undefined) process.stderr.write(delta.stderr);
    if (event.chunk?.contentStop !== undefined) return event.chunk.contentStop.exitCode ?? 1;
  }
  throw new Error("the stream ended without an exit code");
}

const answer = await data.send(
  new InvokeAgentRuntimeCommand({
    agentRuntimeArn,
    runtimeSessionId,
    payload: JSON.stringify({ prompt: "hello from the SDK" }),
    contentType: "application/json",
  }),
);
console.log(`agent: ${(await answer.response?.transformToString()) ?? ""}`);

await run(
  "cd /mnt/workspace && echo 'written before the stop' > notes.txt && git init -q && git add -A && git -c user.name=sdk -c user.email=sdk@example.com commit -qm 'from the SDK'",
);
await data.send(new StopRuntimeSessionCommand({ agentRuntimeArn, runtimeSessionId }));
console.log("session stopped; starting it again");
const exitCode = await run("cd /mnt/workspace && cat notes.txt && git log --format=%s");
control.destroy();
data.destroy();
process.exitCode = exitCode;
