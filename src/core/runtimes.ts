import { conflict, notFound, BerthError } from "./errors.ts";
import { timestamp, type CoreContext } from "./context.ts";
import { runIdempotent } from "./idempotency.ts";
import { endpointArn, newRuntimeId, runtimeArn } from "./ids.ts";
import {
  defaultEndpointName,
  type RuntimeRecord,
  type RuntimeVersionRecord,
  type RuntimeSummary,
  type RuntimeView,
} from "./model.ts";
import { readRuntimeInput } from "./runtime-input.ts";
import { NameTakenError, type Page, type PageRequest } from "./store.ts";
import { readCreateTags } from "./tags.ts";

/** What Create/Update answer (and what a retry with the same clientToken answers again). */
export interface RuntimeChange {
  runtimeId: string;
  runtimeArn: string;
  version: number;
  status: RuntimeVersionRecord["status"];
  createdAt: string;
  lastUpdatedAt: string;
}

export async function createRuntime(
  context: CoreContext,
  body: Record<string, unknown>,
): Promise<RuntimeChange> {
  const input = readRuntimeInput(body, "create", context.minLifecycleSeconds);
  // Tags follow the same rules here as in TagResource (pattern, reserved "aws:" prefix).
  const tags = readCreateTags(body["tags"]);
  const now = timestamp(context);
  return runIdempotent<RuntimeChange>({
    store: context.store,
    scope: "CreateAgentRuntime",
    clientToken: input.clientToken,
    request: { ...body, clientToken: undefined },
    now,
    mutate: async (record) => {
      const id = newRuntimeId(input.name);
      const arn = runtimeArn(context.region, context.accountId, id);
      const runtime: RuntimeRecord = {
        id,
        name: input.name,
        arn,
        latestVersion: 1,
        createdAt: now,
        lastUpdatedAt: now,
        tags,
      };
      const version: RuntimeVersionRecord = {
        runtimeId: id,
        version: 1,
        config: input.config,
        status: "CREATING",
        failureReason: undefined,
        createdAt: now,
        lastUpdatedAt: now,
      };
      const change: RuntimeChange = {
        runtimeId: id,
        runtimeArn: arn,
        version: 1,
        status: "CREATING",
        createdAt: now,
        lastUpdatedAt: now,
      };
      try {
        await context.store.createRuntime({
          runtime,
          version,
          defaultEndpoint: {
            runtimeId: id,
            name: defaultEndpointName,
            arn: endpointArn(arn, defaultEndpointName),
            description: "",
            targetVersion: 1,
            liveVersion: undefined,
            createdAt: now,
            lastUpdatedAt: now,
            tags: {},
          },
          idempotency: record(change),
        });
      } catch (error) {
        if (error instanceof NameTakenError) {
          throw conflict(
            `An agent runtime named ${input.name} already exists; choose another name or update it`,
          );
        }
        throw error;
      }
      context.prepareVersion(version);
      return change;
    },
  });
}

export async function updateRuntime(
  context: CoreContext,
  runtimeId: string,
  body: Record<string, unknown>,
): Promise<RuntimeChange> {
  const input = readRuntimeInput(body, "update", context.minLifecycleSeconds);
  const now = timestamp(context);
  return runIdempotent<RuntimeChange>({
    store: context.store,
    scope: `UpdateAgentRuntime/${runtimeId}`,
    clientToken: input.clientToken,
    request: { ...body, clientToken: undefined },
    now,
    mutate: async (record) => {
      const runtime = await requireRuntime(context, runtimeId);
      const change = (version: number): RuntimeChange => ({
        runtimeId,
        runtimeArn: runtime.arn,
        version,
        status: "UPDATING",
        createdAt: runtime.createdAt,
        lastUpdatedAt: now,
      });
      // The store numbers the version inside its transaction: reading the latest here and
      // writing latest + 1 later would give concurrent updates the same number.
      const version = await context.store.addRuntimeVersion({
        draft: {
          runtimeId,
          config: input.config,
          status: "UPDATING",
          failureReason: undefined,
          createdAt: now,
          lastUpdatedAt: now,
        },
        idempotency: (number) => record(change(number)),
      });
      if (version === undefined) throw notFound(`No agent runtime with id ${runtimeId}`);
      context.prepareVersion(version);
      return change(version.version);
    },
  });
}

