import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  CreateAgentRuntimeEndpointCommand,
  DeleteAgentRuntimeCommand,
  DeleteAgentRuntimeEndpointCommand,
  ListTagsForResourceCommand,
  ResourceNotFoundException,
  TagResourceCommand,
  UntagResourceCommand,
  ValidationException,
  type CreateAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, installAgent } from "./support/agents.ts";
import { codeArtifact, placeCodeArtifact } from "./support/artifacts.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { runCommand } from "./support/commands.ts";
import { createRuntime, newProbeVersion, newSessionId, workspace } from "./support/runtimes.ts";
import { sendRaw } from "./support/signed-request.ts";

const harness = useTestBerth(
  ["--sandbox-outbound", "none", "--session-storage-bytes", String(64 * 2 ** 20)],
  (berth) => {
    placeCodeArtifact(berth.dataDir, "agents", "hello");
    installAgent(berth.dataDir, agentSources.probe, "probe");
  },
);
let counter = 0;

async function createTagged(overrides: Partial<CreateAgentRuntimeCommandInput> = {}) {
  const created = await harness().control.send(
    new CreateAgentRuntimeCommand({
      agentRuntimeName: `tagged_${process.pid}_${(counter += 1)}`,
      agentRuntimeArtifact: codeArtifact(),
      roleArn: "arn:aws:iam::123456789012:role/agent",
      ...overrides,
    }),
  );
  await harness().berth.idle();
  return { id: created.agentRuntimeId ?? "", arn: created.agentRuntimeArn ?? "" };
}

const listTags = async (resourceArn: string) =>
  (await harness().control.send(new ListTagsForResourceCommand({ resourceArn }))).tags;

/** Sends a request expected to fail with a ValidationException; returns the fields it names. */
async function refusedFields(send: () => Promise<unknown>): Promise<string[]> {
  try {
    await send();
  } catch (error) {
    assert.ok(error instanceof ValidationException, `ValidationException, got ${String(error)}`);
    assert.equal(error.reason, "FieldValidationFailed");
    return (error.fieldList ?? []).map((field) => field.name ?? "");
  }
  assert.fail("the request was accepted");
}

