import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import type { SessionStorage } from "../core/session-storage.ts";
import { operation, type Operation } from "./operation.ts";

/**
 * Berth's own operator API for session storage (outside the AWS paths, signed the same way):
 * size and usage of every session's volumes, and deleting one session's storage.
 */
export function storageOperations(context: CoreContext, storage: SessionStorage): Operation[] {
  const requireRuntime = async (runtimeId: string) => {
    if ((await context.store.findRuntime(runtimeId)) === undefined)
      throw new BerthError("ResourceNotFoundException", `No agent runtime with id ${runtimeId}`);
  };
  return [
    operation(
      "ListSessionStorage",
      "GET",
      "/berth/v1/runtimes/:runtimeId/storage",
      200,
      async (input) => {
        const runtimeId = input.params["runtimeId"] ?? "";
        await requireRuntime(runtimeId);
        return { storage: await storage.list(runtimeId) };
      },
    ),
    operation(
      "DeleteSessionStorage",
      "DELETE",
      "/berth/v1/runtimes/:runtimeId/sessions/:sessionId/storage",
      200,
      async (input) => {
        const runtimeId = input.params["runtimeId"] ?? "";
        const sessionId = input.params["sessionId"] ?? "";
        await requireRuntime(runtimeId);
        if (!(await storage.removeSession(runtimeId, sessionId))) {
          throw new BerthError(
            "ResourceNotFoundException",
            `Session ${sessionId} of agent runtime ${runtimeId} has no storage`,
          );
        }
        return {};
      },
    ),
  ];
}
