import { InputReader } from "./input-reader.ts";
import type { PageRequest } from "./store.ts";

export const maxPageSize = 100;

/**
 * nextToken is an opaque, versioned wrapper around the key of the last row returned. Rows are
 * keyed by insertion order, so rows created while a caller pages appear at the end instead of
 * shifting pages already read.
 */
export function encodePageToken(lastKey: number | undefined): string | undefined {
  return lastKey === undefined
    ? undefined
    : Buffer.from(JSON.stringify({ v: 1, after: lastKey })).toString("base64url");
}

export function readPageRequest(query: {
  maxResults?: string | undefined;
  nextToken?: string | undefined;
}): PageRequest {
  const reader = new InputReader();
  const limit =
    query.maxResults === undefined
      ? maxPageSize
      : reader.integer(Number(query.maxResults), "maxResults", 1, maxPageSize);
  let afterKey: number | undefined;
  if (query.nextToken !== undefined) {
    afterKey = decodeToken(query.nextToken);
    if (afterKey === undefined)
      reader.problem("nextToken", "is not a token this server issued; start again without it");
  }
  reader.throwIfProblems();
  return { afterKey, limit: limit ?? maxPageSize };
}

function decodeToken(token: string): number | undefined {
  try {
    const parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as unknown;
    if (typeof parsed === "object" && parsed !== null && "v" in parsed && "after" in parsed) {
      const { v, after } = parsed;
      if (v === 1 && typeof after === "number" && Number.isSafeInteger(after)) return after;
    }
  } catch {
    // fall through: any token that does not decode is simply not ours
  }
  return undefined;
}
