import { createHash } from "node:crypto";
import { BerthError } from "./errors.ts";
import { DuplicateClientTokenError, type IdempotencyRecord, type MetadataStore } from "./store.ts";

/**
 * Runs a mutation at most once per clientToken: a retry with the same token and the same
 * request gets the first answer; the same token with a different request is refused, as AgentCore
 * does, with reason IdempotentParameterMismatchException.
 */
export async function runIdempotent<T>(options: {
  store: MetadataStore;
  scope: string;
  clientToken: string | undefined;
  request: unknown;
  now: string;
  mutate: (record: (response: T) => IdempotencyRecord | undefined) => Promise<T>;
}): Promise<T> {
  const { store, scope, clientToken, request, now } = options;
  if (clientToken === undefined) return options.mutate(() => undefined);
  const requestHash = hashRequest(request);
  const replay = async (): Promise<T | undefined> => {
    const earlier = await store.findIdempotency(scope, clientToken);
    if (earlier === undefined) return undefined;
    if (earlier.requestHash !== requestHash) {
      throw new BerthError(
        "ValidationException",
        `clientToken ${clientToken} was already used with a different request; use a new token for a new request`,
        { reason: "IdempotentParameterMismatchException" },
      );
    }
    return earlier.response as T;
  };
  const earlier = await replay();
  if (earlier !== undefined) return earlier;
  try {
    return await options.mutate((response) => ({
      scope,
      clientToken,
      requestHash,
      response,
      createdAt: now,
    }));
  } catch (error) {
    // An identical request with the same token won the race: answer what it answered.
    if (error instanceof DuplicateClientTokenError) {
      const winner = await replay();
      if (winner !== undefined) return winner;
    }
    throw error;
  }
}

function hashRequest(request: unknown): string {
  return createHash("sha256").update(canonicalJson(request)).digest("hex");
}

/** JSON with object keys sorted, so member order in the body does not change the hash. */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.entries(value)
      .filter(([, member]) => member !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, member]) => `${JSON.stringify(key)}:${canonicalJson(member)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}
