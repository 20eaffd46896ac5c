import { BerthError, conflict, notFound } from "./errors.ts";
import { timestamp, type CoreContext } from "./context.ts";
import { runIdempotent } from "./idempotency.ts";
import { endpointArn } from "./ids.ts";
import { InputReader } from "./input-reader.ts";
import {
  defaultEndpointName,
  type EndpointRecord,
  type RuntimeStatus,
  type RuntimeVersionRecord,
} from "./model.ts";
import { parseVersion, requireRuntime } from "./runtimes.ts";
import { inputLimits } from "./runtime-input.ts";
import { NameTakenError, type Page, type PageRequest } from "./store.ts";
import { readTags } from "./tags.ts";

/** AgentCore's AgentEndpointDescription: shorter than a runtime's description. */
const endpointDescription = { minLength: 0, maxLength: 256 };

/** An endpoint with the status it has now, derived from the versions it targets and serves. */
export interface EndpointView {
  endpoint: EndpointRecord;
  runtimeArn: string;
  status: RuntimeStatus;
  failureReason: string | undefined;
}

export async function createEndpoint(
  context: CoreContext,
  runtimeId: string,
  body: Record<string, unknown>,
): Promise<EndpointView> {
  const reader = new InputReader();
  const name = reader.requiredString(body["name"], "name", {
    pattern: inputLimits.namePattern,
    patternHint: inputLimits.nameHint,
  });
  const versionText = reader.string(body["agentRuntimeVersion"], "agentRuntimeVersion", {
    minLength: 1,
    maxLength: 10,
  });
  const description = reader.string(body["description"], "description", endpointDescription);
  const tags = readTags(reader, body["tags"], "tags");
  const clientToken = reader.string(body["clientToken"], "clientToken", inputLimits.clientToken);
  reader.throwIfProblems();
  const endpointName = name ?? "";
  const now = timestamp(context);
  return runIdempotent<EndpointView>({
    store: context.store,
    scope: `CreateAgentRuntimeEndpoint/${runtimeId}`,
    clientToken,
    request: { ...body, clientToken: undefined },
    now,
    mutate: async (record) => {
      const runtime = await requireRuntime(context, runtimeId);
      const target = await requireUsableVersion(
        context,
        runtimeId,
        versionText ?? String(runtime.latestVersion),
      );
      const endpoint: EndpointRecord = {
        runtimeId,
        name: endpointName,
        arn: endpointArn(runtime.arn, endpointName),
        description: description ?? "",
        targetVersion: target.version,
        liveVersion: target.status === "READY" ? target.version : undefined,
        createdAt: now,
        lastUpdatedAt: now,
        tags: tags ?? {},
      };
      const view = describe(endpoint, runtime.arn, target);
      try {
        await context.store.createEndpoint(endpoint, record(view));
      } catch (error) {
        if (error instanceof NameTakenError) {
          throw conflict(
            `Agent runtime ${runtimeId} already has an endpoint named ${endpointName}`,
          );
        }
        throw error;
      }
      return view;
    },
  });
}

export async function updateEndpoint(
  context: CoreContext,
  runtimeId: string,
  endpointName: string,
  body: Record<string, unknown>,
): Promise<EndpointView> {
  const reader = new InputReader();
  const versionText = reader.string(body["agentRuntimeVersion"], "agentRuntimeVersion", {
    minLength: 1,
    maxLength: 10,
  });
  const description = reader.string(body["description"], "description", endpointDescription);
  const clientToken = reader.string(body["clientToken"], "clientToken", inputLimits.clientToken);
  reader.throwIfProblems();
  refuseManagedEndpoint(endpointName, "updated");
  const now = timestamp(context);
  return runIdempotent<EndpointView>({
    store: context.store,
    scope: `UpdateAgentRuntimeEndpoint/${runtimeId}/${endpointName}`,
    clientToken,
    request: { ...body, clientToken: undefined },
    now,
    mutate: async (record) => {
      const runtime = await requireRuntime(context, runtimeId);
      const existing = await requireEndpoint(context, runtimeId, endpointName);
      const target =
        versionText === undefined
          ? await requireVersion(context, runtimeId, existing.targetVersion)
          : await requireUsableVersion(context, runtimeId, versionText);
      const endpoint: EndpointRecord = {
        ...existing,
        description: description ?? existing.description,
        targetVersion: target.version,
        // The endpoint keeps serving its current version until the new target is READY.
        liveVersion: target.status === "READY" ? target.version : existing.liveVersion,
        lastUpdatedAt: now,
      };
      const view = describe(endpoint, runtime.arn, target);
      await context.store.updateEndpoint(endpoint, record(view));
      return view;
    },
  });
}

