import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import {
  InvokeAgentRuntimeCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { clusterHeaders, signForwarded } from "../src/wire/cluster-signature.ts";
import { clientsOf, killAll, spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import { hostSuite, makeDataDir, removeDir, startTestBerth } from "./support/berth.ts";
import { cephMissing, putProbeZip, startCephS3, type CephS3 } from "./support/ceph-s3.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "./support/postgres.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";
import { sendAsIs, sendRaw, type RawResponse } from "./support/signed-request.ts";

/*
 * Requests that pretend to come from another node of the cluster, sent as an attacker would:
 * raw HTTP with made-up, borrowed or replayed x-berth-cluster-* headers, to a real `berth serve`
 * that is a node of a cluster (PostgreSQL, Ceph RGW, real sandboxes), and to a Berth in none.
 */

const sessionHeader = "x-amzn-bedrock-agentcore-runtime-session-id";
const twoMinutesMs = 120_000;

/** A JSON invocation of the probe, as a node would forward it: path, headers, body. */
function invocation(arn: string, sessionId: string, payload: unknown) {
  const body = Buffer.from(JSON.stringify(payload));
  return {
    method: "POST",
    target: `/runtimes/${encodeURIComponent(arn)}/invocations`,
    headers: { "content-type": "application/json", [sessionHeader]: sessionId },
    body,
    contentSha256: createHash("sha256").update(body).digest("hex"),
  };
}

type Invocation = ReturnType<typeof invocation>;

/** Sends `request` as is, with `extraHeaders` (cluster headers, signed or made up). */
function send(url: string, request: Invocation, extraHeaders: Record<string, string>) {
  return sendAsIs(url, {
    method: request.method,
    path: request.target,
    headers: { ...request.headers, ...extraHeaders },
    body: request.body,
  });
}

/** The cluster headers a node with `secret` would add for node `to`, signed `ageMs` ago. */
function signedBy(
  secret: string,
  request: Invocation,
  to: string,
  ageMs = 0,
): Record<string, string> {
  const from = { nodeId: "another-node", secret, now: new Date(Date.now() - ageMs) };
  return signForwarded(request, from, to);
}

/** Made-up cluster headers: what someone without the secret can send. */
function madeUp(request: Invocation): Record<string, string> {
  return {
    [clusterHeaders.node]: "node-1",
    [clusterHeaders.date]: new Date().toISOString(),
    [clusterHeaders.nonce]: randomBytes(16).toString("hex"),
    [clusterHeaders.signedHeaders]: `content-type;${sessionHeader}`,
    [clusterHeaders.contentSha256]: request.contentSha256,
    [clusterHeaders.signature]: randomBytes(32).toString("hex"),
  };
}

/** Asserts the answer is a 403 UnrecognizedClientException whose message matches `why`. */
function assertRefused(answer: RawResponse, why: RegExp): void {
  assert.equal(answer.status, 403, answer.body);
  assert.equal(answer.headers["x-amzn-errortype"], "UnrecognizedClientException");
  assert.match((JSON.parse(answer.body) as { message: string }).message, why);
}

const notSigned = /its signature does not match: the nodes' clusterSecret settings differ/;

describe(
  "requests posing as another node of a cluster (real node on PostgreSQL and Ceph RGW, as root)",
  { skip: postgresMissing() ?? cephMissing() ?? hostSuite.skip },
  () => {
    const bucket = "berth-hostile";
    const secret = randomBytes(32).toString("hex");
    const dataDir = makeDataDir();
    let postgres: TestPostgres | undefined;
    let ceph: CephS3 | undefined;
    let berth: BerthProcess | undefined;
    let clients: ReturnType<typeof clientsOf> | undefined;
    let runtime = { id: "", arn: "" };
    /** The node's id, as `berth nodes list` shows it: what a forwarded request is signed for. */
    let nodeId = "";

    const node = () => {
      if (berth === undefined || clients === undefined) throw new Error("started in before()");
      return { url: berth.url, lines: berth.lines, ...clients };
    };

    before(async () => {
      postgres = await startPostgres();
      ceph = await startCephS3();
      await ceph.bucket(bucket);
      await putProbeZip(ceph, bucket, "code/probe.zip");
      berth = await spawnBerth(
        [
          "--data-dir",
          dataDir,
          ...ceph.berthArgs(`s3://${bucket}/berth`),
          "--database-url",
          await postgres.freshDatabase(),
          "--node-name",
          "hostile-test-node",
          "--sandbox-outbound",
          "none",
        ],
        { BERTH_CLUSTER_SECRET: secret },
      );
      clients = clientsOf(berth.url, dataDir);
      const listed = await sendRaw(berth.url, {
        method: "GET",
        path: "/berth/v1/nodes",
        credentials: clients.credentials,
      });
      nodeId = (JSON.parse(listed.body) as { nodes: { id: string }[] }).nodes[0]?.id ?? "";
      runtime = await createRuntime({ control: clients.control }, "probe", {
        agentRuntimeArtifact: {
          codeConfiguration: {
            code: { s3: { bucket, prefix: "code/probe.zip" } },
            runtime: "NODE_22",
            entryPoint: ["main.js"],
          },
        },
      });
    });

    after(async () => {
      clients?.data.destroy();
      clients?.control.destroy();
      await killAll(berth === undefined ? [] : [berth]);
      removeDir(dataDir);
      await ceph?.stop();
      await postgres?.stop();
    });

    /** Asserts no session `sessionId` runs, was started, or was ever mentioned in the log. */
    async function assertNothingRan(sessionId: string): Promise<void> {
      const answer = await sendRaw(node().url, {
        method: "GET",
        path: `/berth/v1/runtimes/${runtime.id}/sessions`,
        credentials: node().credentials,
      });
      assert.equal(answer.status, 200, answer.body);
      const { sessions } = JSON.parse(answer.body) as { sessions: { sessionId: string }[] };
      assert.deepEqual(
        sessions.filter((session) => session.sessionId === sessionId),
        [],
      );
      const mentions = node().lines.filter((line) => JSON.stringify(line).includes(sessionId));
      assert.deepEqual(mentions, [], "no log line names the session");
    }

    it("refuses an unsigned invocation carrying made-up cluster headers, before anything runs", async () => {
      const sessionId = newSessionId("madeup");
      const request = invocation(runtime.arn, sessionId, { action: "whoami" });
      assertRefused(await send(node().url, request, madeUp(request)), notSigned);
      // Only some of them, as a client trying its luck: refused for the ones missing.
      assertRefused(
        await send(node().url, request, { [clusterHeaders.node]: "node-1" }),
        /the x-berth-cluster-date header is missing/,
      );
      await assertNothingRan(sessionId);
    });

    it("refuses a client with a valid key that adds cluster headers to pass as a node", async () => {
      const sessionId = newSessionId("borrowed");
      const request = invocation(runtime.arn, sessionId, { action: "whoami" });
      const signedByClient = (extra: Record<string, string>) =>
        sendRaw(node().url, {
          method: "POST",
          path: request.target,
          body: request.body.toString("utf8"),
          credentials: node().credentials,
          headers: { [sessionHeader]: sessionId, ...extra },
        });
      // Its SigV4 signature covers the made-up headers too; it proves nothing of a node, and
      // the cluster signature covers none of the SigV4 headers.
      assertRefused(
        await signedByClient(madeUp(request)),
        /it carries headers its signature does not cover: x-amz-date, x-amz-content-sha256, authorization$/,
      );
      // A cluster signature made with its own secret key: the cluster secret is another.
      const withItsKey = signedBy(node().credentials.secretAccessKey, request, nodeId);
      assertRefused(await send(node().url, request, withItsKey), notSigned);
      // One cluster header beside a valid SigV4 signature: checked as a node's, so refused.
      assertRefused(
        await signedByClient({ [clusterHeaders.node]: "node-1" }),
        /x-berth-cluster-\* headers are for Berth nodes only: a client signs with SigV4/,
      );
      await assertNothingRan(sessionId);
    });

    it("refuses a captured forwarded request sent again, at once or two minutes later", async () => {
      const sessionId = newSessionId("replay");
      const request = invocation(runtime.arn, sessionId, {
        action: "remember",
        value: "sent once",
      });
      // Signed with the cluster's secret, as the node that sent it did: it is served.
      const captured = signedBy(secret, request, nodeId);
      const served = await send(node().url, request, captured);
      assert.equal(served.status, 200, served.body);
      assert.deepEqual(JSON.parse(served.body), { count: 1 });
      // Sent again as captured, at once: each request is taken once.
      assertRefused(
        await send(node().url, request, captured),
        /it was received before \(a replay\)/,
      );
      // The same request as it was two minutes ago: too old.
      const old = signedBy(secret, request, nodeId, twoMinutesMs);
      assertRefused(
        await send(node().url, request, old),
        /its time .* is more than 60 s from this node's: keep the nodes' clocks in sync \(NTP\)/,
      );
      // And with its date set to now: the date is signed.
      const redated = { ...old, [clusterHeaders.date]: new Date().toISOString() };
      assertRefused(await send(node().url, request, redated), notSigned);
      // A new one whose body was changed on the way: the body's hash is signed.
      const otherBody = { ...request, body: Buffer.from('{"action":"remember","value":"evil"}') };
      assertRefused(
        await send(node().url, otherBody, signedBy(secret, request, nodeId)),
        /the body's SHA-256 is not the one it declared/,
      );
      // The agent saw the one request that was served, nothing since.
      const recalled = await node().data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: sessionId,
          payload: Buffer.from(JSON.stringify({ action: "recall" })),
        }),
      );
      const text = (await recalled.response?.transformToString()) ?? "";
      assert.deepEqual(JSON.parse(text), { memory: ["sent once"] });
      await node().data.send(
        new StopRuntimeSessionCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: sessionId,
        }),
      );
    });
  },
);

