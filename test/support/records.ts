import type { RuntimeRecord, RuntimeVersionRecord } from "../../src/core/model.ts";
import type { MetadataStore } from "../../src/core/store.ts";

/** A runtime record as the control plane would write it, for tests of the core on its own. */
export function runtimeRecord(id: string): RuntimeRecord {
  return {
    id,
    name: id.split("-")[0] ?? id,
    arn: `arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/${id}`,
    latestVersion: 1,
    createdAt: new Date(0).toISOString(),
    lastUpdatedAt: new Date(0).toISOString(),
    tags: {},
  };
}

/** Version 1 of `runtime`: a READY Node agent with session storage at /mnt/workspace. */
export function versionRecord(runtime: RuntimeRecord): RuntimeVersionRecord {
  return {
    runtimeId: runtime.id,
    version: 1,
    config: {
      artifact: {
        kind: "code",
        bucket: "agents",
        prefix: "agent.zip",
        versionId: undefined,
        runtime: "NODE_22",
        entryPoint: ["main.js"],
      },
      roleArn: undefined,
      networkMode: "PUBLIC",
      description: "",
      serverProtocol: "HTTP",
      idleRuntimeSessionTimeoutSeconds: 900,
      maxLifetimeSeconds: 28_800,
      environmentVariables: {},
      sessionStorageMountPaths: ["/mnt/workspace"],
      requestHeaderAllowlist: [],
    },
    status: "READY",
    failureReason: undefined,
    createdAt: runtime.createdAt,
    lastUpdatedAt: runtime.createdAt,
  };
}

/** Writes the runtime with its version and DEFAULT endpoint, as CreateAgentRuntime would. */
export async function storeRuntime(
  store: MetadataStore,
  runtime: RuntimeRecord,
  version: RuntimeVersionRecord,
): Promise<void> {
  await store.createRuntime({
    runtime,
    version,
    defaultEndpoint: {
      runtimeId: runtime.id,
      name: "DEFAULT",
      arn: `${runtime.arn}/runtime-endpoint/DEFAULT`,
      description: "",
      targetVersion: 1,
      liveVersion: 1,
      createdAt: runtime.createdAt,
      lastUpdatedAt: runtime.createdAt,
      tags: {},
    },
    idempotency: undefined,
  });
}
