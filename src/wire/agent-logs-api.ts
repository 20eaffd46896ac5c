import { once } from "node:events";
import type { ServerResponse } from "node:http";
import { followAgentLogs, type FollowEnd, type FollowItem } from "../core/agent-log-follow.ts";
import {
  entryOfRecord,
  latestOf,
  type AgentLogLine,
  type AgentLogPage,
  type AgentLogQuery,
  type AgentLogs,
} from "../core/agent-logs.ts";
import type { CoreContext } from "../core/context.ts";
import { BerthError, invalidFields } from "../core/errors.ts";
import type { SessionManager } from "../core/sessions.ts";
import type { Operation, OperationInput } from "./operation.ts";

/** Lines one answer holds at most, and unless asked otherwise. */
const maxLogLimit = 10_000;
const defaultLogLimit = 1000;
/** Bytes of line text one answer holds at most: the latest lines that fit. */
const maxAnswerBytes = 8 * 1024 * 1024;
/** New lines held for a follower reading slowly before lines are skipped. */
const maxQueuedBytes = 1024 * 1024;

export interface AgentLogsApiOptions {
  /** Longest a follow lasts (agentLogFollowMaxSeconds). */
  followMaxMs: number;
  /** Aborts as Berth begins to shut down: follows end then, saying so. */
  shutdown: AbortSignal;
  /** Where the lines other nodes of a cluster hold are read from. */
  elsewhere: LogsElsewhere;
}

export interface LogsElsewhere {
  /**
   * Each other live node's answer to the same read (a JSON body of this operation), and the
   * nodes that did not answer. Undefined: there are none (no cluster).
   */
  read:
    | ((
        runtimeId: string,
        query: URLSearchParams,
      ) => Promise<{ answers: unknown[]; unreachableNodes: string[] }>)
    | undefined;
}

/** A line as the API shows it. */
export interface WireLogLine {
  time: string;
  sessionId: string;
  stream: AgentLogLine["stream"];
  line: string;
  event?: AgentLogLine["event"];
}

/**
 * GetAgentLogs: what a runtime's sessions printed (Berth's own operator API, signed as the rest).
 * `?sessionId=&since=&limit=` answers JSON, the latest lines (of every node of a cluster);
 * `&follow=true` streams them as JSON lines, then each new one as it comes, from this node.
 */
export function agentLogOperations(
  context: CoreContext,
  logs: AgentLogs,
  sessions: SessionManager,
  options: AgentLogsApiOptions,
): Operation[] {
  return [
    {
      name: "GetAgentLogs",
      method: "GET",
      path: "/berth/v1/runtimes/:runtimeId/logs".split("/"),
      successStatus: 200,
      body: "json",
      handle: async (input) => {
        const runtimeId = input.params["runtimeId"] ?? "";
        const request = readLogsRequest(input.request.query);
        if ((await context.store.findRuntime(runtimeId)) === undefined)
          throw new BerthError(
            "ResourceNotFoundException",
            `No agent runtime with id ${runtimeId}`,
          );
        const query: AgentLogQuery = { ...request.query, runtimeId };
        if (!request.follow) return { json: await readEverywhere(logs, query, input, options) };
        await follow(logs, query, sessions, options, input);
        return { streamed: true };
      },
    },
  ];
}

/** The query parameters, checked: each wrong one named with what it takes. */
function readLogsRequest(params: URLSearchParams): {
  query: Omit<AgentLogQuery, "runtimeId">;
  follow: boolean;
} {
  const problems: { name: string; message: string }[] = [];
  const sessionId = params.get("sessionId") ?? undefined;
  if (sessionId !== undefined && !/^[\x21-\x7e]{1,256}$/.test(sessionId))
    problems.push({ name: "sessionId", message: "must be 1 to 256 printable characters" });
  const since = params.get("since") ?? undefined;
  const sinceMs = since === undefined ? undefined : Date.parse(since);
  if (sinceMs !== undefined && Number.isNaN(sinceMs))
    problems.push({
      name: "since",
      message: "must be an ISO 8601 time, e.g. 2025-01-31T12:00:00Z",
    });
  const limitText = params.get("limit") ?? String(defaultLogLimit);
  const limit = Number(limitText);
  if (!/^\d+$/.test(limitText) || limit < 1 || limit > maxLogLimit)
    problems.push({ name: "limit", message: `must be a whole number from 1 to ${maxLogLimit}` });
  const followText = params.get("follow") ?? "false";
  if (followText !== "true" && followText !== "false")
    problems.push({ name: "follow", message: "must be true or false" });
  if (problems.length > 0) throw invalidFields(problems);
  return {
    query: { sessionId, sinceMs, limit, maxBytes: maxAnswerBytes },
    follow: followText === "true",
  };
}

