/**
 * Every error Berth can answer with. The code is the AWS error type the SDK sees; the wire layer
 * owns the HTTP status of each (see src/wire/error-status.ts), so core code never thinks in HTTP.
 */
export const errorCodes = [
  "ValidationException",
  "ResourceNotFoundException",
  "ConflictException",
  "ServiceQuotaExceededException",
  "ThrottlingException",
  "AccessDeniedException",
  "RuntimeClientError",
  "InternalServerException",
  "UnknownOperationException",
  "MissingAuthenticationTokenException",
  "IncompleteSignatureException",
  "InvalidSignatureException",
  "UnrecognizedClientException",
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export type ValidationReason =
  | "CannotParse"
  | "FieldValidationFailed"
  | "IdempotentParameterMismatchException"
  | "ResourceConflict";

export interface FieldProblem {
  /** Dotted path of the member as the SDK user wrote it, e.g. `lifecycleConfiguration.maxLifetime`. */
  name: string;
  message: string;
}

const brand = Symbol.for("berth.error");

export class BerthError extends Error {
  readonly [brand] = true;
  readonly code: ErrorCode;
  readonly reason: ValidationReason | undefined;
  readonly fieldList: readonly FieldProblem[] | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    details: {
      reason?: ValidationReason;
      fieldList?: readonly FieldProblem[];
      cause?: unknown;
    } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = code;
    this.code = code;
    this.reason = details.reason;
    this.fieldList = details.fieldList;
  }

  /** Works across two copies of this module (e.g. a test importing through another path). */
  static isInstance(value: unknown): value is BerthError {
    return typeof value === "object" && value !== null && brand in value;
  }
}

export function notFound(message: string): BerthError {
  return new BerthError("ResourceNotFoundException", message);
}

export function conflict(message: string): BerthError {
  return new BerthError("ConflictException", message);
}

export function invalidFields(fieldList: readonly FieldProblem[]): BerthError {
  const summary = fieldList.map((problem) => `${problem.name}: ${problem.message}`).join("; ");
  return new BerthError("ValidationException", `Invalid request. ${summary}`, {
    reason: "FieldValidationFailed",
    fieldList,
  });
}
