import type { EndpointView } from "../core/endpoints.ts";
import type { AgentArtifact, RuntimeSummary, RuntimeView } from "../core/model.ts";

/** Turns Berth's records into the AgentCore control plane's JSON members, exactly as named. */

export function artifactShape(artifact: AgentArtifact): Record<string, unknown> {
  if (artifact.kind === "container")
    return { containerConfiguration: { containerUri: artifact.containerUri } };
  return {
    codeConfiguration: {
      code: {
        s3: { bucket: artifact.bucket, prefix: artifact.prefix, versionId: artifact.versionId },
      },
      runtime: artifact.runtime,
      entryPoint: artifact.entryPoint,
    },
  };
}

export function runtimeDetailShape({ runtime, version }: RuntimeView): Record<string, unknown> {
  const config = version.config;
  return {
    agentRuntimeArn: runtime.arn,
    agentRuntimeName: runtime.name,
    agentRuntimeId: runtime.id,
    agentRuntimeVersion: String(version.version),
    createdAt: runtime.createdAt,
    lastUpdatedAt: version.lastUpdatedAt,
    roleArn: config.roleArn,
    networkConfiguration: { networkMode: config.networkMode },
    status: version.status,
    failureReason: version.failureReason,
    description: optionalText(config.description),
    lifecycleConfiguration: {
      idleRuntimeSessionTimeout: config.idleRuntimeSessionTimeoutSeconds,
      maxLifetime: config.maxLifetimeSeconds,
    },
    agentRuntimeArtifact: artifactShape(config.artifact),
    protocolConfiguration: { serverProtocol: config.serverProtocol },
    environmentVariables: config.environmentVariables,
    requestHeaderConfiguration:
      config.requestHeaderAllowlist.length > 0
        ? { requestHeaderAllowlist: config.requestHeaderAllowlist }
        : undefined,
    filesystemConfigurations: config.sessionStorageMountPaths.map((mountPath) => ({
      sessionStorage: { mountPath },
    })),
  };
}

/**
 * An optional text member: omitted when empty, as the model's minimum length is 1. (The
 * required `description` of list items is sent as "" instead: it cannot be left out.)
 */
function optionalText(text: string): string | undefined {
  return text === "" ? undefined : text;
}

export function runtimeSummaryShape(summary: RuntimeSummary): Record<string, unknown> {
  return {
    agentRuntimeArn: summary.arn,
    agentRuntimeId: summary.runtimeId,
    agentRuntimeVersion: String(summary.version),
    agentRuntimeName: summary.name,
    description: summary.description,
    lastUpdatedAt: summary.lastUpdatedAt,
    status: summary.status,
  };
}

export function endpointShape(view: EndpointView): Record<string, unknown> {
  const { endpoint } = view;
  return {
    name: endpoint.name,
    id: `${endpoint.runtimeId}/${endpoint.name}`,
    agentRuntimeEndpointArn: endpoint.arn,
    agentRuntimeArn: view.runtimeArn,
    agentRuntimeId: endpoint.runtimeId,
    endpointName: endpoint.name,
    liveVersion: endpoint.liveVersion === undefined ? undefined : String(endpoint.liveVersion),
    targetVersion: String(endpoint.targetVersion),
    status: view.status,
    failureReason: view.failureReason,
    description: optionalText(endpoint.description),
    createdAt: endpoint.createdAt,
    lastUpdatedAt: endpoint.lastUpdatedAt,
  };
}
