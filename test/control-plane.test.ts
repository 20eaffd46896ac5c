import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  CreateAgentRuntimeEndpointCommand,
  DeleteAgentRuntimeCommand,
  DeleteAgentRuntimeEndpointCommand,
  GetAgentRuntimeCommand,
  GetAgentRuntimeEndpointCommand,
  ListAgentRuntimeEndpointsCommand,
  ListAgentRuntimesCommand,
  ListAgentRuntimeVersionsCommand,
  UpdateAgentRuntimeCommand,
  UpdateAgentRuntimeEndpointCommand,
  type CreateAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { codeArtifact, placeCodeArtifact } from "./support/artifacts.ts";
import { useTestBerth } from "./support/berth.ts";

const harness = useTestBerth([], (berth) => {
  placeCodeArtifact(berth.dataDir, "agents", "hello");
  placeCodeArtifact(berth.dataDir, "agents", "hello-v2");
});
let counter = 0;

const uniqueName = (base = "agent"): string => `${base}_${process.pid}_${(counter += 1)}`;

function runtimeInput(
  overrides: Partial<CreateAgentRuntimeCommandInput> = {},
): CreateAgentRuntimeCommandInput {
  return {
    agentRuntimeName: uniqueName(),
    agentRuntimeArtifact: codeArtifact(),
    roleArn: "arn:aws:iam::123456789012:role/agent",
    networkConfiguration: { networkMode: "PUBLIC" },
    ...overrides,
  };
}

async function createReady(overrides: Partial<CreateAgentRuntimeCommandInput> = {}) {
  const created = await harness().control.send(
    new CreateAgentRuntimeCommand(runtimeInput(overrides)),
  );
  await harness().berth.idle();
  return created;
}

describe("CreateAgentRuntime and GetAgentRuntime", () => {
  it("creates version 1 in CREATING, then READY once the artifact is checked", async () => {
    const input = runtimeInput({
      description: "my agent",
      environmentVariables: { MODEL: "small" },
      lifecycleConfiguration: { idleRuntimeSessionTimeout: 120, maxLifetime: 3600 },
      filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
      requestHeaderConfiguration: {
        requestHeaderAllowlist: ["X-Amzn-Bedrock-AgentCore-Runtime-Custom-Team"],
      },
    });
    const created = await harness().control.send(new CreateAgentRuntimeCommand(input));
    assert.equal(created.status, "CREATING");
    assert.equal(created.agentRuntimeVersion, "1");
    assert.match(
      created.agentRuntimeId ?? "",
      new RegExp(`^${input.agentRuntimeName}-[a-zA-Z0-9]{10}$`),
    );
    assert.equal(
      created.agentRuntimeArn,
      `arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/${created.agentRuntimeId}`,
    );
    assert.ok(created.createdAt instanceof Date && !Number.isNaN(created.createdAt.getTime()));

    await harness().berth.idle();
    const got = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.equal(got.status, "READY");
    assert.equal(got.agentRuntimeName, input.agentRuntimeName);
    assert.equal(got.description, "my agent");
    assert.deepEqual(got.environmentVariables, { MODEL: "small" });
    assert.deepEqual(got.lifecycleConfiguration, {
      idleRuntimeSessionTimeout: 120,
      maxLifetime: 3600,
    });
    assert.deepEqual(got.filesystemConfigurations, [
      { sessionStorage: { mountPath: "/mnt/workspace" } },
    ]);
    assert.deepEqual(got.agentRuntimeArtifact, input.agentRuntimeArtifact);
    assert.deepEqual(got.requestHeaderConfiguration, input.requestHeaderConfiguration);
    assert.equal(got.protocolConfiguration?.serverProtocol, "HTTP");
    assert.equal(got.roleArn, input.roleArn);
  });

  it("applies AgentCore's lifecycle defaults (900 s idle, 28800 s lifetime)", async () => {
    const created = await createReady();
    const got = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.deepEqual(got.lifecycleConfiguration, {
      idleRuntimeSessionTimeout: 900,
      maxLifetime: 28_800,
    });
  });

  it("reports CREATE_FAILED with a failureReason when the artifact is missing", async () => {
    const created = await createReady({ agentRuntimeArtifact: codeArtifact("agents", "nowhere") });
    const got = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.equal(got.status, "CREATE_FAILED");
    assert.match(got.failureReason ?? "", /s3:\/\/agents\/nowhere not found/);
  });

  it("reports CREATE_FAILED when the entry point is not in the artifact", async () => {
    const created = await createReady({
      agentRuntimeArtifact: codeArtifact("agents", "hello", "missing.js"),
    });
    const got = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.equal(got.status, "CREATE_FAILED");
    assert.match(got.failureReason ?? "", /Entry point missing\.js not found/);
  });

  it("answers ConflictException for a name already in use", async () => {
    const input = runtimeInput();
    await harness().control.send(new CreateAgentRuntimeCommand(input));
    await assert.rejects(
      harness().control.send(new CreateAgentRuntimeCommand({ ...input, clientToken: undefined })),
      {
        name: "ConflictException",
        message: /already exists/,
      },
    );
  });

  it("answers ResourceNotFoundException for an unknown id or version", async () => {
    await assert.rejects(
      harness().control.send(new GetAgentRuntimeCommand({ agentRuntimeId: "nope-0123456789" })),
      {
        name: "ResourceNotFoundException",
      },
    );
    const created = await createReady();
    await assert.rejects(
      harness().control.send(
        new GetAgentRuntimeCommand({
          agentRuntimeId: created.agentRuntimeId,
          agentRuntimeVersion: "7",
        }),
      ),
      { name: "ResourceNotFoundException", message: /no version 7/ },
    );
  });
});

