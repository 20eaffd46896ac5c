import type { IncomingMessage, ServerResponse } from "node:http";
import { BerthError } from "../core/errors.ts";
import { errorShapes } from "./error-status.ts";

/** A request as the operations see it: the raw path split into decoded segments, and its query. */
export interface WireRequest {
  method: string;
  /** The path exactly as sent (still percent-encoded), which SigV4 signs. */
  rawPath: string;
  segments: string[];
  query: URLSearchParams;
  headers: IncomingMessage["headers"];
  requestId: string;
  /**
   * What the request turned out to address, for the request's metrics (core/observer.ts): set
   * once its runtime was found (invocationTargetOf), so no made-up id ever becomes a label.
   */
  observed?: { runtimeId?: string; endpoint?: string };
}

export function parseRequestTarget(url: string): {
  rawPath: string;
  segments: string[];
  query: URLSearchParams;
} {
  const queryStart = url.indexOf("?");
  const rawPath = queryStart === -1 ? url : url.slice(0, queryStart);
  const query = new URLSearchParams(queryStart === -1 ? "" : url.slice(queryStart + 1));
  // A full ARN arrives as one encoded segment, so split first and decode each segment after.
  const segments = rawPath.split("/").map((segment) => {
    try {
      return decodeURIComponent(segment);
    } catch {
      throw new BerthError(
        "ValidationException",
        `Path segment "${segment}" is not valid percent-encoding`,
        {
          reason: "CannotParse",
        },
      );
    }
  });
  return { rawPath, segments, query };
}

export function parseJsonObject(body: Buffer): Record<string, unknown> {
  if (body.length === 0) return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (error) {
    throw new BerthError(
      "ValidationException",
      `Request body is not valid JSON: ${(error as Error).message}`,
      {
        reason: "CannotParse",
      },
    );
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new BerthError("ValidationException", "Request body must be a JSON object", {
      reason: "CannotParse",
    });
  }
  return parsed as Record<string, unknown>;
}

export function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  requestId: string,
): void {
  // 204 No Content has no body and no length: a JSON answer would announce bytes never sent.
  if (status === 204) {
    response.writeHead(204, { "x-amzn-requestid": requestId });
    response.end();
    return;
  }
  const payload = Buffer.from(JSON.stringify(body));
  response.writeHead(status, {
    "content-type": "application/json",
    "content-length": payload.length,
    "x-amzn-requestid": requestId,
  });
  response.end(payload);
}

/** Encodes an error as the SDK reads it: type in x-amzn-errortype, JSON body with message. */
export function sendError(response: ServerResponse, error: BerthError, requestId: string): void {
  if (response.headersSent) {
    response.destroy(error);
    return;
  }
  const answer = errorAnswer(error, requestId);
  response.writeHead(answer.status, answer.headers);
  response.end(answer.payload);
}

/** An error's status, headers and JSON body, as sendError writes them. */
export function errorAnswer(
  error: BerthError,
  requestId: string,
): { status: number; headers: Record<string, string | number>; payload: Buffer } {
  const body: Record<string, unknown> = { message: error.message };
  if (error.reason !== undefined) body["reason"] = error.reason;
  if (error.fieldList !== undefined) body["fieldList"] = error.fieldList;
  const payload = Buffer.from(JSON.stringify(body));
  return {
    status: errorShapes[error.code].status,
    headers: {
      "content-type": "application/json",
      "content-length": payload.length,
      "x-amzn-requestid": requestId,
      "x-amzn-errortype": error.code,
      // The SDK corrects its clock from this header after a skew error.
      date: new Date().toUTCString(),
    },
    payload,
  };
}