export async function getRuntime(
  context: CoreContext,
  runtimeId: string,
  versionText: string | undefined,
): Promise<RuntimeView> {
  const runtime = await requireRuntime(context, runtimeId);
  const versionNumber =
    versionText === undefined ? runtime.latestVersion : parseVersion(versionText);
  const version = await context.store.findRuntimeVersion(runtimeId, versionNumber);
  if (version === undefined)
    throw notFound(`Agent runtime ${runtimeId} has no version ${versionText ?? ""}`);
  return { runtime, version };
}

export interface RuntimeDeletion {
  runtimeId: string;
  version: number | undefined;
}

/**
 * Deletes a whole runtime (its versions and endpoints), or with `versionText` one old version.
 * The latest version and versions an endpoint serves cannot be deleted on their own.
 */
export async function deleteRuntime(
  context: CoreContext,
  runtimeId: string,
  versionText: string | undefined,
  clientToken: string | undefined,
): Promise<RuntimeDeletion> {
  const version = versionText === undefined ? undefined : parseVersion(versionText);
  return runIdempotent<RuntimeDeletion>({
    store: context.store,
    scope: `DeleteAgentRuntime/${runtimeId}`,
    clientToken,
    request: { version },
    now: timestamp(context),
    mutate: async (record) => {
      const runtime = await requireRuntime(context, runtimeId);
      const deletion: RuntimeDeletion = { runtimeId, version };
      if (version === undefined) {
        await context.endSessions(runtimeId);
        await context.store.deleteRuntime(runtimeId, record(deletion));
        return deletion;
      }
      if ((await context.store.findRuntimeVersion(runtimeId, version)) === undefined) {
        throw notFound(`Agent runtime ${runtimeId} has no version ${version}`);
      }
      if (version === runtime.latestVersion) {
        throw conflict(
          `Version ${version} is the latest version of ${runtimeId}; delete the runtime instead`,
        );
      }
      await refuseIfServed(context, runtimeId, version);
      await context.store.deleteRuntimeVersion(runtimeId, version, record(deletion));
      return deletion;
    },
  });
}

export function listRuntimes(
  context: CoreContext,
  page: PageRequest,
): Promise<Page<RuntimeSummary>> {
  return context.store.listRuntimes(page);
}

export async function listRuntimeVersions(
  context: CoreContext,
  runtimeId: string,
  page: PageRequest,
): Promise<Page<RuntimeSummary>> {
  await requireRuntime(context, runtimeId);
  return context.store.listRuntimeVersions(runtimeId, page);
}

export async function requireRuntime(
  context: CoreContext,
  runtimeId: string,
): Promise<RuntimeRecord> {
  const runtime = await context.store.findRuntime(runtimeId);
  if (runtime === undefined) throw notFound(`No agent runtime with id ${runtimeId}`);
  return runtime;
}

export function parseVersion(text: string): number {
  const version = /^[1-9][0-9]{0,8}$/.test(text) ? Number(text) : undefined;
  if (version === undefined) {
    throw new BerthError(
      "ValidationException",
      `Version must be a positive whole number (got "${text}")`,
      {
        reason: "FieldValidationFailed",
        fieldList: [{ name: "version", message: "must be a positive whole number" }],
      },
    );
  }
  return version;
}

async function refuseIfServed(
  context: CoreContext,
  runtimeId: string,
  version: number,
): Promise<void> {
  let afterKey: number | undefined;
  do {
    const page = await context.store.listEndpoints(runtimeId, { afterKey, limit: 100 });
    const serving = page.items.find(
      (endpoint) => endpoint.targetVersion === version || endpoint.liveVersion === version,
    );
    if (serving !== undefined) {
      throw conflict(
        `Version ${version} of ${runtimeId} is served by endpoint ${serving.name}; move the endpoint first`,
      );
    }
    afterKey = page.lastKey;
  } while (afterKey !== undefined);
}