describe("versions", () => {
  it("makes a new version per update; old versions stay readable; DEFAULT follows the latest", async () => {
    const created = await createReady({ description: "first" });
    const id = created.agentRuntimeId;
    const updated = await harness().control.send(
      new UpdateAgentRuntimeCommand({
        agentRuntimeId: id,
        agentRuntimeArtifact: codeArtifact("agents", "hello-v2"),
        roleArn: "arn:aws:iam::123456789012:role/agent",
        description: "second",
      }),
    );
    assert.equal(updated.agentRuntimeVersion, "2");
    assert.equal(updated.status, "UPDATING");
    await harness().berth.idle();

    const latest = await harness().control.send(new GetAgentRuntimeCommand({ agentRuntimeId: id }));
    assert.equal(latest.agentRuntimeVersion, "2");
    assert.equal(latest.status, "READY");
    assert.equal(latest.description, "second");
    const first = await harness().control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: id, agentRuntimeVersion: "1" }),
    );
    assert.equal(first.description, "first");
    assert.deepEqual(first.agentRuntimeArtifact, codeArtifact());

    const versions = await harness().control.send(
      new ListAgentRuntimeVersionsCommand({ agentRuntimeId: id }),
    );
    assert.deepEqual(
      versions.agentRuntimes?.map((version) => version.agentRuntimeVersion),
      ["1", "2"],
    );

    const defaultEndpoint = await harness().control.send(
      new GetAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "DEFAULT" }),
    );
    assert.equal(defaultEndpoint.targetVersion, "2");
    assert.equal(defaultEndpoint.liveVersion, "2");
    assert.equal(defaultEndpoint.status, "READY");
  });

  it("a failed update shows UPDATE_FAILED while DEFAULT keeps serving the last good version", async () => {
    const created = await createReady();
    const id = created.agentRuntimeId;
    await harness().control.send(
      new UpdateAgentRuntimeCommand({
        agentRuntimeId: id,
        agentRuntimeArtifact: codeArtifact("agents", "gone"),
        roleArn: "arn:aws:iam::123456789012:role/agent",
      }),
    );
    await harness().berth.idle();
    const latest = await harness().control.send(new GetAgentRuntimeCommand({ agentRuntimeId: id }));
    assert.equal(latest.status, "UPDATE_FAILED");
    assert.match(latest.failureReason ?? "", /not found/);
    const endpoint = await harness().control.send(
      new GetAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "DEFAULT" }),
    );
    assert.equal(endpoint.liveVersion, "1");
    assert.equal(endpoint.targetVersion, "2");
    assert.equal(endpoint.status, "UPDATE_FAILED");
  });

  it("deletes an old version, but not the latest or one an endpoint serves", async () => {
    const created = await createReady();
    const id = created.agentRuntimeId;
    const update = () =>
      harness().control.send(
        new UpdateAgentRuntimeCommand({
          agentRuntimeId: id,
          agentRuntimeArtifact: codeArtifact(),
          roleArn: "arn:aws:iam::123456789012:role/agent",
        }),
      );
    await update();
    await update();
    await harness().berth.idle();
    await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({
        agentRuntimeId: id,
        name: "pinned",
        agentRuntimeVersion: "2",
      }),
    );

    await assert.rejects(
      harness().control.send(
        new DeleteAgentRuntimeCommand({ agentRuntimeId: id, agentRuntimeVersion: "3" }),
      ),
      {
        name: "ConflictException",
        message: /latest version/,
      },
    );
    await assert.rejects(
      harness().control.send(
        new DeleteAgentRuntimeCommand({ agentRuntimeId: id, agentRuntimeVersion: "2" }),
      ),
      {
        name: "ConflictException",
        message: /served by endpoint pinned/,
      },
    );
    const deleted = await harness().control.send(
      new DeleteAgentRuntimeCommand({ agentRuntimeId: id, agentRuntimeVersion: "1" }),
    );
    assert.equal(deleted.agentRuntimeVersion, "1");
    await assert.rejects(
      harness().control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: id, agentRuntimeVersion: "1" }),
      ),
      { name: "ResourceNotFoundException" },
    );
    const versions = await harness().control.send(
      new ListAgentRuntimeVersionsCommand({ agentRuntimeId: id }),
    );
    assert.deepEqual(
      versions.agentRuntimes?.map((version) => version.agentRuntimeVersion),
      ["2", "3"],
    );
  });
});

