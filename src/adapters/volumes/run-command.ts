import { execFile } from "node:child_process";
import { promisify } from "node:util";

/** Runs a program without a shell; rejects with its exit status, stdout and stderr. */
export const runCommand = promisify(execFile);

/** What a failed command said: its stderr, or the error's own message when it said nothing. */
export function commandError(error: unknown): string {
  const stderr = (error as { stderr?: unknown }).stderr;
  const text = typeof stderr === "string" ? stderr.trim() : "";
  return text || (error instanceof Error ? error.message : String(error));
}
