import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { agentSources } from "./support/agents.ts";
import { berthBin, credentialsIn, spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import { hostSuite, isolationArgs, makeDataDir, removeDir } from "./support/berth.ts";

const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));
const dataDir = makeDataDir();
let server: BerthProcess | undefined;
let credentials = { accessKeyId: "", secretAccessKey: "" };

before(async () => {
  server = await spawnBerth(
    ["--data-dir", dataDir, "--sandbox-outbound", "none"],
    {},
    isolationArgs(),
  );
  credentials = credentialsIn(dataDir);
});
after(async () => {
  server?.child.kill("SIGTERM");
  await server?.exit;
  removeDir(dataDir);
});

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment a user would have after pasting the lines Berth printed. */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return {
    PATH: `${join(repositoryRoot, "node_modules", ".bin")}:${process.env["PATH"] ?? ""}`,
    HOME: process.env["HOME"],
    BERTH_ENDPOINT: server?.url,
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    AWS_REGION: "us-east-1",
    ...extra,
  };
}

/** Runs `berth ARGS` as its own process, as a person at a terminal would. */
async function berth(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; stdin?: string } = {},
): Promise<CliRun> {
  const child = spawn(process.execPath, [berthBin, ...args], {
    cwd: repositoryRoot,
    env: options.env ?? userEnv(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  child.stdin.end(options.stdin ?? "");
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}

const session = `cli-session-${String(process.pid)}-${"c".repeat(24)}`;

describe("the berth CLI", () => {
  it("creates a runtime from a local folder, uploading it, and shows it as a table or JSON", async () => {
    const created = await berth([
      "runtimes",
      "create",
      "cli_probe",
      "--code",
      agentSources.probe,
      "--entry",
      "main.js",
      "--storage",
      "/mnt/workspace",
      "--env",
      "GREETING=hi",
    ]);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /^status\s+READY$/m);
    assert.match(created.stdout, /^storage\s+\/mnt\/workspace$/m);
    const listed = await berth(["runtimes", "list", "--json"]);
    assert.equal(listed.code, 0);
    const runtimes = (JSON.parse(listed.stdout) as { agentRuntimes: Record<string, unknown>[] })
      .agentRuntimes;
    const mine = runtimes.find((runtime) => runtime["agentRuntimeName"] === "cli_probe");
    assert.ok(mine !== undefined);
    assert.equal(mine["status"], "READY");
    assert.match(String(mine["agentRuntimeId"]), /^cli_probe-[a-zA-Z0-9]{10}$/);
    const table = await berth(["runtimes", "list"]);
    assert.match(table.stdout, /^ID\s+NAME\s+VERSION\s+STATUS\s+UPDATED$/m);
    assert.match(table.stdout, /cli_probe\s+1\s+READY/);
    const got = await berth(["runtimes", "get", "cli_probe", "--json"]);
    const shown = JSON.parse(got.stdout) as Record<string, unknown>;
    assert.deepEqual(shown["environmentVariables"], { GREETING: "hi" });
    assert.equal(shown["$metadata"], undefined);
  });

  it("creates an MCP runtime with --protocol, and an update without it keeps the protocol", async () => {
    const created = await berth([
      "runtimes",
      "create",
      "cli_mcp",
      "--code",
      agentSources.probe,
      "--entry",
      "main.js",
      "--protocol",
      "MCP",
    ]);
    assert.equal(created.code, 0, created.stderr);
    const updated = await berth(["runtimes", "update", "cli_mcp", "--env", "A=1"]);
    assert.equal(updated.code, 0, updated.stderr);
    const shown = JSON.parse((await berth(["runtimes", "get", "cli_mcp", "--json"])).stdout) as {
      protocolConfiguration?: { serverProtocol?: string };
      agentRuntimeVersion?: string;
    };
    assert.equal(shown.agentRuntimeVersion, "2");
    assert.equal(shown.protocolConfiguration?.serverProtocol, "MCP");
    const wrong = await berth([
      "runtimes",
      "create",
      "x",
      "--image",
      "example.com/agent:1",
      "--protocol",
      "SOAP",
    ]);
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /--protocol must be one of HTTP, MCP, A2A, AGUI/);
  });

  it("makes uploaded code readable by the session, whatever its modes were", async () => {
    const folder = join(dataDir, "private-code");
    mkdirSync(folder, { mode: 0o700 });
    copyFileSync(join(agentSources.probe, "main.js"), join(folder, "main.js"));
    chmodSync(join(folder, "main.js"), 0o600);
    const created = await berth([
      "runtimes",
      "create",
      "private_code",
      "--code",
      folder,
      "--entry",
      "main.js",
    ]);
    assert.equal(created.code, 0, created.stderr);
    const answer = await berth([
      "invoke",
      "private_code",
      JSON.stringify({ action: "recall" }),
      "--session",
      session,
    ]);
    assert.equal(answer.code, 0, answer.stderr);
    assert.deepEqual(JSON.parse(answer.stdout), { memory: [] });
  });

  it("invokes with the payload as an argument, from a file and from stdin", async () => {
    const file = join(dataDir, "payload.json");
    writeFileSync(file, JSON.stringify({ action: "remember", value: "from a file" }));
    const fromArgument = await berth([
      "invoke",
      "cli_probe",
      JSON.stringify({ action: "remember", value: "argument" }),
      "--session",
      session,
    ]);
    assert.equal(fromArgument.code, 0, fromArgument.stderr);
    assert.deepEqual(JSON.parse(fromArgument.stdout), { count: 1 });
    await berth(["invoke", "cli_probe", "--file", file, "--session", session]);
    const fromStdin = await berth(["invoke", "cli_probe", "--session", session], {
      stdin: JSON.stringify({ action: "recall" }),
    });
    assert.deepEqual(JSON.parse(fromStdin.stdout), { memory: ["argument", "from a file"] });
  });

  it("execs with stdout and stderr apart, streamed as they come, and the command's exit code", async () => {
    const goFile = `/tmp/berth-cli-go-${String(process.pid)}`;
    const done = await berth([
      "exec",
      "cli_probe",
      "--session",
      session,
      "--",
      "echo out; echo err >&2; exit 7",
    ]);
    assert.deepEqual(done, { code: 7, stdout: "out\n", stderr: "err\n" });
    const child = spawn(
      process.execPath,
      [
        berthBin,
        "exec",
        "cli_probe",
        "--session",
        session,
        "--",
        // A name of this run's own: on the test-only parts, sessions share the host's /tmp.
        `echo first; while [ ! -e ${goFile} ]; do sleep 0.01; done; echo second`,
      ],
      { cwd: repositoryRoot, env: userEnv(), stdio: ["ignore", "pipe", "pipe"] },
    );
    let seen = "";
    let errors = "";
    child.stderr.on("data", (chunk: Buffer) => (errors += chunk.toString("utf8")));
    const closed = once(child, "close") as Promise<[number | null]>;
    await new Promise<void>((resolve, reject) => {
      child.stdout.on("data", (chunk: Buffer) => {
        seen += chunk.toString("utf8");
        if (seen.includes("first")) resolve();
      });
      void closed.then(([code]) => {
        reject(new Error(`berth exec ended (${String(code)}) before its first line: ${errors}`));
      });
    });
    assert.equal(seen, "first\n", "the first line arrived while the command still ran");
    assert.equal(
      (await berth(["exec", "cli_probe", "--session", session, "--", `touch ${goFile}`])).code,
      0,
    );
    const [code] = await closed;
    // On the test-only parts the session's /tmp is the host's: the file is left there.
    rmSync(goFile, { force: true });
    assert.equal(code, 0, errors);
    assert.equal(seen, "first\nsecond\n");
  });

  it("stops a session, lists sessions and storage, and deletes storage", async () => {
    await berth([
      "exec",
      "cli_probe",
      "--session",
      session,
      "--",
      "echo kept > /mnt/workspace/file",
    ]);
    const sessions = JSON.parse(
      (await berth(["sessions", "list", "cli_probe", "--json"])).stdout,
    ) as {
      sessions: Record<string, unknown>[];
    };
    assert.ok(
      sessions.sessions.some(
        (entry) => entry["sessionId"] === session && entry["state"] === "running",
      ),
    );
    const stopped = await berth(["stop", "cli_probe", "--session", session]);
    assert.equal(stopped.code, 0);
    assert.match(stopped.stdout, /Stopped session/);
    const storage = JSON.parse(
      (await berth(["storage", "list", "cli_probe", "--json"])).stdout,
    ) as {
      storage: Record<string, unknown>[];
    };
    const volume = storage.storage.find((entry) => entry["sessionId"] === session);
    assert.equal(volume?.["mountPath"], "/mnt/workspace");
    assert.equal(volume["attached"], false);
    const table = await berth(["storage", "list", "cli_probe"]);
    assert.match(
      table.stdout,
      /^SESSION ID\s+MOUNT PATH\s+USED\s+SIZE\s+ON DISK\s+ATTACHED\s+LAST USED$/m,
    );
    assert.equal((await berth(["storage", "delete", "cli_probe", session])).code, 0);
    const again = await berth([
      "exec",
      "cli_probe",
      "--session",
      session,
      "--",
      "ls -A /mnt/workspace",
    ]);
    assert.equal(again.stdout, "");
  });

  it("says what to do, with dependable exit codes, for the common mistakes", async () => {
    const unknown = await berth(["runtimes", "get", "no_such_runtime"]);
    assert.equal(unknown.code, 1);
    assert.match(
      unknown.stderr,
      /No agent runtime named or with id "no_such_runtime"; `berth runtimes list` shows them/,
    );
    const notRunning = await berth(["runtimes", "list"], {
      env: userEnv({ BERTH_ENDPOINT: "http://127.0.0.1:1" }),
    });
    assert.equal(notRunning.code, 3);
    assert.match(
      notRunning.stderr,
      /cannot reach Berth at http:\/\/127\.0\.0\.1:1 .*Is `berth serve` running/,
    );
    const wrongKey = await berth(["runtimes", "list"], {
      env: userEnv({ AWS_SECRET_ACCESS_KEY: "not-the-secret" }),
    });
    assert.equal(wrongKey.code, 4);
    assert.match(wrongKey.stderr, /refused the credentials.*export AWS_ACCESS_KEY_ID/s);
    const usage = await berth(["runtimes", "create", "x"]);
    assert.equal(usage.code, 2);
    assert.match(
      usage.stderr,
      /--code DIR and --entry FILE are required\nUsage: berth runtimes create/,
    );
    const execFailure = await berth([
      "exec",
      "no_such_runtime",
      "--session",
      session,
      "--",
      "true",
    ]);
    assert.equal(execFailure.code, 125, "Berth's failure is not mistaken for the command's");
    const help = await berth(["exec", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Examples:\n {2}berth exec/);
  });

  it("runs the README quick start exactly as written", hostSuite, async () => {
    const readme = readFileSync(join(repositoryRoot, "README.md"), "utf8");
    const block = readme.slice(
      readme.indexOf("<!-- quickstart:begin -->"),
      readme.indexOf("<!-- quickstart:end -->"),
    );
    const lines = block.split("\n").filter((line) => line.startsWith("npx berth "));
    assert.ok(lines.length >= 6, "the quick start has its commands");
    const outputs: string[] = [];
    for (const line of lines) {
      const child = spawn("bash", ["-c", line], {
        cwd: repositoryRoot,
        env: userEnv(),
        stdio: ["ignore", "pipe", "pipe"],
      });
      let output = "";
      child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")));
      const [code] = (await once(child, "close")) as [number];
      assert.equal(code, 0, `${line}\n${output}`);
      outputs.push(output);
    }
    const last = outputs.at(-1) ?? "";
    assert.match(last, /first commit/, "the git history survived the stop");
    assert.match(last, /adds\.test\.js/);
    assert.match(last, /ℹ pass 1/, "npm test runs again in the new sandbox");
    const example = spawn(
      process.execPath,
      [join(repositoryRoot, "examples", "sdk-quickstart", "quickstart.ts"), "demo"],
      { cwd: repositoryRoot, env: userEnv(), stdio: ["ignore", "pipe", "pipe"] },
    );
    let exampleOutput = "";
    example.stdout.on("data", (chunk: Buffer) => (exampleOutput += chunk.toString("utf8")));
    example.stderr.on("data", (chunk: Buffer) => (exampleOutput += chunk.toString("utf8")));
    const [exampleCode] = (await once(example, "close")) as [number];
    assert.equal(exampleCode, 0, exampleOutput);
    assert.match(exampleOutput, /written before the stop\nfrom the SDK/);
  });
});