describe("endpoints", () => {
  it("creates, pins, moves, lists and deletes named endpoints", async () => {
    const created = await createReady();
    const id = created.agentRuntimeId;
    await harness().control.send(
      new UpdateAgentRuntimeCommand({
        agentRuntimeId: id,
        agentRuntimeArtifact: codeArtifact(),
        roleArn: "arn:aws:iam::123456789012:role/agent",
      }),
    );
    await harness().berth.idle();

    const prod = await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({
        agentRuntimeId: id,
        name: "prod",
        agentRuntimeVersion: "1",
        description: "stable",
      }),
    );
    assert.equal(prod.targetVersion, "1");
    assert.equal(prod.status, "READY");
    assert.equal(prod.endpointName, "prod");
    assert.equal(prod.agentRuntimeEndpointArn, `${created.agentRuntimeArn}/runtime-endpoint/prod`);

    const moved = await harness().control.send(
      new UpdateAgentRuntimeEndpointCommand({
        agentRuntimeId: id,
        endpointName: "prod",
        agentRuntimeVersion: "2",
      }),
    );
    assert.equal(moved.targetVersion, "2");
    assert.equal(moved.liveVersion, "2");

    const got = await harness().control.send(
      new GetAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "prod" }),
    );
    assert.equal(got.description, "stable");
    assert.equal(got.name, "prod");
    assert.ok(got.lastUpdatedAt instanceof Date);

    const latest = await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({ agentRuntimeId: id, name: "canary" }),
    );
    assert.equal(latest.targetVersion, "2", "without a version an endpoint targets the latest");

    const listed = await harness().control.send(
      new ListAgentRuntimeEndpointsCommand({ agentRuntimeId: id }),
    );
    assert.deepEqual(
      listed.runtimeEndpoints?.map((endpoint) => endpoint.name),
      ["DEFAULT", "prod", "canary"],
    );

    const deleted = await harness().control.send(
      new DeleteAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "prod" }),
    );
    assert.equal(deleted.status, "DELETING");
    await assert.rejects(
      harness().control.send(
        new GetAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "prod" }),
      ),
      {
        name: "ResourceNotFoundException",
      },
    );
  });

  it("refuses duplicate names, unknown versions, failed versions and changes to DEFAULT", async () => {
    const created = await createReady();
    const id = created.agentRuntimeId;
    await harness().control.send(
      new CreateAgentRuntimeEndpointCommand({ agentRuntimeId: id, name: "one" }),
    );
    await assert.rejects(
      harness().control.send(
        new CreateAgentRuntimeEndpointCommand({ agentRuntimeId: id, name: "one" }),
      ),
      {
        name: "ConflictException",
      },
    );
    await assert.rejects(
      harness().control.send(
        new CreateAgentRuntimeEndpointCommand({
          agentRuntimeId: id,
          name: "two",
          agentRuntimeVersion: "9",
        }),
      ),
      { name: "ResourceNotFoundException" },
    );
    await assert.rejects(
      harness().control.send(
        new UpdateAgentRuntimeEndpointCommand({
          agentRuntimeId: id,
          endpointName: "DEFAULT",
          agentRuntimeVersion: "1",
        }),
      ),
      {
        name: "ValidationException",
        message: /DEFAULT endpoint always serves the latest version/,
      },
    );
    await assert.rejects(
      harness().control.send(
        new DeleteAgentRuntimeEndpointCommand({ agentRuntimeId: id, endpointName: "DEFAULT" }),
      ),
      {
        name: "ValidationException",
      },
    );
    const failed = await createReady({ agentRuntimeArtifact: codeArtifact("agents", "absent") });
    await assert.rejects(
      harness().control.send(
        new CreateAgentRuntimeEndpointCommand({
          agentRuntimeId: failed.agentRuntimeId,
          name: "x",
          agentRuntimeVersion: "1",
        }),
      ),
      { name: "ValidationException", message: /failed to prepare/ },
    );
  });
});

