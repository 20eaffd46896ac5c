import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  CreateAgentRuntimeEndpointCommand,
  ValidationException,
  type CreateAgentRuntimeCommandInput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { codeArtifact } from "./support/artifacts.ts";
import { useTestBerth } from "./support/berth.ts";
import { sendRaw } from "./support/signed-request.ts";

const harness = useTestBerth();

const valid: CreateAgentRuntimeCommandInput = {
  agentRuntimeName: "valid_agent",
  agentRuntimeArtifact: codeArtifact(),
  roleArn: "arn:aws:iam::123456789012:role/agent",
  networkConfiguration: { networkMode: "PUBLIC" },
};

/** Sends a create that breaks rules and returns the fields the ValidationException names. */
async function rejectedFields(
  input: Record<string, unknown>,
): Promise<{ fields: string[]; error: ValidationException }> {
  try {
    await harness().control.send(new CreateAgentRuntimeCommand({ ...valid, ...input }));
  } catch (error) {
    assert.ok(
      error instanceof ValidationException,
      `expected ValidationException, got ${String(error)}`,
    );
    assert.equal(error.$metadata.httpStatusCode, 400);
    return { fields: (error.fieldList ?? []).map((field) => field.name ?? ""), error };
  }
  assert.fail("the request was accepted");
}