/** The latest lines here and, asked by a client (not another node), on every other node. */
async function readEverywhere(
  logs: AgentLogs,
  query: AgentLogQuery,
  input: OperationInput,
  options: AgentLogsApiOptions,
): Promise<{ lines: WireLogLine[]; truncated: boolean; unreachableNodes?: string[] }> {
  const here = await logs.read(query);
  // A node asked by another answers for itself only.
  if (input.forwardedBy !== undefined || options.elsewhere.read === undefined)
    return answerOf(here);
  const elsewhere = await options.elsewhere.read(query.runtimeId, forwardedQuery(query));
  const page = latestOf([here, ...elsewhere.answers.map(pageOf)], query);
  return {
    ...answerOf(page),
    ...(elsewhere.unreachableNodes.length > 0
      ? { unreachableNodes: elsewhere.unreachableNodes }
      : {}),
  };
}

function forwardedQuery(query: AgentLogQuery): URLSearchParams {
  const params = new URLSearchParams({ limit: String(query.limit) });
  if (query.sessionId !== undefined) params.set("sessionId", query.sessionId);
  if (query.sinceMs !== undefined) params.set("since", new Date(query.sinceMs).toISOString());
  return params;
}

/**
 * Streams the lines so far, then each new one, as JSON lines: a line per record, then a last
 * `{"end": ...}` saying why the follow ended. Written as fast as the client reads, no faster.
 */
async function follow(
  logs: AgentLogs,
  query: AgentLogQuery,
  sessions: SessionManager,
  options: AgentLogsApiOptions,
  input: OperationInput,
): Promise<void> {
  const { outgoing, signal } = input.raw;
  const stop = AbortSignal.any([signal, options.shutdown]);
  const items = followAgentLogs(logs, query, {
    signal: stop,
    maxMs: options.followMaxMs,
    isRunning: (sessionId) => sessions.isRunning(query.runtimeId, sessionId),
    maxQueuedBytes,
  });
  outgoing.writeHead(200, {
    "content-type": "application/x-ndjson",
    "x-amzn-requestid": input.request.requestId,
  });
  outgoing.flushHeaders();
  try {
    for await (const item of items) {
      if (signal.aborted) return; // the client left: nobody to write to
      await writeRecord(outgoing, recordOf(item, options), stop);
    }
  } catch (error) {
    // Waiting for a slow client when it left or Berth began to shut down: the answer is cut.
    if (!stop.aborted) throw error;
    outgoing.destroy();
    return;
  }
  outgoing.end();
}

async function writeRecord(outgoing: ServerResponse, record: unknown, stop: AbortSignal) {
  if (!outgoing.write(`${JSON.stringify(record)}\n`))
    await once(outgoing, "drain", { signal: stop });
}

function recordOf(item: FollowItem, options: AgentLogsApiOptions): unknown {
  if ("line" in item) return wireLine(item.line);
  if ("skipped" in item) return item;
  return { end: item.end, message: endMessage(item.end, options) };
}

function endMessage(end: FollowEnd, options: AgentLogsApiOptions): string {
  switch (end) {
    case "session-ended":
      return "The session ended.";
    case "session-not-running":
      return "The session does not run on this node: these are its lines so far.";
    case "time-limit":
      return `A follow lasts at most ${options.followMaxMs / 1000} s (agentLogFollowMaxSeconds): follow again from the last line's time.`;
    case "stopped":
      return "Berth is shutting down.";
  }
}

function answerOf(page: AgentLogPage): { lines: WireLogLine[]; truncated: boolean } {
  return { lines: page.lines.map(wireLine), truncated: page.truncated };
}

function wireLine(line: AgentLogLine): WireLogLine {
  return {
    time: new Date(line.timeMs).toISOString(),
    sessionId: line.sessionId,
    stream: line.stream,
    line: line.line,
    ...(line.event === undefined ? {} : { event: line.event }),
  };
}

/** Another node's answer as a page; what is not a line of this API is left out. */
function pageOf(answer: unknown): AgentLogPage {
  const { lines, truncated } = (answer ?? {}) as { lines?: unknown; truncated?: unknown };
  const parsed = (Array.isArray(lines) ? lines : []).flatMap((line: unknown) => {
    const entry = entryOfRecord(line);
    const sessionId = (line as { sessionId?: unknown }).sessionId;
    return entry === undefined || typeof sessionId !== "string" ? [] : [{ ...entry, sessionId }];
  });
  return { lines: parsed, truncated: truncated === true };
}
