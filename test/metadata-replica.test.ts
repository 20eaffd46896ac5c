import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { DatabaseSync } from "node:sqlite";
import {
  CreateAgentRuntimeEndpointCommand,
  GetAgentRuntimeCommand,
  GetAgentRuntimeEndpointCommand,
  ListAgentRuntimeEndpointsCommand,
  type BedrockAgentCoreControlClient,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { S3ObjectStore } from "../src/adapters/s3/object-store.ts";
import { waitFor } from "./support/agents.ts";
import {
  clientsOf,
  killAll,
  credentialsIn,
  serveCommand,
  spawnBerth,
  testPartsEnvironment,
  type BerthProcess,
} from "./support/berth-process.ts";
import { hostSuite, makeDataDir, removeDir } from "./support/berth.ts";
import { cephMissing, putProbeZip, startCephS3, type CephS3 } from "./support/ceph-s3.ts";
import { createRuntime } from "./support/runtimes.ts";
import { freePort } from "./support/ports.ts";

describe(
  "the metadata database in the object store (real Berth processes and Ceph RGW, as root)",
  { skip: hostSuite.skip ?? cephMissing() },
  () => {
    const bucket = "berth-metadata";
    const objectStoreUrl = `s3://${bucket}/cluster`;
    const dirs: string[] = [];
    const running: BerthProcess[] = [];
    let ceph: CephS3 | undefined;
    let objectStore: S3ObjectStore;
    let serveArgs: string[];
    /** The settings of serveArgs but for the object store's URL and endpoint. */
    let argsFor: (store: { url: string; endpoint: string }) => string[];

    before(async () => {
      const s3Server = (ceph = await startCephS3());
      await s3Server.bucket(bucket);
      objectStore = new S3ObjectStore(s3Server.connection(objectStoreUrl));
      await putProbeZip(s3Server, bucket, "code/probe.zip");
      argsFor = ({ url, endpoint }) => [
        // This server's arguments, with the endpoint a test may point elsewhere.
        ...s3Server.berthArgs(url).map((arg) => (arg === s3Server.endpoint ? endpoint : arg)),
        // A lease of 3 s: a machine that died is taken over 3 s later.
        "--session-storage-checkpoint-seconds",
        "1",
      ];
      serveArgs = argsFor({ url: objectStoreUrl, endpoint: s3Server.endpoint });
    });

    after(async () => {
      await killAll(running);
      for (const dir of dirs) removeDir(dir);
      await ceph?.stop();
    });

    function emptyDataDir(): string {
      const dir = makeDataDir();
      dirs.push(dir);
      return dir;
    }

    /** Runs `berth serve` expecting it to refuse to start: its exit code and what it printed. */
    async function refusedStart(args: string[]): Promise<{ code: number | null; stderr: string }> {
      const [program = "", ...rest] = serveCommand(args);
      const child = spawn(program, rest, {
        env: { PATH: process.env["PATH"], HOME: process.env["HOME"], ...testPartsEnvironment },
        stdio: ["ignore", "ignore", "pipe"],
      });
      const stderr: string[] = [];
      child.stderr.on("data", (chunk: Buffer) => stderr.push(chunk.toString("utf8")));
      const [code] = (await once(child, "exit")) as [number | null];
      return { code, stderr: stderr.join("") };
    }

    async function start(dataDir: string): Promise<BerthProcess> {
      const berth = await spawnBerth(["--data-dir", dataDir, ...serveArgs]);
      running.push(berth);
      return berth;
    }

    /** What the object store holds as current: the head, and its snapshot opened. */
    async function currentSnapshot<T>(read: (database: DatabaseSync) => T): Promise<T> {
      const head = await objectStore.get("metadata/head", 2 ** 30);
      assert.ok(head !== undefined, "the object store has a metadata head");
      const payload = (JSON.parse(head.body.toString("utf8")) as { payload: { key: string } })
        .payload;
      const snapshot = await objectStore.get(payload.key, 2 ** 30);
      assert.ok(snapshot !== undefined, `${payload.key} exists`);
      const file = join(emptyDataDir(), "snapshot.db");
      writeFileSync(file, gunzipSync(snapshot.body));
      const database = new DatabaseSync(file, { readOnly: true });
      try {
        return read(database);
      } finally {
        database.close();
      }
    }

    /** What a client sees of a runtime and its endpoints (the answers without their metadata). */
    async function seenBy(control: BedrockAgentCoreControlClient, runtimeId: string) {
      const answer = (output: object) =>
        Object.fromEntries(Object.entries(output).filter(([field]) => field !== "$metadata"));
      return {
        runtime: answer(
          await control.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId })),
        ),
        endpoints: answer(
          await control.send(new ListAgentRuntimeEndpointsCommand({ agentRuntimeId: runtimeId })),
        ),
      };
    }

    let first: BerthProcess;
    let second: BerthProcess;
    let firstDataDir: string;
    let secondDataDir: string;
    let runtimeId = "";
    let seenOnFirst: Awaited<ReturnType<typeof seenBy>>;

    it("a Berth killed outright is replaced by one on an empty data directory, serving the same runtimes to the same keys", async () => {
      firstDataDir = emptyDataDir();
      first = await start(firstDataDir);
      const { control } = clientsOf(first.url, firstDataDir);
      const runtime = await createRuntime({ control }, "probe", {
        agentRuntimeArtifact: {
          codeConfiguration: {
            code: { s3: { bucket, prefix: "code/probe.zip" } },
            runtime: "NODE_22",
            entryPoint: ["main.js"],
          },
        },
      });
      runtimeId = runtime.id;
      await control.send(
        new CreateAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, name: "live" }),
      );
      await waitFor("the live endpoint to be ready", async () => {
        const endpoint = await control.send(
          new GetAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, endpointName: "live" }),
        );
        return endpoint.status === "READY";
      });
      seenOnFirst = await seenBy(control, runtimeId);
      control.destroy();
      // Durable: the object store's current snapshot holds both endpoints, serving version 1.
      await waitFor("the snapshot with both endpoints to be current", () =>
        currentSnapshot(
          (database) =>
            database
              .prepare(
                "SELECT COUNT(*) AS ready FROM endpoints WHERE runtime_id = ? AND live_version = 1",
              )
              .get(runtimeId)?.["ready"] === 2,
        ),
      );

      first.child.kill("SIGKILL");
      await first.exit;
      secondDataDir = emptyDataDir();
      second = await start(secondDataDir);
      assert.ok(
        second.lines.some(
          (line) => line["msg"] === "restored the metadata database from the object store",
        ),
      );
      assert.deepEqual(credentialsIn(secondDataDir), credentialsIn(firstDataDir));
      // The first machine's keys, as its clients hold them, sign requests to the second.
      const clients = clientsOf(second.url, firstDataDir);
      assert.deepEqual(await seenBy(clients.control, runtimeId), seenOnFirst);
      clients.control.destroy();
    });

    it("refuses another Berth while one holds the object store, naming it, with exit code 2", async () => {
      const { code, stderr } = await refusedStart(["--data-dir", emptyDataDir(), ...serveArgs]);
      const owner = readFileSync(join(secondDataDir, "node-id"), "utf8").trim();
      assert.equal(code, 2, stderr);
      assert.equal(
        stderr,
        `berth serve: the metadata database in ${objectStoreUrl}/ is in use by another Berth process (node ${owner}) sharing the object store: stop that one first, or give this one another --object-store-url (a bucket or prefix of its own)\n`,
      );
    });

    it("lets go of the metadata on a graceful stop", async () => {
      second.child.kill("SIGTERM");
      assert.equal((await second.exit).code, 0);
      const head = await objectStore.get("metadata/head", 2 ** 30);
      assert.equal(
        (JSON.parse(head?.body.toString("utf8") ?? "{}") as { holder: unknown }).holder,
        null,
      );
    });

    it("stops a Berth that another took the object store from while it stalled: as on SIGTERM, exit code 1", async () => {
      const stalledDataDir = emptyDataDir();
      const stalled = await start(stalledDataDir);
      const stalledNode = readFileSync(join(stalledDataDir, "node-id"), "utf8").trim();
      // Stalled (or cut off from the store) for longer than a lease: it renews nothing.
      stalled.child.kill("SIGSTOP");
      const taker = await start(emptyDataDir());
      const tookOver = taker.lines.find(
        (line) => line["msg"] === "took over the metadata database from a node that is gone",
      );
      assert.equal(tookOver?.["node"], stalledNode);

      stalled.child.kill("SIGCONT");
      assert.equal((await stalled.exit).code, 1);
      const shutdown = stalled.lines.find((line) =>
        /shutting down, as on SIGTERM/.test(String(line["msg"])),
      );
      assert.equal(shutdown?.["level"], "error");
      assert.ok(stalled.lines.some((line) => line["msg"] === "stopped"));

      taker.child.kill("SIGTERM");
      assert.equal((await taker.exit).code, 0);
    });

    it("refuses to start, in one line and with exit code 2, when the object store cannot be reached", async () => {
      const closedPort = await freePort();
      const endpoint = `http://127.0.0.1:${closedPort}`;
      const dataDir = emptyDataDir();
      const { code, stderr } = await refusedStart([
        "--data-dir",
        dataDir,
        ...argsFor({ url: objectStoreUrl, endpoint }),
      ]);
      assert.equal(code, 2, stderr);
      assert.equal(
        stderr,
        `berth serve: cannot reach the object store ${endpoint} for ${objectStoreUrl}/ (connect ECONNREFUSED 127.0.0.1:${closedPort}): check --object-store-endpoint, and that the store runs and this machine reaches it\n`,
      );
      assert.deepEqual(readdirSync(dataDir), [], "nothing is written to the data directory");
    });

    it("refuses to start, naming the bucket, when the bucket does not exist", async () => {
      const endpoint = ceph?.endpoint ?? "";
      const { code, stderr } = await refusedStart([
        "--data-dir",
        emptyDataDir(),
        ...argsFor({ url: "s3://no-such-bucket/berth", endpoint }),
      ]);
      assert.equal(code, 2, stderr);
      assert.equal(
        stderr,
        `berth serve: the bucket "no-such-bucket" of s3://no-such-bucket/berth/ does not exist at ${endpoint}: check the bucket name in --object-store-url and --object-store-endpoint (Berth does not create buckets)\n`,
      );
    });

    it("refuses to start on a versioned RGW bucket, which ignores If-None-Match", async () => {
      const versioned = await (ceph as CephS3).bucket("berth-versioned", { versioned: true });
      const endpoint = ceph?.endpoint ?? "";
      const { code, stderr } = await refusedStart([
        "--data-dir",
        emptyDataDir(),
        ...argsFor({ url: `s3://${versioned}/berth`, endpoint }),
      ]);
      assert.equal(code, 2, stderr);
      assert.equal(
        stderr,
        `berth serve: s3://${versioned}/berth/ at ${endpoint} does not honour conditional writes (If-None-Match); Berth needs them to keep one writer per volume (Ceph RGW ignores them in versioned buckets): give it a bucket where they hold\n`,
      );
    });
  },
);
