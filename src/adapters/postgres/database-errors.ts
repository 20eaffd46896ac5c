import { DatabaseError } from "pg";
import { BerthError } from "../../core/errors.ts";
import { isNetworkFailureCode } from "../host/network-errors.ts";

/*
 * What a failed query says: PostgreSQL's own verdict on a statement (its SQLSTATE), or that no
 * PostgreSQL answered at all. Only the second is worth a retry of the whole request.
 */

/** PostgreSQL's SQLSTATE for a failed statement; undefined for anything else (a network error). */
export function sqlState(error: unknown): string | undefined {
  return error instanceof DatabaseError ? error.code : undefined;
}

export const uniqueViolation = "23505";

export function isDeadlock(error: unknown): boolean {
  return sqlState(error) === "40P01";
}

/**
 * Why no PostgreSQL answered, in a word or two (ECONNREFUSED, query timeout); undefined when one
 * did, or for any failure of another kind. Follows `cause`, so an error already translated, or
 * one pg wrapped around the socket's, still tells.
 */
export function unanswered(error: unknown): string | undefined {
  if (!(error instanceof Error)) return undefined;
  if (BerthError.isInstance(error)) return unanswered(error.cause); // translated already
  const code = (error as { code?: unknown }).code;
  if (isNetworkFailureCode(code)) return code;
  const said = pgMessages.find(([message]) => error.message.includes(message));
  if (said !== undefined) return said[1];
  // A name that resolves to several addresses fails with every address's error together.
  if (error instanceof AggregateError) return unanswered(error.errors[0]);
  return unanswered(error.cause);
}

/** How pg (8.x) and its pool report a server that stopped answering: message, then our word. */
const pgMessages: readonly (readonly [string, string])[] = [
  ["Query read timeout", "query timeout"],
  ["connection timeout", "connection timeout"],
  ["timeout exceeded when trying to connect", "connection timeout"],
  ["Connection terminated unexpectedly", "connection lost"],
];

/**
 * The answer for a request that needed the database while it did not answer: retryable, and
 * naming the server by host and port only (the URL may hold a password). Undefined for any other
 * failure, which stays what it was.
 */
export function databaseUnavailable(server: string, error: unknown): BerthError | undefined {
  const why = unanswered(error);
  if (why === undefined) return undefined;
  return new BerthError(
    "ThrottlingException",
    `The cluster's database (${server}) did not answer (${why}): retry once it is back`,
    { cause: error },
  );
}