describe("DeleteAgentRuntime", () => {
  it("deletes the runtime with its versions and endpoints, and frees the name", async () => {
    const input = runtimeInput();
    const created = await createReady(input);
    const deleted = await harness().control.send(
      new DeleteAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.equal(deleted.status, "DELETING");
    assert.equal(deleted.agentRuntimeId, created.agentRuntimeId);
    await assert.rejects(
      harness().control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
      ),
      {
        name: "ResourceNotFoundException",
      },
    );
    await assert.rejects(
      harness().control.send(
        new ListAgentRuntimeEndpointsCommand({ agentRuntimeId: created.agentRuntimeId }),
      ),
      { name: "ResourceNotFoundException" },
    );
    const again = await harness().control.send(
      new CreateAgentRuntimeCommand({ ...input, clientToken: undefined }),
    );
    assert.notEqual(again.agentRuntimeId, created.agentRuntimeId);
  });
});

describe("idempotency", () => {
  it("returns the first answer for a retry with the same clientToken and request", async () => {
    const input = runtimeInput({ clientToken: "token-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" });
    const first = await harness().control.send(new CreateAgentRuntimeCommand(input));
    const retry = await harness().control.send(new CreateAgentRuntimeCommand(input));
    assert.equal(retry.agentRuntimeId, first.agentRuntimeId);
    assert.equal(retry.createdAt?.getTime(), first.createdAt?.getTime());
    const listed = await harness().control.send(new ListAgentRuntimesCommand({}));
    assert.equal(
      listed.agentRuntimes?.filter((runtime) => runtime.agentRuntimeName === input.agentRuntimeName)
        .length,
      1,
    );
  });

  it("refuses the same clientToken with a different request", async () => {
    const token = "token-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    await harness().control.send(
      new CreateAgentRuntimeCommand(runtimeInput({ clientToken: token })),
    );
    await assert.rejects(
      harness().control.send(new CreateAgentRuntimeCommand(runtimeInput({ clientToken: token }))),
      {
        name: "ValidationException",
        reason: "IdempotentParameterMismatchException",
      },
    );
  });

  it("makes one version for an update retried with the same token", async () => {
    const created = await createReady();
    const update = new UpdateAgentRuntimeCommand({
      agentRuntimeId: created.agentRuntimeId,
      agentRuntimeArtifact: codeArtifact(),
      roleArn: "arn:aws:iam::123456789012:role/agent",
      clientToken: "token-cccccccccccccccccccccccccccccccccc",
    });
    const first = await harness().control.send(update);
    const retry = await harness().control.send(update);
    assert.equal(first.agentRuntimeVersion, "2");
    assert.equal(retry.agentRuntimeVersion, "2");
    const versions = await harness().control.send(
      new ListAgentRuntimeVersionsCommand({ agentRuntimeId: created.agentRuntimeId }),
    );
    assert.equal(versions.agentRuntimes?.length, 2);
  });

  it("the SDK fills clientToken itself, so concurrent identical sends are distinct requests", async () => {
    const base = runtimeInput();
    const results = await Promise.allSettled([
      harness().control.send(new CreateAgentRuntimeCommand(base)),
      harness().control.send(new CreateAgentRuntimeCommand(base)),
    ]);
    assert.equal(results.filter((result) => result.status === "fulfilled").length, 1);
    const rejected = results.find((result) => result.status === "rejected");
    assert.equal((rejected?.reason as Error).name, "ConflictException");
  });
});

