import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { setImmediate as nextTurn } from "node:timers/promises";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  GetAgentRuntimeEndpointCommand,
  ListAgentRuntimeVersionsCommand,
  UpdateAgentRuntimeCommand,
  type UpdateAgentRuntimeCommandOutput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { codeArtifact, placeCodeArtifact } from "./support/artifacts.ts";
import { SqliteMetadataStore } from "../src/adapters/sqlite/store.ts";
import { useTestBerth } from "./support/berth.ts";

const concurrentUpdates = 20;

/**
 * The store's answers to an update, each on a later turn of the event loop, as a database server
 * reached over a socket (PostgreSQL) gives them: other requests run in between, as they would.
 */
const answeredLater = ["findIdempotency", "findRuntime", "addRuntimeVersion"] as const;
const originals = new Map<string, unknown>();
before(() => {
  const prototype = SqliteMetadataStore.prototype as unknown as Record<string, unknown>;
  for (const name of answeredLater) {
    const original = prototype[name] as (...args: unknown[]) => Promise<unknown>;
    originals.set(name, original);
    prototype[name] = async function (this: unknown, ...args: unknown[]) {
      await nextTurn();
      return original.apply(this, args);
    };
  }
});
after(() => {
  const prototype = SqliteMetadataStore.prototype as unknown as Record<string, unknown>;
  for (const [name, original] of originals) prototype[name] = original;
});

const harness = useTestBerth([], (berth) => {
  placeCodeArtifact(berth.dataDir, "agents", "hello");
});
let counter = 0;

async function createRuntime(): Promise<string> {
  const created = await harness().control.send(
    new CreateAgentRuntimeCommand({
      agentRuntimeName: `versions_${process.pid}_${(counter += 1)}`,
      agentRuntimeArtifact: codeArtifact(),
      roleArn: "arn:aws:iam::123456789012:role/agent",
      networkConfiguration: { networkMode: "PUBLIC" },
    }),
  );
  return created.agentRuntimeId ?? "";
}

function update(runtimeId: string, description: string, clientToken?: string) {
  return harness().control.send(
    new UpdateAgentRuntimeCommand({
      agentRuntimeId: runtimeId,
      agentRuntimeArtifact: codeArtifact(),
      roleArn: "arn:aws:iam::123456789012:role/agent",
      networkConfiguration: { networkMode: "PUBLIC" },
      description,
      ...(clientToken === undefined ? {} : { clientToken }),
    }),
  );
}

/** Every update must succeed; their version numbers, in order. */
async function allSucceed(
  updates: Promise<UpdateAgentRuntimeCommandOutput>[],
): Promise<UpdateAgentRuntimeCommandOutput[]> {
  const results = await Promise.allSettled(updates);
  const failures = results.flatMap((result) =>
    result.status === "rejected" ? [String(result.reason)] : [],
  );
  assert.deepEqual(failures, [], `${failures.length} of ${updates.length} updates failed`);
  return results.flatMap((result) => (result.status === "fulfilled" ? [result.value] : []));
}

/** The versions 2 .. concurrentUpdates + 1, as the SDK returns them. */
const expectedNewVersions = Array.from({ length: concurrentUpdates }, (_, index) =>
  String(index + 2),
);

describe("UpdateAgentRuntime called concurrently", () => {
  it(`gives ${concurrentUpdates} concurrent updates distinct, consecutive versions`, async () => {
    const runtimeId = await createRuntime();
    const descriptions = Array.from({ length: concurrentUpdates }, (_, index) => `update ${index}`);
    // A connection per update opened first, so that the updates arrive together rather than
    // each after its own handshake.
    await Promise.all(
      descriptions.map(() =>
        harness().control.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId })),
      ),
    );
    const updated = await allSucceed(
      descriptions.map((description) => update(runtimeId, description)),
    );
    const versions = updated.map((answer) => answer.agentRuntimeVersion ?? "");
    assert.deepEqual(
      [...versions].sort((a, b) => Number(a) - Number(b)),
      expectedNewVersions,
    );
    await harness().berth.idle();

    const listed = await harness().control.send(
      new ListAgentRuntimeVersionsCommand({ agentRuntimeId: runtimeId, maxResults: 100 }),
    );
    assert.deepEqual(
      listed.agentRuntimes?.map((summary) => summary.agentRuntimeVersion),
      ["1", ...expectedNewVersions],
    );
    // Each number holds the configuration of the update it was answered to.
    for (const [index, version] of versions.entries()) {
      const got = await harness().control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId, agentRuntimeVersion: version }),
      );
      assert.equal(got.description, descriptions[index]);
    }
    const latest = String(concurrentUpdates + 1);
    const runtime = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }),
    );
    assert.equal(runtime.agentRuntimeVersion, latest);
    const endpoint = await harness().control.send(
      new GetAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, endpointName: "DEFAULT" }),
    );
    assert.equal(endpoint.targetVersion, latest);
  });

  it("numbers concurrent updates with client tokens once each, retries included", async () => {
    const runtimeId = await createRuntime();
    const tokens = Array.from({ length: concurrentUpdates }, () => randomUUID());
    // Each request sent twice at once, as a client retrying a slow answer would.
    const updated = await allSucceed(
      [...tokens, ...tokens].map((token) => update(runtimeId, `token ${token}`, token)),
    );
    const versionOf = new Map<string, string>();
    updated.forEach((answer, index) => {
      const token = tokens[index % concurrentUpdates] ?? "";
      const earlier = versionOf.get(token);
      if (earlier !== undefined) assert.equal(answer.agentRuntimeVersion, earlier, "a retry");
      versionOf.set(token, answer.agentRuntimeVersion ?? "");
    });
    assert.deepEqual(
      [...versionOf.values()].sort((a, b) => Number(a) - Number(b)),
      expectedNewVersions,
    );
    await harness().berth.idle();
    const listed = await harness().control.send(
      new ListAgentRuntimeVersionsCommand({ agentRuntimeId: runtimeId, maxResults: 100 }),
    );
    assert.equal(listed.agentRuntimes?.length, concurrentUpdates + 1);
  });
});