describe("TagResource, UntagResource and ListTagsForResource", () => {
  it("lists the tags given at create, for a runtime and its endpoints, and changes them", async () => {
    const runtime = await createTagged({ tags: { team: "agents", stage: "dev" } });
    assert.deepEqual(await listTags(runtime.arn), { team: "agents", stage: "dev" });
    assert.deepEqual(await listTags(`${runtime.arn}/runtime-endpoint/DEFAULT`), {});
    const endpoint = await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({
        agentRuntimeId: runtime.id,
        name: "prod",
        tags: { owner: "ops" },
      }),
    );
    const endpointArn = endpoint.agentRuntimeEndpointArn ?? "";
    assert.deepEqual(await listTags(endpointArn), { owner: "ops" });

    await harness().control.send(
      new TagResourceCommand({ resourceArn: runtime.arn, tags: { stage: "prod", cost: "42" } }),
    );
    assert.deepEqual(await listTags(runtime.arn), { team: "agents", stage: "prod", cost: "42" });
    await harness().control.send(
      new UntagResourceCommand({ resourceArn: runtime.arn, tagKeys: ["team", "never-set"] }),
    );
    assert.deepEqual(await listTags(runtime.arn), { stage: "prod", cost: "42" });
    assert.deepEqual(await listTags(endpointArn), { owner: "ops" }, "endpoint tags are its own");
  });

  it("answers TagResource and UntagResource 204 with no body, as the model says", async () => {
    const runtime = await createTagged();
    const path = `/tags/${encodeURIComponent(runtime.arn)}`;
    const credentials = harness().berth.credentials;
    const tagged = await sendRaw(harness().berth.url, {
      method: "POST",
      path,
      body: JSON.stringify({ tags: { a: "1", b: "2" } }),
      credentials,
    });
    const untagged = await sendRaw(harness().berth.url, {
      method: "DELETE",
      path: `${path}?tagKeys=a`,
      credentials,
    });
    for (const answer of [tagged, untagged]) {
      assert.equal(answer.status, 204);
      assert.equal(answer.body, "");
      assert.equal(answer.headers["content-length"], undefined);
      assert.ok(answer.headers["x-amzn-requestid"]);
    }
    assert.deepEqual(await listTags(runtime.arn), { b: "2" });
  });

  it("keeps a tag whose key names an object property", async () => {
    // Sent raw: the SDK's own map handling would swallow the key before it left the client.
    const berth = harness();
    const send = (method: string, path: string, body?: string) =>
      sendRaw(berth.berth.url, {
        method,
        path,
        credentials: berth.berth.credentials,
        ...(body === undefined ? {} : { body }),
      });
    const created = await send(
      "PUT",
      "/runtimes/",
      `{"agentRuntimeName":"proto_${process.pid}","agentRuntimeArtifact":${JSON.stringify(codeArtifact())},"tags":{"__proto__":"create"}}`,
    );
    assert.equal(created.status, 202, created.body);
    const arn = String((JSON.parse(created.body) as Record<string, unknown>)["agentRuntimeArn"]);
    const tagsPath = `/tags/${encodeURIComponent(arn)}`;
    assert.equal((await send("POST", tagsPath, '{"tags":{"constructor":"tag"}}')).status, 204);
    const listed = await send("GET", tagsPath);
    assert.equal(listed.body, '{"tags":{"__proto__":"create","constructor":"tag"}}');
  });

  it("refuses bad tags with a ValidationException naming each field", async () => {
    const runtime = await createTagged({ tags: { a: "1" } });
    const tag = (tags: Record<string, string>) => () =>
      harness().control.send(new TagResourceCommand({ resourceArn: runtime.arn, tags }));
    assert.deepEqual(await refusedFields(tag({ "aws:owner": "me" })), ['tags key "aws:owner"']);
    assert.deepEqual(await refusedFields(tag({ AWS_ok: "Aws:value" })), ["tags.AWS_ok"]);
    assert.deepEqual(await refusedFields(tag({ ["k".repeat(129)]: "v" })), [
      `tags key "${"k".repeat(129)}"`,
    ]);
    assert.deepEqual(await refusedFields(tag({ k: "v".repeat(257) })), ["tags.k"]);
    assert.deepEqual(await refusedFields(tag({ "semi;colon": "v" })), ['tags key "semi;colon"']);
    assert.deepEqual(
      await refusedFields(() =>
        harness().control.send(
          new UntagResourceCommand({ resourceArn: runtime.arn, tagKeys: ["aws:cloudformation"] }),
        ),
      ),
      ['tagKeys "aws:cloudformation"'],
    );
    // At create too, for runtimes and endpoints.
    assert.deepEqual(await refusedFields(() => createTagged({ tags: { "aws:x": "y" } })), [
      'tags key "aws:x"',
    ]);
    assert.deepEqual(
      await refusedFields(() =>
        harness().control.send(
          new CreateAgentRuntimeEndpointCommand({
            agentRuntimeId: runtime.id,
            name: "bad_tags",
            tags: { "a|b": "c" },
          }),
        ),
      ),
      ['tags key "a|b"'],
    );
    assert.deepEqual(await listTags(runtime.arn), { a: "1" }, "nothing refused was kept");
  });

  it("holds at most 50 tags on a resource, counting those it has", async () => {
    const fifty = Object.fromEntries(Array.from({ length: 50 }, (_, index) => [`t${index}`, "v"]));
    const runtime = await createTagged({ tags: fifty });
    await harness().control.send(
      new TagResourceCommand({ resourceArn: runtime.arn, tags: { t0: "overwritten" } }),
    );
    const fields = await refusedFields(() =>
      harness().control.send(
        new TagResourceCommand({ resourceArn: runtime.arn, tags: { x: "1" } }),
      ),
    );
    assert.deepEqual(fields, ["tags"]);
    const tags = await listTags(runtime.arn);
    assert.equal(Object.keys(tags ?? {}).length, 50);
    assert.equal(tags?.["t0"], "overwritten");
    assert.deepEqual(
      await refusedFields(() => createTagged({ tags: { ...fifty, one_more: "v" } })),
      ["tags"],
    );
  });

  it("answers ValidationException for a malformed ARN and not found for an unknown one", async () => {
    const runtime = await createTagged();
    for (const malformed of ["not-an-arn-but-long-enough", "arn:aws:s3:::a-bucket-of-mine"]) {
      assert.deepEqual(
        await refusedFields(() =>
          harness().control.send(new ListTagsForResourceCommand({ resourceArn: malformed })),
        ),
        ["resourceArn"],
      );
    }
    const unknown = [
      runtime.arn.replace(/-[a-zA-Z0-9]{10}$/, "-ZZZZZZZZZZ"),
      runtime.arn.replace("123456789012", "210987654321"),
      runtime.arn.replace(":us-east-1:", ":eu-west-1:"),
      `${runtime.arn}/runtime-endpoint/missing`,
      "arn:aws:bedrock-agentcore:us-east-1:123456789012:gateway/my-gateway-1234",
    ];
    for (const resourceArn of unknown) {
      await assert.rejects(
        harness().control.send(new TagResourceCommand({ resourceArn, tags: { a: "b" } })),
        ResourceNotFoundException,
        resourceArn,
      );
      await assert.rejects(
        harness().control.send(new ListTagsForResourceCommand({ resourceArn })),
        ResourceNotFoundException,
        resourceArn,
      );
    }
  });

  it("deletes tags with their resource", async () => {
    const runtime = await createTagged({ tags: { a: "1" } });
    const endpoint = await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({
        agentRuntimeId: runtime.id,
        name: "gone",
        tags: { b: "2" },
      }),
    );
    const endpointArn = endpoint.agentRuntimeEndpointArn ?? "";
    await harness().control.send(
      new DeleteAgentRuntimeEndpointCommand({ agentRuntimeId: runtime.id, endpointName: "gone" }),
    );
    await assert.rejects(listTags(endpointArn), ResourceNotFoundException);
    assert.deepEqual(await listTags(runtime.arn), { a: "1" });
    await harness().control.send(new DeleteAgentRuntimeCommand({ agentRuntimeId: runtime.id }));
    await assert.rejects(listTags(runtime.arn), ResourceNotFoundException);
    await assert.rejects(
      listTags(`${runtime.arn}/runtime-endpoint/DEFAULT`),
      ResourceNotFoundException,
    );
  });

  it("changes what Berth does through its own berth: tags", hostSuite, async () => {
    // berth:session-storage-on-version-change=keep, set after create, keeps a session's files.
    const runtime = await createRuntime(harness(), "probe", workspace);
    const session = newSessionId("tags");
    const run = (command: string) => runCommand(harness().data, runtime.arn, session, command);
    await run("echo v1 > /mnt/workspace/version");
    await harness().control.send(
      new TagResourceCommand({
        resourceArn: runtime.arn,
        tags: { "berth:session-storage-on-version-change": "keep" },
      }),
    );
    await newProbeVersion(harness(), runtime.id);
    assert.equal((await run("cat /mnt/workspace/version")).stdout, "v1\n");
  });
});