describe("CreateAgentRuntime validation", () => {
  const cases: [string, Record<string, unknown>, string][] = [
    ["a name starting with a digit", { agentRuntimeName: "1agent" }, "agentRuntimeName"],
    ["a name with a dash", { agentRuntimeName: "my-agent" }, "agentRuntimeName"],
    ["a 49-character name", { agentRuntimeName: `a${"b".repeat(48)}` }, "agentRuntimeName"],
    ["a missing name", { agentRuntimeName: undefined }, "agentRuntimeName"],
    ["a missing artifact", { agentRuntimeArtifact: undefined }, "agentRuntimeArtifact"],
    [
      "an artifact with two members",
      {
        agentRuntimeArtifact: {
          ...codeArtifact(),
          containerConfiguration: { containerUri: "r/x:1" },
        },
      },
      "agentRuntimeArtifact",
    ],
    [
      "a code artifact without an entry point",
      {
        agentRuntimeArtifact: {
          codeConfiguration: {
            code: { s3: { bucket: "agents", prefix: "x" } },
            runtime: "NODE_22",
          },
        },
      },
      "agentRuntimeArtifact.codeConfiguration.entryPoint",
    ],
    [
      "an unknown managed runtime",
      {
        agentRuntimeArtifact: {
          codeConfiguration: { ...codeArtifact().codeConfiguration, runtime: "RUBY_3" },
        },
      },
      "agentRuntimeArtifact.codeConfiguration.runtime",
    ],
    [
      "a bad bucket name",
      { agentRuntimeArtifact: codeArtifact("Bad_Bucket") },
      "agentRuntimeArtifact.codeConfiguration.code.s3.bucket",
    ],
    [
      "a VPC network",
      { networkConfiguration: { networkMode: "VPC" } },
      "networkConfiguration.networkMode",
    ],
    [
      "idle timeout below 60",
      { lifecycleConfiguration: { idleRuntimeSessionTimeout: 59 } },
      "lifecycleConfiguration.idleRuntimeSessionTimeout",
    ],
    [
      "max lifetime above 28800",
      { lifecycleConfiguration: { maxLifetime: 28_801 } },
      "lifecycleConfiguration.maxLifetime",
    ],
    [
      "idle timeout above max lifetime",
      { lifecycleConfiguration: { idleRuntimeSessionTimeout: 600, maxLifetime: 300 } },
      "lifecycleConfiguration.idleRuntimeSessionTimeout",
    ],
    [
      "a mount path outside /mnt",
      { filesystemConfigurations: [{ sessionStorage: { mountPath: "/home/work" } }] },
      "filesystemConfigurations[0].sessionStorage.mountPath",
    ],
    [
      "a nested mount path",
      { filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/a/b" } }] },
      "filesystemConfigurations[0].sessionStorage.mountPath",
    ],
    [
      "a duplicate mount path",
      {
        filesystemConfigurations: [
          { sessionStorage: { mountPath: "/mnt/data" } },
          { sessionStorage: { mountPath: "/mnt/data" } },
        ],
      },
      "filesystemConfigurations[1].sessionStorage.mountPath",
    ],
    [
      "six filesystems",
      {
        filesystemConfigurations: ["a", "b", "c", "d", "e", "f"].map((name) => ({
          sessionStorage: { mountPath: `/mnt/${name}data` },
        })),
      },
      "filesystemConfigurations",
    ],
    [
      "an EFS access point",
      {
        filesystemConfigurations: [
          { efsAccessPoint: { accessPointArn: "arn:x", mountPath: "/mnt/efs" } },
        ],
      },
      "filesystemConfigurations[0].efsAccessPoint",
    ],
    [
      "an unknown server protocol",
      { protocolConfiguration: { serverProtocol: "GRPC" } },
      "protocolConfiguration.serverProtocol",
    ],
    [
      "a protocol configuration without its protocol",
      { protocolConfiguration: {} },
      "protocolConfiguration.serverProtocol",
    ],
    [
      "a JWT authorizer",
      { authorizerConfiguration: { customJWTAuthorizer: { discoveryUrl: "https://x" } } },
      "authorizerConfiguration",
    ],
    [
      "a bad env var name",
      { environmentVariables: { "1BAD": "x" } },
      'environmentVariables key "1BAD"',
    ],
    [
      "a non-custom header in the allowlist",
      { requestHeaderConfiguration: { requestHeaderAllowlist: ["Cookie"] } },
      "requestHeaderConfiguration.requestHeaderAllowlist[0]",
    ],
    ["a malformed role ARN", { roleArn: "not-an-arn" }, "roleArn"],
    ["a short clientToken", { clientToken: "short" }, "clientToken"],
  ];
  for (const [what, input, field] of cases) {
    it(`refuses ${what}, naming ${field}`, async () => {
      const { fields, error } = await rejectedFields(input);
      assert.ok(fields.includes(field), `fieldList ${JSON.stringify(fields)} names ${field}`);
      assert.equal(error.reason, "FieldValidationFailed");
      assert.ok(error.message.includes(field), "the message names the field too");
    });
  }

  it("reports every problem at once", async () => {
    const { fields } = await rejectedFields({
      agentRuntimeName: "-",
      networkConfiguration: { networkMode: "VPC" },
      lifecycleConfiguration: { maxLifetime: 1 },
    });
    assert.deepEqual(fields.sort(), [
      "agentRuntimeName",
      "lifecycleConfiguration.maxLifetime",
      "networkConfiguration.networkMode",
    ]);
  });

  it("says unsupported members are unsupported instead of ignoring them", async () => {
    const { error } = await rejectedFields({ networkConfiguration: { networkMode: "VPC" } });
    assert.match(error.message, /VPC is not supported by Berth/);
  });

  it("refuses an endpoint name that breaks the pattern", async () => {
    const created = await harness().control.send(
      new CreateAgentRuntimeCommand({ ...valid, agentRuntimeName: "endpoint_rules" }),
    );
    await assert.rejects(
      harness().control.send(
        new CreateAgentRuntimeEndpointCommand({
          agentRuntimeId: created.agentRuntimeId,
          name: "bad-name",
        }),
      ),
      { name: "ValidationException", message: /name/ },
    );
  });
});

describe("malformed requests", () => {
  it("answers ValidationException with reason CannotParse for a body that is not JSON", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "PUT",
      path: "/runtimes/",
      body: "{not json",
      credentials: harness().berth.credentials,
    });
    assert.equal(response.status, 400);
    assert.equal(response.headers["x-amzn-errortype"], "ValidationException");
    assert.ok(response.headers["x-amzn-requestid"]);
    const body = JSON.parse(response.body) as { reason: string; message: string };
    assert.equal(body.reason, "CannotParse");
    assert.match(body.message, /not valid JSON/);
  });

  it("answers UnknownOperationException for a path no operation serves", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "GET",
      path: "/nothing/here",
      credentials: harness().berth.credentials,
    });
    assert.equal(response.status, 404);
    assert.equal(response.headers["x-amzn-errortype"], "UnknownOperationException");
  });

  it("refuses a body larger than maxRequestBodyBytes", async () => {
    const response = await sendRaw(harness().berth.url, {
      method: "PUT",
      path: "/runtimes/",
      body: JSON.stringify({ description: "x".repeat(2_000_000) }),
      credentials: harness().berth.credentials,
    });
    assert.equal(response.status, 400);
    assert.match(response.body, /larger than 1048576 bytes/);
  });
});
