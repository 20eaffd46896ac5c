import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { s3Client } from "../src/adapters/s3/client.ts";
import { agentSources, waitFor } from "./support/agents.ts";
import { berthBin } from "./support/berth-process.ts";
import { hostSuite, removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { cephMissing, startCephS3, type CephS3 } from "./support/ceph-s3.ts";
import { invokeProbe } from "./support/commands.ts";
import { tarGzOf, uploadArchive, zipOf, type ZipEntry } from "./support/hostile-archives.ts";
import { newSessionId } from "./support/runtimes.ts";

const repositoryRoot = fileURLToPath(new URL("..", import.meta.url));
const probeSource = readFileSync(join(agentSources.probe, "main.js"), "utf8");
const maxArtifactBytes = 256 * 1024;

/** The probe agent with an answer.txt beside it, so an invocation tells which code it runs. */
function probeZip(answer: string, others: ZipEntry[] = []): Buffer {
  return zipOf([
    { path: "main.js", content: probeSource },
    { path: "answer.txt", content: answer },
    ...others,
  ]);
}

describe("code artifacts from the object store", { skip: hostSuite.skip ?? cephMissing() }, () => {
  /** Berth's own bucket (objectStoreUrl s3://berth-store/node-a), where uploads go. */
  const storeBucket = "berth-store";
  /** A bucket of the user's, as an AgentCore user keeps code in. */
  const codeBucket = "agent-code";
  const versionedBucket = "agent-code-versions";
  let runtimes = 0;
  /** The object store, a Berth using it, and the test's own S3 client: made in before(). */
  let running: { ceph: CephS3; harness: TestBerth; s3: S3Client } | undefined;
  const cleanups: (() => Promise<void> | void)[] = [];
  const started = () => {
    if (running === undefined) throw new Error("started in before()");
    return running;
  };

  before(async () => {
    const ceph = await startCephS3();
    cleanups.push(() => ceph.stop());
    const s3 = s3Client(ceph.connection(`s3://${storeBucket}`));
    cleanups.push(() => {
      s3.destroy();
    });
    await ceph.bucket(storeBucket);
    await ceph.bucket(codeBucket);
    await ceph.bucket(versionedBucket, { versioned: true });
    // The object store's keys are secrets: settings take them from the environment or a file.
    const configDir = mkdtempSync(join(tmpdir(), "berth-test-config-"));
    cleanups.push(() => {
      rmSync(configDir, { recursive: true, force: true });
    });
    const config = join(configDir, "berth.json");
    writeFileSync(
      config,
      JSON.stringify({
        objectStoreAccessKeyId: ceph.accessKeyId,
        objectStoreSecretAccessKey: ceph.secretAccessKey,
      }),
    );
    const harness = await startTestBerth([
      "--config",
      config,
      "--object-store-url",
      `s3://${storeBucket}/node-a`,
      "--object-store-endpoint",
      ceph.endpoint,
      "--object-store-force-path-style",
      "true",
      "--max-artifact-bytes",
      String(maxArtifactBytes),
      "--sandbox-outbound",
      "none",
    ]);
    cleanups.push(async () => {
      await harness.close();
      removeDir(harness.dataDir);
    });
    running = { ceph, harness, s3 };
  });

  after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  async function put(bucket: string, key: string, body: Buffer | string) {
    return started().s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
  }

  /** The probe's entry point in codeConfiguration.code.s3. */
  function artifactAt(code: { bucket: string; prefix: string; versionId?: string }) {
    return {
      codeConfiguration: {
        code: { s3: code },
        runtime: "NODE_22" as const,
        entryPoint: ["main.js"],
      },
    };
  }

  /** Creates a runtime from codeConfiguration.code.s3 and waits until its version settled. */
  async function createFrom(code: { bucket: string; prefix: string; versionId?: string }) {
    const { control } = started().harness;
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `object_code_${process.pid}_${(runtimes += 1)}`,
        agentRuntimeArtifact: artifactAt(code),
        roleArn: undefined,
      }),
    );
    return settled(created.agentRuntimeId);
  }

  /** The runtime once its latest version is no longer being prepared. */
  async function settled(agentRuntimeId: string | undefined) {
    const { control } = started().harness;
    return waitFor("the version to settle", async () => {
      const got = await control.send(new GetAgentRuntimeCommand({ agentRuntimeId }));
      return got.status === "CREATING" || got.status === "UPDATING" ? undefined : got;
    });
  }

  /** What /app/answer.txt holds in a new session of the runtime. */
  async function answerOf(runtimeArn: string | undefined): Promise<unknown> {
    const read = await invokeProbe(started().harness.data, runtimeArn ?? "", newSessionId(), {
      action: "read",
      path: "/app/answer.txt",
    });
    return read["ok"];
  }

  /** What an unpack may have left behind: the private unpacking area must be empty. */
  function leftovers(): string[] {
    const area = join(started().harness.dataDir, "artifact-cache", ".unpacking");
    return existsSync(area) ? readdirSync(area) : [];
  }

  it("runs a .zip put in a bucket with the AWS SDK", async () => {
    await put(codeBucket, "agents/probe.zip", probeZip("from the object store"));
    const runtime = await createFrom({ bucket: codeBucket, prefix: "agents/probe.zip" });
    assert.equal(runtime.status, "READY", runtime.failureReason);
    assert.equal(await answerOf(runtime.agentRuntimeArn), "from the object store");
    // Nothing of the local artifact store is used.
    assert.equal(existsSync(join(started().harness.dataDir, "artifacts", codeBucket)), false);
  });

  it("runs a .tar.gz object, told from a .zip by its first bytes", async () => {
    const archive = tarGzOf([
      { path: "main.js", content: probeSource },
      { path: "answer.txt", content: "from a tarball" },
    ]);
    await put(codeBucket, "agents/probe-code", archive);
    const runtime = await createFrom({ bucket: codeBucket, prefix: "agents/probe-code" });
    assert.equal(runtime.status, "READY", runtime.failureReason);
    assert.equal(await answerOf(runtime.agentRuntimeArn), "from a tarball");
  });

  it("runs the version of the object that versionId names", async () => {
    const first = await put(versionedBucket, "probe.zip", probeZip("first"));
    const second = await put(versionedBucket, "probe.zip", probeZip("second"));
    assert.ok(first.VersionId !== undefined && second.VersionId !== undefined);
    assert.notEqual(first.VersionId, second.VersionId);
    for (const [versionId, answer] of [
      [first.VersionId, "first"],
      [second.VersionId, "second"],
    ] as const) {
      const runtime = await createFrom({ bucket: versionedBucket, prefix: "probe.zip", versionId });
      assert.equal(runtime.status, "READY", runtime.failureReason);
      assert.equal(await answerOf(runtime.agentRuntimeArn), answer);
    }
  });

  it("runs the new code of an object put again in a new version, without a restart", async () => {
    const { harness } = started();
    await put(codeBucket, "agents/changing.zip", probeZip("before"));
    const runtime = await createFrom({ bucket: codeBucket, prefix: "agents/changing.zip" });
    assert.equal(runtime.status, "READY", runtime.failureReason);
    assert.equal(await answerOf(runtime.agentRuntimeArn), "before");
    await put(codeBucket, "agents/changing.zip", probeZip("after"));
    const updated = await harness.control.send(
      new UpdateAgentRuntimeCommand({
        agentRuntimeId: runtime.agentRuntimeId,
        agentRuntimeArtifact: artifactAt({ bucket: codeBucket, prefix: "agents/changing.zip" }),
        roleArn: undefined,
        networkConfiguration: { networkMode: "PUBLIC" },
      }),
    );
    assert.equal(updated.agentRuntimeVersion, "2");
    const latest = await settled(runtime.agentRuntimeId);
    assert.equal(latest.status, "READY", latest.failureReason);
    // The DEFAULT endpoint serves version 2 now: a new session there runs what the object holds.
    assert.equal(await answerOf(runtime.agentRuntimeArn), "after");
  });

  it("runs code the local artifact store holds without looking in a bucket of that name", async () => {
    const { ceph, harness } = started();
    // A version made before the object store was set names the local bucket "agents"; on the
    // object store that name may be a stranger's bucket, with other code in it.
    await ceph.bucket("agents");
    await put("agents", "local-first", probeZip("a stranger's"));
    const local = join(harness.dataDir, "artifacts", "agents", "local-first");
    mkdirSync(local, { recursive: true });
    writeFileSync(join(local, "main.js"), probeSource);
    writeFileSync(join(local, "answer.txt"), "the local artifact store's");
    const runtime = await createFrom({ bucket: "agents", prefix: "local-first" });
    assert.equal(runtime.status, "READY", runtime.failureReason);
    assert.equal(await answerOf(runtime.agentRuntimeArn), "the local artifact store's");
  });

  it("fails a version whose object, bucket or version does not exist, naming the s3:// location", async () => {
    const missingKey = await createFrom({ bucket: codeBucket, prefix: "agents/none.zip" });
    assert.equal(missingKey.status, "CREATE_FAILED");
    assert.match(missingKey.failureReason ?? "", /s3:\/\/agent-code\/agents\/none\.zip not found/);
    const missingBucket = await createFrom({ bucket: "no-such-bucket", prefix: "probe.zip" });
    assert.equal(missingBucket.status, "CREATE_FAILED");
    assert.match(missingBucket.failureReason ?? "", /s3:\/\/no-such-bucket\/probe\.zip not found/);
    const missingVersion = await createFrom({
      bucket: versionedBucket,
      prefix: "probe.zip",
      versionId: "no-such-version",
    });
    assert.equal(missingVersion.status, "CREATE_FAILED");
    assert.match(
      missingVersion.failureReason ?? "",
      /s3:\/\/agent-code-versions\/probe\.zip\?versionId=no-such-version not found/,
    );
  });

  it("refuses an object larger than maxArtifactBytes, and leaves nothing", async () => {
    const big = zipOf([
      { path: "main.js", content: probeSource },
      // Random, so the .zip itself is past the limit.
      { path: "noise.txt", content: randomBytes(maxArtifactBytes * 2).toString("base64") },
    ]);
    await put(codeBucket, "big.zip", big);
    const runtime = await createFrom({ bucket: codeBucket, prefix: "big.zip" });
    assert.equal(runtime.status, "CREATE_FAILED");
    assert.match(
      runtime.failureReason ?? "",
      /s3:\/\/agent-code\/big\.zip is larger than \d+ bytes \(maxArtifactBytes\)/,
    );
    assert.deepEqual(leftovers(), []);
  });

  it("refuses an object that is neither a .zip nor a .tar.gz, naming the field", async () => {
    await put(codeBucket, "main.js", probeSource);
    const runtime = await createFrom({ bucket: codeBucket, prefix: "main.js" });
    assert.equal(runtime.status, "CREATE_FAILED");
    assert.match(
      runtime.failureReason ?? "",
      /codeConfiguration\.code\.s3 s3:\/\/agent-code\/main\.js is neither a \.zip nor a \.tar\.gz/,
    );
  });

  it("refuses a .zip with an entry outside its folder, writing nothing there", async () => {
    const { harness } = started();
    for (const [key, escaping] of [
      ["dotdot.zip", "../escaped.js"],
      ["absolute.zip", `${harness.dataDir}/escaped.js`],
    ] as const) {
      await put(codeBucket, key, probeZip("hostile", [{ path: escaping, content: "escaped" }]));
      const runtime = await createFrom({ bucket: codeBucket, prefix: key });
      assert.equal(runtime.status, "CREATE_FAILED", key);
      assert.match(runtime.failureReason ?? "", /has an entry outside its folder/);
    }
    assert.equal(existsSync(join(harness.dataDir, "escaped.js")), false);
    assert.equal(existsSync(join(harness.dataDir, "artifact-cache", "escaped.js")), false);
    assert.deepEqual(leftovers(), []);
  });

  it("`berth runtimes create --code DIR` leaves the archive in Berth's bucket under code/ and the runtime runs it", async () => {
    const { harness, s3 } = started();
    const env = {
      PATH: process.env["PATH"],
      HOME: process.env["HOME"],
      BERTH_ENDPOINT: harness.berth.url,
      AWS_ACCESS_KEY_ID: harness.berth.credentials.accessKeyId,
      AWS_SECRET_ACCESS_KEY: harness.berth.credentials.secretAccessKey,
      AWS_REGION: harness.settings.region,
    };
    const created = await cli(
      ["runtimes", "create", "cli_object_code", "--code", agentSources.probe, "--entry", "main.js"],
      env,
    );
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /^status\s+READY$/m);
    const listed = await s3.send(
      new ListObjectsV2Command({
        Bucket: storeBucket,
        Prefix: "node-a/code/berth-uploads/cli_object_code-",
      }),
    );
    const keys = (listed.Contents ?? []).map((object) => object.Key);
    assert.equal(keys.length, 1, JSON.stringify(keys));
    assert.match(
      keys[0] ?? "",
      /^node-a\/code\/berth-uploads\/cli_object_code-[a-z0-9]+\.tar\.gz$/,
    );
    const got = await cli(["runtimes", "get", "cli_object_code", "--json"], env);
    const shown = JSON.parse(got.stdout) as {
      agentRuntimeArn: string;
      agentRuntimeArtifact: { codeConfiguration: { code: { s3: unknown } } };
    };
    assert.deepEqual(shown.agentRuntimeArtifact.codeConfiguration.code.s3, {
      bucket: storeBucket,
      prefix: keys[0],
    });
    const listing = await invokeProbe(
      started().harness.data,
      shown.agentRuntimeArn,
      newSessionId(),
      {
        action: "list",
        path: "/app",
      },
    );
    assert.deepEqual(listing["ok"], ["main.js"]);
  });

  it("answers an upload with the object it became, and refuses a second upload there", async () => {
    const { harness } = started();
    const archive = tarGzOf([{ path: "main.js", content: probeSource }]);
    const first = await uploadArchive(harness, "berth-uploads", "twice", archive);
    assert.equal(first.status, 200, JSON.stringify(first.json));
    assert.deepEqual(first.json["s3"], {
      bucket: storeBucket,
      prefix: "node-a/code/berth-uploads/twice.tar.gz",
    });
    const second = await uploadArchive(harness, "berth-uploads", "twice", archive);
    assert.equal(second.status, 409);
    assert.equal(second.errorType, "ConflictException");
    // It names the location the caller asked for, not Berth's object.
    assert.match(
      String(second.json["message"]),
      /^s3:\/\/berth-uploads\/twice already exists; upload to a new prefix/,
    );
    // The same prefix in another bucket is another location.
    const elsewhere = await uploadArchive(harness, "other-uploads", "twice", archive);
    assert.equal(elsewhere.status, 200, JSON.stringify(elsewhere.json));
    assert.deepEqual(elsewhere.json["s3"], {
      bucket: storeBucket,
      prefix: "node-a/code/other-uploads/twice.tar.gz",
    });
  });

  it("fails a version with a retryable reason while the object store is unreachable, and keeps running code it unpacked", async () => {
    await put(codeBucket, "later.zip", probeZip("later"));
    await put(codeBucket, "steady.zip", probeZip("steady"));
    const steady = await createFrom({ bucket: codeBucket, prefix: "steady.zip" });
    assert.equal(steady.status, "READY", steady.failureReason);
    const { ceph } = started();
    await ceph.stopGateway();
    try {
      // Its object cannot be looked up: the tree last unpacked from it is used.
      assert.equal(await answerOf(steady.agentRuntimeArn), "steady");
      const runtime = await createFrom({ bucket: codeBucket, prefix: "later.zip" });
      assert.equal(runtime.status, "CREATE_FAILED");
      assert.match(
        runtime.failureReason ?? "",
        /the object store \(http:\/\/127\.0\.0\.1:\d+\) could not be reached looking up s3:\/\/agent-code\/later\.zip .*retry once the object store answers/,
      );
    } finally {
      await ceph.startGateway();
    }
    const retried = await createFrom({ bucket: codeBucket, prefix: "later.zip" });
    assert.equal(retried.status, "READY", retried.failureReason);
  });
});

/** Runs `berth ARGS` as its own process, as a person at a terminal would. */
async function cli(
  args: string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [berthBin, ...args], {
    cwd: repositoryRoot,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
  const [code] = (await once(child, "close")) as [number | null];
  return { code, stdout, stderr };
}