describe("pagination", () => {
  it("pages with maxResults/nextToken and stays stable when runtimes are created mid-way", async () => {
    const names = new Set<string>();
    for (let index = 0; index < 7; index += 1) {
      const input = runtimeInput();
      names.add(input.agentRuntimeName ?? "");
      await harness().control.send(new CreateAgentRuntimeCommand(input));
    }
    const seen: string[] = [];
    let nextToken: string | undefined;
    let pages = 0;
    do {
      const page = await harness().control.send(
        new ListAgentRuntimesCommand({ maxResults: 3, nextToken }),
      );
      assert.ok((page.agentRuntimes?.length ?? 0) <= 3);
      seen.push(...(page.agentRuntimes ?? []).map((runtime) => runtime.agentRuntimeName ?? ""));
      nextToken = page.nextToken;
      pages += 1;
      // A runtime created after the first page appears at the end, never shifting pages already read.
      if (pages === 1) {
        const late = runtimeInput();
        names.add(late.agentRuntimeName ?? "");
        await harness().control.send(new CreateAgentRuntimeCommand(late));
      }
    } while (nextToken !== undefined);
    assert.equal(new Set(seen).size, seen.length, "no runtime is listed twice");
    for (const name of names) assert.ok(seen.includes(name), `${name} is listed`);
    for (const runtime of (await harness().control.send(new ListAgentRuntimesCommand({})))
      .agentRuntimes ?? []) {
      assert.equal(
        typeof runtime.description,
        "string",
        "description is always present in list items",
      );
    }
  });

  it("refuses a nextToken it did not issue and maxResults out of range", async () => {
    await assert.rejects(
      harness().control.send(new ListAgentRuntimesCommand({ nextToken: "garbage" })),
      {
        name: "ValidationException",
        message: /nextToken/,
      },
    );
    await assert.rejects(
      harness().control.send(new ListAgentRuntimesCommand({ maxResults: 1000 })),
      {
        name: "ValidationException",
        message: /maxResults/,
      },
    );
  });
});
