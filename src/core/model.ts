/** Berth's view of AgentCore runtimes, versions and endpoints, independent of any storage. */
import type { ServerProtocol } from "./protocols.ts";

export const runtimeStatuses = [
  "CREATING",
  "CREATE_FAILED",
  "UPDATING",
  "UPDATE_FAILED",
  "READY",
  "DELETING",
  "DELETE_FAILED",
] as const;
export type RuntimeStatus = (typeof runtimeStatuses)[number];

export const managedRuntimes = [
  "NODE_22",
  "PYTHON_3_10",
  "PYTHON_3_11",
  "PYTHON_3_12",
  "PYTHON_3_13",
  "PYTHON_3_14",
] as const;
export type ManagedRuntime = (typeof managedRuntimes)[number];

export type AgentArtifact =
  | { kind: "container"; containerUri: string }
  | {
      kind: "code";
      bucket: string;
      prefix: string;
      versionId: string | undefined;
      runtime: ManagedRuntime;
      entryPoint: string[];
    };

/** Everything one version of a runtime was created with. A version never changes once made. */
export interface RuntimeConfig {
  artifact: AgentArtifact;
  roleArn: string | undefined;
  networkMode: "PUBLIC";
  description: string;
  serverProtocol: ServerProtocol;
  idleRuntimeSessionTimeoutSeconds: number;
  maxLifetimeSeconds: number;
  environmentVariables: Record<string, string>;
  sessionStorageMountPaths: string[];
  requestHeaderAllowlist: string[];
}

export interface RuntimeRecord {
  id: string;
  name: string;
  arn: string;
  latestVersion: number;
  createdAt: string;
  lastUpdatedAt: string;
  tags: Record<string, string>;
}

export interface RuntimeVersionRecord {
  runtimeId: string;
  version: number;
  config: RuntimeConfig;
  status: RuntimeStatus;
  failureReason: string | undefined;
  createdAt: string;
  lastUpdatedAt: string;
  /** For container images: the manifest digest the version was prepared from (its tag may move). */
  artifactDigest?: string;
}

/** What list operations show of one runtime version: no config, so listing stays cheap. */
export interface RuntimeSummary {
  runtimeId: string;
  name: string;
  arn: string;
  version: number;
  description: string;
  status: RuntimeStatus;
  lastUpdatedAt: string;
}

/** A runtime with the version a caller asked about (the latest when none was named). */
export interface RuntimeView {
  runtime: RuntimeRecord;
  version: RuntimeVersionRecord;
}

export interface EndpointRecord {
  runtimeId: string;
  name: string;
  arn: string;
  description: string;
  /** The version the endpoint should serve. */
  targetVersion: number;
  /** The version it serves now: the target once that version is READY. */
  liveVersion: number | undefined;
  createdAt: string;
  lastUpdatedAt: string;
  tags: Record<string, string>;
}

export const defaultEndpointName = "DEFAULT";
