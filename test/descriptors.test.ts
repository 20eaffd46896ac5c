import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, openSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { installAgent } from "./support/agents.ts";
import {
  clientsOf,
  serveCommand,
  untilListening,
  type BerthProcess,
} from "./support/berth-process.ts";
import { hostSuite, makeDataDir, removeDir } from "./support/berth.ts";
import { runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("descriptors (a host suite: it tests the real parts, as root)", hostSuite, () => {
  /** test/agents/shell: runs the shell command it is sent, as an agent's own tools would. */
  const shellAgent = fileURLToPath(new URL("./agents/shell", import.meta.url));

  /** A file Berth holds open from its own start, as a descriptor its parent left it. */
  const inheritedFileName = "inherited-by-berth";

  /**
   * `berth serve` started the way a careless parent might: with an open file at fd 200 (a plain
   * inheritable descriptor; Node marks only a few low ones close-on-exec at its start).
   */
  async function spawnBerthHolding(dataDir: string, file: number) {
    const child = spawn(
      "/bin/bash", // dash takes only one-digit descriptors
      [
        "-c",
        'exec "$@" 200>&3 3>&-',
        "berth",
        ...serveCommand(["--data-dir", dataDir, "--sandbox-outbound", "none"]),
      ],
      {
        env: { PATH: process.env["PATH"], HOME: process.env["HOME"] },
        stdio: ["ignore", "pipe", "pipe", file],
      },
    );
    return untilListening(child);
  }

  /** `ls -l /proc/self/fd` as "fd -> target" pairs, without the listing's own directory. */
  function descriptorsIn(listing: string): string[] {
    return listing
      .split("\n")
      .map((line) => /(\d+) -> (.*)$/.exec(line))
      .filter((match) => match !== null && !/^\/proc\/\d+\/fd$/.test(match[2] ?? ""))
      .map((match) => `${match?.[1] ?? ""} -> ${match?.[2] ?? ""}`);
  }

  function assertOnlyStdio(listing: string): void {
    const numbers = descriptorsIn(listing).map((entry) => entry.split(" ")[0]);
    assert.deepEqual(numbers, ["0", "1", "2"], listing);
  }

  describe("descriptors in sessions", () => {
    const dataDir = makeDataDir();
    let berth: BerthProcess;
    let clients: ReturnType<typeof clientsOf>;
    let arn: string;

    before(async () => {
      installAgent(dataDir, shellAgent, "shell");
      const file = openSync(join(dataDir, inheritedFileName), "w");
      try {
        berth = await spawnBerthHolding(dataDir, file);
      } finally {
        closeSync(file);
      }
      clients = clientsOf(berth.url, dataDir);
      arn = (await createRuntime(clients, "shell")).arn;
    });

    after(async () => {
      clients.control.destroy();
      clients.data.destroy();
      berth.child.kill("SIGTERM");
      await berth.exit;
      removeDir(dataDir);
    });

    async function askAgent(session: string, command: string): Promise<string> {
      const response = await clients.data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: arn,
          runtimeSessionId: session,
          payload: Buffer.from(JSON.stringify({ command })),
        }),
      );
      const answer = JSON.parse((await response.response?.transformToString()) ?? "{}") as {
        stdout?: string;
      };
      return answer.stdout ?? "";
    }

    it("a command holds stdin, stdout and stderr only", async () => {
      const finished = await runCommand(clients.data, arn, newSessionId(), "ls -l /proc/self/fd");
      assertOnlyStdio(finished.stdout);
    });

    it("a program the agent starts holds stdin, stdout and stderr only", async () => {
      assertOnlyStdio(await askAgent(newSessionId(), "ls -l /proc/self/fd"));
    });

    it("no process of a session holds what Berth inherited", async () => {
      const session = newSessionId();
      await askAgent(session, "true");
      const command = "ls -l /proc/[0-9]*/fd/ 2>/dev/null";
      const everyProcess = [
        await askAgent(session, command),
        (await runCommand(clients.data, arn, session, command)).stdout,
      ].join("\n");
      assert.match(everyProcess, / 0 -> /, "the listing saw the session's processes");
      assert.doesNotMatch(everyProcess, new RegExp(inheritedFileName));
    });

    it("Berth lets go of what it inherited, so none of its own helpers holds it either", async () => {
      await askAgent(newSessionId(), "true");
      const holders = readdirSync("/proc")
        .filter((name) => /^\d+$/.test(name))
        .filter((pid) => {
          try {
            return readdirSync(`/proc/${pid}/fd`).some((fd) =>
              readlinkSync(`/proc/${pid}/fd/${fd}`).endsWith(`/${inheritedFileName}`),
            );
          } catch {
            return false; // gone, or a kernel thread
          }
        });
      // The test closed its own copy once Berth had started: no process may hold it now.
      assert.deepEqual(holders, []);
    });
  });
});