describe("a Berth in no cluster", () => {
  let berth: Awaited<ReturnType<typeof startTestBerth>> | undefined;
  before(async () => {
    berth = await startTestBerth();
  });
  after(async () => {
    await berth?.close();
    if (berth !== undefined) removeDir(berth.dataDir);
  });

  it("refuses any request with cluster headers, saying it is in no cluster", async () => {
    const started = berth;
    assert.ok(started !== undefined);
    const noCluster =
      /^This Berth is in no cluster \(no databaseUrl\): it takes no requests forwarded by other nodes$/;
    const arn = "arn:aws:bedrock-agentcore:us-east-1:000000000000:runtime/anything-0123456789";
    const request = invocation(arn, newSessionId("lone"), { action: "whoami" });
    assertRefused(await send(started.berth.url, request, madeUp(request)), noCluster);
    const properlySigned = signedBy(randomBytes(32).toString("hex"), request, "node-1");
    assertRefused(await send(started.berth.url, request, properlySigned), noCluster);
    // A client's valid request (ListAgentRuntimes), served; with a cluster header added, refused.
    const listRuntimes = (headers: Record<string, string>) =>
      sendRaw(started.berth.url, {
        method: "POST",
        path: "/runtimes/",
        body: "{}",
        credentials: started.berth.credentials,
        headers,
      });
    assert.equal((await listRuntimes({})).status, 200);
    assertRefused(await listRuntimes({ [clusterHeaders.node]: "node-1" }), noCluster);
  });
});
