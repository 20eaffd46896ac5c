/**
 * Whether a socket error's `code` says no server answered at all: refused, reset, timed out,
 * unreachable, or a name that does not resolve. In adapters/host: the database's and the object
 * store's clients both tell such a failure from a server's own refusal.
 */
export function isNetworkFailureCode(code: unknown): code is string {
  return typeof code === "string" && networkFailureCodes.has(code);
}

const networkFailureCodes: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EPIPE",
]);
