import { BerthError, notFound } from "./errors.ts";
import type { CoreContext } from "./context.ts";
import { runtimeIdFromArnOrId } from "./ids.ts";
import { defaultEndpointName, type RuntimeRecord, type RuntimeVersionRecord } from "./model.ts";

export interface InvocationTarget {
  runtime: RuntimeRecord;
  version: RuntimeVersionRecord;
}

/** The runtime version a data-plane call reaches: the live version of the named endpoint. */
export async function resolveInvocationTarget(
  context: CoreContext,
  arnOrId: string,
  qualifier: string | undefined,
): Promise<InvocationTarget> {
  const runtimeId = runtimeIdFromArnOrId(arnOrId);
  const runtime = await context.store.findRuntime(runtimeId);
  if (runtime === undefined || (arnOrId.startsWith("arn:") && arnOrId !== runtime.arn)) {
    throw notFound(
      `No agent runtime ${arnOrId} in region ${context.region} and account ${context.accountId}`,
    );
  }
  const endpointName = qualifier ?? defaultEndpointName;
  const endpoint = await context.store.findEndpoint(runtime.id, endpointName);
  if (endpoint === undefined)
    throw notFound(`Agent runtime ${runtime.id} has no endpoint named ${endpointName}`);
  if (endpoint.liveVersion === undefined) {
    const target = await context.store.findRuntimeVersion(runtime.id, endpoint.targetVersion);
    throw new BerthError(
      "ConflictException",
      `Endpoint ${endpointName} of ${runtime.id} has no READY version yet (version ${endpoint.targetVersion} is ${target?.status ?? "missing"}${target?.failureReason === undefined ? "" : `: ${target.failureReason}`})`,
    );
  }
  const version = await context.store.findRuntimeVersion(runtime.id, endpoint.liveVersion);
  if (version === undefined)
    throw notFound(`Version ${endpoint.liveVersion} of ${runtime.id} no longer exists`);
  return { runtime, version };
}
