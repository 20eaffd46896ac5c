import type { CoreContext } from "../core/context.ts";
import * as endpoints from "../core/endpoints.ts";
import { encodePageToken, readPageRequest } from "../core/pagination.ts";
import * as runtimes from "../core/runtimes.ts";
import * as tags from "../core/tags.ts";
import { endpointShape, runtimeDetailShape, runtimeSummaryShape } from "./control-plane-shapes.ts";
import { notSupportedOperations } from "./not-supported.ts";
import { operation, type Operation, type OperationInput } from "./operation.ts";

/** The AgentCore control plane: every path ends in "/", as the SDK sends it. */
export function controlPlaneOperations(context: CoreContext): Operation[] {
  const runtimeId = (input: OperationInput): string => input.params["runtimeId"] ?? "";
  const endpointName = (input: OperationInput): string => input.params["endpointName"] ?? "";
  const resourceArn = (input: OperationInput): string => input.params["resourceArn"] ?? "";
  const query = (input: OperationInput, name: string): string | undefined =>
    input.request.query.get(name) ?? undefined;
  const page = (input: OperationInput) =>
    readPageRequest({
      maxResults: query(input, "maxResults"),
      nextToken: query(input, "nextToken"),
    });

  return [
    operation("CreateAgentRuntime", "PUT", "/runtimes/", 202, async (input) => {
      const change = await runtimes.createRuntime(context, input.body);
      return {
        agentRuntimeArn: change.runtimeArn,
        agentRuntimeId: change.runtimeId,
        agentRuntimeVersion: String(change.version),
        createdAt: change.createdAt,
        status: change.status,
      };
    }),
    operation("ListAgentRuntimes", "POST", "/runtimes/", 200, async (input) => {
      const result = await runtimes.listRuntimes(context, page(input));
      return {
        agentRuntimes: result.items.map(runtimeSummaryShape),
        nextToken: encodePageToken(result.lastKey),
      };
    }),
    operation("GetAgentRuntime", "GET", "/runtimes/:runtimeId/", 200, async (input) =>
      runtimeDetailShape(
        await runtimes.getRuntime(context, runtimeId(input), query(input, "version")),
      ),
    ),
    operation("UpdateAgentRuntime", "PUT", "/runtimes/:runtimeId/", 202, async (input) => {
      const change = await runtimes.updateRuntime(context, runtimeId(input), input.body);
      return {
        agentRuntimeArn: change.runtimeArn,
        agentRuntimeId: change.runtimeId,
        agentRuntimeVersion: String(change.version),
        createdAt: change.createdAt,
        lastUpdatedAt: change.lastUpdatedAt,
        status: change.status,
      };
    }),
    operation("DeleteAgentRuntime", "DELETE", "/runtimes/:runtimeId/", 202, async (input) => {
      const deletion = await runtimes.deleteRuntime(
        context,
        runtimeId(input),
        query(input, "version"),
        query(input, "clientToken"),
      );
      return {
        status: "DELETING",
        agentRuntimeId: deletion.runtimeId,
        agentRuntimeVersion: deletion.version === undefined ? undefined : String(deletion.version),
      };
    }),
    operation(
      "ListAgentRuntimeVersions",
      "POST",
      "/runtimes/:runtimeId/versions/",
      200,
      async (input) => {
        const result = await runtimes.listRuntimeVersions(context, runtimeId(input), page(input));
        return {
          agentRuntimes: result.items.map(runtimeSummaryShape),
          nextToken: encodePageToken(result.lastKey),
        };
      },
    ),
    operation(
      "CreateAgentRuntimeEndpoint",
      "PUT",
      "/runtimes/:runtimeId/runtime-endpoints/",
      202,
      async (input) => {
        const shape = endpointShape(
          await endpoints.createEndpoint(context, runtimeId(input), input.body),
        );
        return pick(shape, [
          "targetVersion",
          "agentRuntimeEndpointArn",
          "agentRuntimeArn",
          "agentRuntimeId",
          "endpointName",
          "status",
          "createdAt",
        ]);
      },
    ),
    operation(
      "ListAgentRuntimeEndpoints",
      "POST",
      "/runtimes/:runtimeId/runtime-endpoints/",
      200,
      async (input) => {
        const result = await endpoints.listEndpoints(context, runtimeId(input), page(input));
        return {
          runtimeEndpoints: result.items.map(endpointShape),
          nextToken: encodePageToken(result.lastKey),
        };
      },
    ),
    operation(
      "GetAgentRuntimeEndpoint",
      "GET",
      "/runtimes/:runtimeId/runtime-endpoints/:endpointName/",
      200,
      async (input) =>
        endpointShape(await endpoints.getEndpoint(context, runtimeId(input), endpointName(input))),
    ),
    operation(
      "UpdateAgentRuntimeEndpoint",
      "PUT",
      "/runtimes/:runtimeId/runtime-endpoints/:endpointName/",
      202,
      async (input) => {
        const shape = endpointShape(
          await endpoints.updateEndpoint(
            context,
            runtimeId(input),
            endpointName(input),
            input.body,
          ),
        );
        return pick(shape, [
          "liveVersion",
          "targetVersion",
          "agentRuntimeEndpointArn",
          "agentRuntimeArn",
          "status",
          "createdAt",
          "lastUpdatedAt",
        ]);
      },
    ),
    operation(
      "DeleteAgentRuntimeEndpoint",
      "DELETE",
      "/runtimes/:runtimeId/runtime-endpoints/:endpointName/",
      202,
      async (input) => {
        const deletion = await endpoints.deleteEndpoint(
          context,
          runtimeId(input),
          endpointName(input),
          query(input, "clientToken"),
        );
        return {
          status: "DELETING",
          agentRuntimeId: deletion.runtimeId,
          endpointName: deletion.endpointName,
        };
      },
    ),
    // Tags of runtimes and endpoints, named by ARN.
    operation("ListTagsForResource", "GET", "/tags/:resourceArn", 200, async (input) => ({
      tags: await tags.listTags(context, resourceArn(input)),
    })),
    operation("TagResource", "POST", "/tags/:resourceArn", 204, (input) =>
      tags.tagResource(context, resourceArn(input), input.body),
    ),
    operation("UntagResource", "DELETE", "/tags/:resourceArn", 204, (input) =>
      tags.untagResource(context, resourceArn(input), input.request.query.getAll("tagKeys")),
    ),
    ...notSupportedOperations(),
  ];
}

function pick(shape: Record<string, unknown>, members: readonly string[]): Record<string, unknown> {
  return Object.fromEntries(members.map((member) => [member, shape[member]]));
}
