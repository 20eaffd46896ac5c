import { exitCodes } from "./output.ts";

/** An error answer from Berth's own API (/berth/v1/...), shaped like the SDK's errors. */
export class BerthApiError extends Error {
  constructor(name: string, message: string) {
    super(message);
    this.name = name;
  }

  static fromAnswer(answer: { status: number; json: Record<string, unknown> }): BerthApiError {
    const type = typeof answer.json["__type"] === "string" ? answer.json["__type"] : undefined;
    const name = type?.split("#").at(-1) ?? `HTTP ${String(answer.status)}`;
    const message = answer.json["message"];
    return new BerthApiError(name, typeof message === "string" ? message : "no message");
  }
}

const authErrors = new Set([
  "UnrecognizedClientException",
  "InvalidSignatureException",
  "MissingAuthenticationTokenException",
  "IncompleteSignatureException",
  "CredentialsProviderError",
]);

/** What to tell a person about a failure, and the exit code scripts see. */
export function describeFailure(
  error: unknown,
  endpoint: string,
): { exitCode: number; message: string } {
  const failure = error as Error & { code?: string; cause?: { code?: string } };
  const networkCode = failure.code ?? failure.cause?.code;
  if (
    networkCode !== undefined &&
    ["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ECONNRESET", "ETIMEDOUT"].includes(networkCode)
  ) {
    return {
      exitCode: exitCodes.unreachable,
      message: `cannot reach Berth at ${endpoint} (${networkCode}). Is \`berth serve\` running there? Point the CLI at it with --endpoint URL or BERTH_ENDPOINT.`,
    };
  }
  if (authErrors.has(failure.name)) {
    return {
      exitCode: exitCodes.unauthorized,
      message: `Berth refused the credentials (${failure.name}: ${failure.message}). Use the access key Berth printed at its first start (export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...), or run the CLI as root on the server's machine to read them from its data directory.`,
    };
  }
  if (failure.name === "Error" || failure.name === "TypeError") {
    return { exitCode: exitCodes.failed, message: failure.message };
  }
  return { exitCode: exitCodes.failed, message: `${failure.name}: ${failure.message}` };
}
