import assert from "node:assert/strict";
import { sandboxGroups, sandboxPids } from "./support/cgroups.ts";
import { existsSync, readFileSync, statSync } from "node:fs";
import {
  BedrockAgentCoreClient,
  InvokeAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  BedrockAgentCoreControlClient,
  CreateAgentRuntimeCommand,
  CreateAgentRuntimeEndpointCommand,
  GetAgentRuntimeCommand,
  GetAgentRuntimeEndpointCommand,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { SqliteMetadataStore } from "../src/adapters/sqlite/store.ts";
import { codeArtifact, placeCodeArtifact } from "./support/artifacts.ts";
import { spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import { hostSuite, isolationArgs, makeDataDir, removeDir } from "./support/berth.ts";
import { agentSources, installAgent, waitFor } from "./support/agents.ts";

describe("persistence (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const dataDir = makeDataDir();
  // Every start in this file is the same server configuration, as an operator's restarts would be.
  const isolation = isolationArgs();
  const cgroupParent = isolation[isolation.indexOf("--bubblewrap-cgroup-parent") + 1] ?? "";
  const startBerth = () => spawnBerth(["--data-dir", dataDir], {}, isolation);
  after(() => {
    removeDir(dataDir);
  });

  /** A zombie has released everything and only waits for init to reap it: it counts as gone. */
  function isRunning(pid: number): boolean {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
    } catch {
      return false;
    }
  }

  function clientFor(berth: BerthProcess): BedrockAgentCoreControlClient {
    const credentials = JSON.parse(readFileSync(join(dataDir, "credentials.json"), "utf8")) as {
      accessKeyId: string;
      secretAccessKey: string;
    };
    return new BedrockAgentCoreControlClient({
      endpoint: berth.url,
      region: "us-east-1",
      credentials,
      maxAttempts: 1,
    });
  }

  async function waitForStatus(
    client: BedrockAgentCoreControlClient,
    id: string,
    status: string,
  ): Promise<void> {
    // Preparation is asynchronous by contract, so poll the API as a user would, with a deadline.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const got = await client.send(new GetAgentRuntimeCommand({ agentRuntimeId: id }));
      if (got.status === status) return;
      assert.ok(Date.now() < deadline, `runtime ${id} stayed ${got.status}`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  describe("berth serve as a process", () => {
    let runtimeId = "";

    it("keeps credentials and the database private to the server", async () => {
      placeCodeArtifact(dataDir, "agents", "hello");
      const berth = await startBerth();
      berth.child.kill("SIGTERM");
      await berth.exit;
      assert.equal(statSync(join(dataDir, "credentials.json")).mode & 0o777, 0o600);
      assert.equal(statSync(join(dataDir, "berth.db")).mode & 0o777, 0o600);
      // Sandbox users may pass through the data dir to their own folders, never list it.
      assert.equal(statSync(dataDir).mode & 0o777, 0o711);
    });

    it("logs one structured line per request and stops cleanly on SIGTERM", async () => {
      const berth = await startBerth();
      const client = clientFor(berth);
      const created = await client.send(
        new CreateAgentRuntimeCommand({
          agentRuntimeName: "durable",
          agentRuntimeArtifact: codeArtifact(),
          roleArn: undefined,
        }),
      );
      runtimeId = created.agentRuntimeId ?? "";
      await waitForStatus(client, runtimeId, "READY");
      await client.send(
        new CreateAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, name: "prod" }),
      );
      client.destroy();

      berth.child.kill("SIGTERM");
      const exit = await berth.exit;
      assert.equal(exit.code, 0);
      const requestLine = berth.lines.find(
        (line) => line["msg"] === "request" && line["operation"] === "CreateAgentRuntime",
      );
      assert.ok(requestLine, "a request line for CreateAgentRuntime");
      assert.equal(requestLine["status"], 202);
      assert.equal(typeof requestLine["durationMs"], "number");
      assert.match(String(requestLine["requestId"]), /^[0-9a-f-]{36}$/);
      assert.deepEqual(
        berth.lines.slice(-2).map((line) => line["msg"]),
        ["shutting down", "stopped"],
      );
    });

    it("finds everything again after a restart", async () => {
      const berth = await startBerth();
      const client = clientFor(berth);
      const got = await client.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }));
      assert.equal(got.status, "READY");
      const endpoint = await client.send(
        new GetAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, endpointName: "prod" }),
      );
      assert.equal(endpoint.liveVersion, "1");
      assert.ok(
        !berth.lines.some((line) => line["msg"] === "generated credentials"),
        "credentials are generated only once",
      );
      client.destroy();
      berth.child.kill("SIGTERM");
      await berth.exit;
    });

    it("loses nothing acknowledged when killed with SIGKILL", async () => {
      const berth = await startBerth();
      const client = clientFor(berth);
      const names = ["after_kill_1", "after_kill_2", "after_kill_3"];
      for (const name of names) {
        await client.send(
          new CreateAgentRuntimeCommand({
            agentRuntimeName: name,
            agentRuntimeArtifact: codeArtifact(),
            roleArn: undefined,
          }),
        );
      }
      client.destroy();
      berth.child.kill("SIGKILL");
      assert.equal((await berth.exit).signal, "SIGKILL");

      const restarted = await startBerth();
      const again = clientFor(restarted);
      const listed = await again.send(new ListAgentRuntimesCommand({}));
      const listedNames = listed.agentRuntimes?.map((runtime) => runtime.agentRuntimeName);
      for (const name of names) assert.ok(listedNames?.includes(name), `${name} survived`);
      again.destroy();
      restarted.child.kill("SIGTERM");
      await restarted.exit;
    });

    it("takes its sandboxes down with it when killed, and clears what it left at the next start", async () => {
      installAgent(dataDir, agentSources.probe, "probe");
      const berth = await startBerth();
      const client = clientFor(berth);
      const created = await client.send(
        new CreateAgentRuntimeCommand({
          agentRuntimeName: "crash_probe",
          agentRuntimeArtifact: codeArtifact("agents", "probe"),
          roleArn: undefined,
        }),
      );
      await waitForStatus(client, created.agentRuntimeId ?? "", "READY");
      const credentials = await client.config.credentials();
      const data = new BedrockAgentCoreClient({
        endpoint: berth.url,
        region: "us-east-1",
        credentials,
        maxAttempts: 1,
      });
      const invoked = await data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: created.agentRuntimeArn,
          runtimeSessionId: `crash-session-${"x".repeat(40)}`,
          payload: Buffer.from("{}"),
        }),
      );
      await invoked.response?.transformToString();
      data.destroy();
      client.destroy();
      const pids = sandboxPids(cgroupParent);
      assert.ok(pids.length > 0, "the session's sandbox is running");

      berth.child.kill("SIGKILL");
      await berth.exit;
      await waitFor("every sandbox process to die with the server", () =>
        pids.every((pid) => !isRunning(pid)),
      );

      const restarted = await startBerth();
      assert.deepEqual(
        sandboxGroups(cgroupParent),
        [],
        "the restarted server removed the dead server's cgroups",
      );
      restarted.child.kill("SIGTERM");
      await restarted.exit;
      assert.ok(
        !existsSync(join("/sys/fs/cgroup/pids", cgroupParent)),
        "a clean stop leaves no cgroup behind",
      );
    });

    it("resumes preparing versions a crash left in CREATING", async () => {
      // Leave a version unsettled in the real database file, as a crash mid-preparation would.
      const store = new SqliteMetadataStore(join(dataDir, "berth.db"));
      const now = new Date().toISOString();
      const id = "crashed-AAAAAAAAAA";
      const arn = `arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/${id}`;
      const got = await store.findRuntime(runtimeId);
      assert.ok(got);
      const version = {
        ...(await store.findRuntimeVersion(runtimeId, 1))!,
        runtimeId: id,
        status: "CREATING" as const,
      };
      await store.createRuntime({
        runtime: { ...got, id, arn, name: "crashed" },
        version,
        defaultEndpoint: {
          runtimeId: id,
          name: "DEFAULT",
          arn: `${arn}/runtime-endpoint/DEFAULT`,
          description: "",
          targetVersion: 1,
          liveVersion: undefined,
          createdAt: now,
          lastUpdatedAt: now,
          tags: {},
        },
        idempotency: undefined,
      });
      await store.close();

      const berth = await startBerth();
      const client = clientFor(berth);
      await waitForStatus(client, id, "READY");
      const endpoint = await client.send(
        new GetAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "DEFAULT" }),
      );
      assert.equal(endpoint.liveVersion, "1");
      client.destroy();
      berth.child.kill("SIGTERM");
      await berth.exit;
    });

    it("refuses bad settings with every problem listed and exit code 2", async () => {
      await assert.rejects(
        spawnBerth(["--port", "99999", "--account-id", "12"]),
        (error: Error) => {
          assert.match(error.message, /exited \(2\)/);
          assert.match(error.message, /--port must be a whole number/);
          assert.match(error.message, /--account-id must be 12 digits/);
          return true;
        },
      );
    });
  });
});