export async function deleteEndpoint(
  context: CoreContext,
  runtimeId: string,
  endpointName: string,
  clientToken: string | undefined,
): Promise<{ runtimeId: string; endpointName: string }> {
  refuseManagedEndpoint(endpointName, "deleted");
  return runIdempotent({
    store: context.store,
    scope: `DeleteAgentRuntimeEndpoint/${runtimeId}/${endpointName}`,
    clientToken,
    request: {},
    now: timestamp(context),
    mutate: async (record) => {
      await requireRuntime(context, runtimeId);
      await requireEndpoint(context, runtimeId, endpointName);
      const deletion = { runtimeId, endpointName };
      await context.store.deleteEndpoint(runtimeId, endpointName, record(deletion));
      return deletion;
    },
  });
}

export async function getEndpoint(
  context: CoreContext,
  runtimeId: string,
  endpointName: string,
): Promise<EndpointView> {
  const runtime = await requireRuntime(context, runtimeId);
  const endpoint = await requireEndpoint(context, runtimeId, endpointName);
  return describe(
    endpoint,
    runtime.arn,
    await requireVersion(context, runtimeId, endpoint.targetVersion),
  );
}

export async function listEndpoints(
  context: CoreContext,
  runtimeId: string,
  page: PageRequest,
): Promise<Page<EndpointView>> {
  const runtime = await requireRuntime(context, runtimeId);
  const { items, lastKey } = await context.store.listEndpoints(runtimeId, page);
  const views = await Promise.all(
    items.map(async (endpoint) =>
      describe(
        endpoint,
        runtime.arn,
        await requireVersion(context, runtimeId, endpoint.targetVersion),
      ),
    ),
  );
  return { items: views, lastKey };
}

async function requireEndpoint(
  context: CoreContext,
  runtimeId: string,
  name: string,
): Promise<EndpointRecord> {
  const endpoint = await context.store.findEndpoint(runtimeId, name);
  if (endpoint === undefined)
    throw notFound(`Agent runtime ${runtimeId} has no endpoint named ${name}`);
  return endpoint;
}

async function requireVersion(
  context: CoreContext,
  runtimeId: string,
  version: number,
): Promise<RuntimeVersionRecord> {
  const found = await context.store.findRuntimeVersion(runtimeId, version);
  if (found === undefined) throw notFound(`Agent runtime ${runtimeId} has no version ${version}`);
  return found;
}

/** A version an endpoint may point at: one that exists and did not fail to prepare. */
async function requireUsableVersion(
  context: CoreContext,
  runtimeId: string,
  versionText: string,
): Promise<RuntimeVersionRecord> {
  const version = await requireVersion(context, runtimeId, parseVersion(versionText));
  if (version.status === "CREATE_FAILED" || version.status === "UPDATE_FAILED") {
    throw new BerthError(
      "ValidationException",
      `Version ${version.version} of ${runtimeId} failed to prepare (${version.failureReason ?? "no reason recorded"}); point the endpoint at a READY version`,
      {
        reason: "FieldValidationFailed",
        fieldList: [{ name: "agentRuntimeVersion", message: "names a failed version" }],
      },
    );
  }
  return version;
}

function refuseManagedEndpoint(endpointName: string, action: string): void {
  if (endpointName === defaultEndpointName) {
    throw new BerthError(
      "ValidationException",
      `The DEFAULT endpoint always serves the latest version and cannot be ${action}; create a named endpoint to pin a version`,
      {
        reason: "FieldValidationFailed",
        fieldList: [{ name: "endpointName", message: "DEFAULT is managed by Berth" }],
      },
    );
  }
}

function describe(
  endpoint: EndpointRecord,
  runtimeArn: string,
  target: RuntimeVersionRecord,
): EndpointView {
  const live = endpoint.liveVersion;
  const status = endpointStatus(live, target);
  return {
    endpoint,
    runtimeArn,
    status,
    failureReason: status.endsWith("_FAILED") ? target.failureReason : undefined,
  };
}

function endpointStatus(
  liveVersion: number | undefined,
  target: RuntimeVersionRecord,
): RuntimeStatus {
  if (liveVersion === target.version) return "READY";
  const failed = target.status === "CREATE_FAILED" || target.status === "UPDATE_FAILED";
  if (liveVersion === undefined) return failed ? "CREATE_FAILED" : "CREATING";
  return failed ? "UPDATE_FAILED" : "UPDATING";
}
