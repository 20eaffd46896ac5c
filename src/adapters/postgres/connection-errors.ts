import { sqlState, unanswered } from "./database-errors.ts";

/**
 * PostgreSQL cannot be used as the settings name it: one line saying what to fix, naming the
 * server by host and port only (the URL may hold a password).
 */
export class PostgresConnectionError extends Error {
  override readonly name = "PostgresConnectionError";
}

/** The parts of a database URL a message may show. */
export interface DatabaseAddress {
  /** HOST:PORT */
  server: string;
  database: string;
  user: string;
  /** To scrub from any message quoted (never shown). */
  password: string;
}

/** Reads the URL; PostgresConnectionError when it is no postgres:// URL (without quoting it). */
export function databaseAddress(url: string): DatabaseAddress {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new PostgresConnectionError(notAUrl);
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new PostgresConnectionError(notAUrl);
  }
  const host = parsed.hostname || (parsed.searchParams.get("host") ?? "localhost");
  return {
    server: `${host}:${parsed.port || "5432"}`,
    database: decodeURIComponent(parsed.pathname.slice(1)) || "(the user's)",
    user: decodeURIComponent(parsed.username) || "(the system user)",
    password: decodeURIComponent(parsed.password),
  };
}

const notAUrl =
  "databaseUrl is not a PostgreSQL URL: write it as postgres://USER:PASSWORD@HOST:PORT/DATABASE";

/** What a failure to connect or to prepare the schema says about the settings, as one line. */
export function explainConnectionFailure(
  error: unknown,
  address: DatabaseAddress,
): PostgresConnectionError {
  return new PostgresConnectionError(diagnose(error, address), { cause: error });
}

function diagnose(error: unknown, address: DatabaseAddress): string {
  const { server, database, user } = address;
  const code = unanswered(error);
  if (code !== undefined) {
    return `cannot reach PostgreSQL at ${server} (databaseUrl): ${code}: check the host and port, and that PostgreSQL runs and this machine reaches it`;
  }
  const said = scrub(oneLine(error), address.password);
  const state = sqlState(error);
  if (state === "28P01" || state === "28000") {
    return `PostgreSQL at ${server} refused user ${user} (databaseUrl): ${said}: check the user and password, and pg_hba.conf`;
  }
  if (state === "3D000") {
    return `PostgreSQL at ${server} has no database ${database} (databaseUrl): create it (CREATE DATABASE), or name one that exists`;
  }
  if (state === "42501") {
    return `user ${user} may not create Berth's tables in database ${database} at ${server} (databaseUrl): ${said}: make the user the database's owner`;
  }
  return `PostgreSQL at ${server} failed as Berth's database (databaseUrl): ${said}`;
}

function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/\s+/g, " ").trim();
}

function scrub(text: string, password: string): string {
  return password === "" ? text : text.replaceAll(password, "***");
}
