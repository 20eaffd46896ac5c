import { BerthError } from "../core/errors.ts";
import { operation, type Operation } from "./operation.ts";

/**
 * Runtime operations of AgentCore's current models (botocore's, and the newer ones of the
 * JavaScript SDK, which add capacity providers) that Berth deliberately does not serve. Each
 * is routed, so a client gets a ValidationException (an error every SDK models) saying so and
 * why, instead of an UnknownOperationException that looks like a wrong endpoint.
 * test/model-coverage.test.ts keeps this list complete and docs/api.md lists it.
 */
const capacityProviders =
  "Berth runs every session in a sandbox on its own host and has no capacity providers (runtimes on EC2 instances)";

const notSupported: readonly { name: string; method: string; path: string; why: string }[] = [
  ...(
    [
      ["PutResourcePolicy", "PUT"],
      ["GetResourcePolicy", "GET"],
      ["DeleteResourcePolicy", "DELETE"],
    ] as const
  ).map(([name, method]) => ({
    name,
    method,
    path: "/resourcepolicy/:resourceArn",
    why: "Berth has no IAM: its access keys reach every runtime, so a stored policy would restrict nothing",
  })),
  ...(
    [
      ["CreateCapacityProvider", "PUT", "/capacity-providers"],
      ["ListCapacityProviders", "POST", "/capacity-providers"],
      ["GetCapacityProvider", "GET", "/capacity-providers/:capacityProviderId"],
      ["UpdateCapacityProvider", "PUT", "/capacity-providers/:capacityProviderId"],
      ["DeleteCapacityProvider", "DELETE", "/capacity-providers/:capacityProviderId"],
      [
        "ListAgentRuntimeVersionsByCapacityProvider",
        "POST",
        "/capacity-providers/:capacityProviderId/runtime-versions",
      ],
      [
        "DeleteCapacityProviderSession",
        "DELETE",
        "/capacity-providers/:capacityProviderId/sessions/:sessionId",
      ],
    ] as const
  ).map(([name, method, path]) => ({ name, method, path, why: capacityProviders })),
];

export function notSupportedOperations(): Operation[] {
  return notSupported.map(({ name, method, path, why }) =>
    operation(name, method, path, 400, () =>
      Promise.reject(
        new BerthError("ValidationException", `${name} is not supported by Berth: ${why}`, {
          reason: "FieldValidationFailed",
        }),
      ),
    ),
  );
}
