import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import type { TestBerth } from "./berth.ts";

/** The Python test scripts (boto3 against a test Berth). */
export const pythonTestDir = fileURLToPath(new URL("../python", import.meta.url));

/**
 * Why the Python clients cannot run here, or undefined when they can: python3 with a boto3 whose
 * botocore models AgentCore (pip's; distributions' packages are often too old), and the AWS CLI.
 */
function pythonClientsProblem(): string | undefined {
  const boto3 = spawnSync(
    "python3",
    [
      "-c",
      "import boto3; assert 'bedrock-agentcore-control' in boto3.session.Session().get_available_services()",
    ],
    { encoding: "utf8" },
  );
  if (boto3.error !== undefined) return `python3 is not installed (${boto3.error.message})`;
  if (boto3.status !== 0)
    return `python3 has no boto3 that models AgentCore (${lastLine(boto3.stderr)})`;
  const cli = spawnSync("aws", ["--version"], { encoding: "utf8" });
  if (cli.error !== undefined) return `the AWS CLI is not installed (${cli.error.message})`;
  if (cli.status !== 0) return `the AWS CLI does not run (${lastLine(cli.stderr)})`;
  return undefined;
}

/** The last line a program printed: a Python traceback's is the error itself. */
function lastLine(text: string): string {
  return text.trim().split("\n").at(-1) ?? "";
}

/** Throws, saying what to install, unless boto3 and the AWS CLI can run: never a silent skip. */
export function requirePythonClients(): void {
  const problem = pythonClientsProblem();
  if (problem === undefined) return;
  throw new Error(
    `The Python client tests need boto3 and the AWS CLI: ${problem}. ` +
      "Install them with `python3 -m pip install boto3 awscli` (scripts/setup.sh does).",
  );
}

/** The environment a user would set for boto3 and the AWS CLI, pointed at the test Berth. */
export function clientEnvironment(berth: TestBerth): NodeJS.ProcessEnv {
  return {
    PATH: process.env["PATH"],
    HOME: process.env["HOME"],
    BERTH_ENDPOINT: berth.berth.url,
    AWS_ACCESS_KEY_ID: berth.berth.credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: berth.berth.credentials.secretAccessKey,
    AWS_REGION: berth.settings.region,
    AWS_DEFAULT_REGION: berth.settings.region,
    // Nothing from the machine's own AWS setup may leak into the tests.
    AWS_CONFIG_FILE: "/dev/null",
    AWS_SHARED_CREDENTIALS_FILE: "/dev/null",
    AWS_EC2_METADATA_DISABLED: "true",
    AWS_MAX_ATTEMPTS: "1",
    PYTHONDONTWRITEBYTECODE: "1",
  };
}

export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end and collects what it printed. */
export async function runProgram(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  cwd = pythonTestDir,
): Promise<Finished> {
  const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}
