import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import { createInterface } from "node:readline";
import type { Writable } from "node:stream";
import { UsageError, hasFlag, integerOption, optionValue, requirePositionals } from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import { BerthApiError } from "./errors.ts";
import { exitCodes } from "./output.ts";
import { resolveRuntime } from "./runtimes.ts";

/** A line as GET /berth/v1/runtimes/{id}/logs answers it. */
interface LogLine {
  time: string;
  sessionId: string;
  stream: "stdout" | "stderr" | "berth";
  line: string;
  event?: string;
}

/** What a follow streams: lines, reports of lines skipped, and its end. */
type FollowRecord =
  LogLine | { skipped: { lines: number; bytes: number } } | { end: string; message: string };

export const logsCommand: CliCommand = {
  name: "logs",
  summary:
    "print what a runtime's agents printed on stdout and stderr (kept after their sessions end); --follow streams new lines",
  usage: "logs RUNTIME [--session ID] [--follow] [--since 10m|TIME] [--limit N]",
  options: {
    session: {
      value: true,
      doc: "one session's lines (default: every session's, each line prefixed with its session)",
    },
    follow: {
      doc: "then print new lines as they are printed (with --session: until the session ends; Ctrl-C stops)",
    },
    since: {
      value: true,
      doc: "only lines from this long ago (30s, 10m, 2h, 1d) or from this ISO 8601 time on",
    },
    limit: {
      value: true,
      doc: "at most this many lines so far, the latest (1-10000, default 1000)",
    },
  },
  examples: [
    "berth logs my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa",
    "berth logs my_agent --since 10m",
    "berth logs my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa --follow",
    "berth logs my_agent --follow --json",
  ],
  run: async (context) => {
    const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
    const sessionId = optionValue(context.args, "session");
    const since = sinceOption(context.args.options.get("since")?.at(-1), Date.now());
    const limit = integerOption(context.args, "limit", { min: 1, max: 10_000 });
    const runtime = await resolveRuntime(context.connection, RUNTIME);
    const printer = new LinePrinter(context, sessionId === undefined);
    const params = new URLSearchParams();
    if (sessionId !== undefined) params.set("sessionId", sessionId);
    if (since !== undefined) params.set("since", since);
    if (limit !== undefined) params.set("limit", String(limit));
    const path = `/berth/v1/runtimes/${encodeURIComponent(runtime.id)}/logs`;
    if (hasFlag(context.args, "follow")) return follow(context, path, params, printer);
    const answer = await context.connection.berthApi("GET", `${path}?${params.toString()}`);
    for (const line of (answer["lines"] ?? []) as LogLine[]) await printer.print(line);
    if (answer["truncated"] === true && !context.json)
      context.io.stderr.write(
        "berth logs: older lines were left out: ask for them with --since and --limit\n",
      );
    noteUnreachable(context, answer["unreachableNodes"]);
    return exitCodes.ok;
  },
};

/**
 * Follows until the session ends, Berth ends the follow, or Ctrl-C. A follow Berth ends at its
 * time limit (agentLogFollowMaxSeconds) is taken up again from the last line's time, the lines
 * of that moment already printed left out.
 */
async function follow(
  context: CommandContext,
  path: string,
  params: URLSearchParams,
  printer: LinePrinter,
): Promise<number> {
  params.set("follow", "true");
  for (;;) {
    const response = await context.connection.berthRequest("GET", `${path}?${params.toString()}`);
    await refuseError(response);
    const end = await printFollow(response, printer);
    if (end === undefined) {
      context.io.stderr.write("berth logs: the connection to Berth was lost\n");
      return exitCodes.unreachable;
    }
    if (end.end !== "time-limit") {
      if (context.json) await writeText(context.io.stdout, `${JSON.stringify(end)}\n`);
      else if (end.end !== "session-ended") context.io.stderr.write(`berth logs: ${end.message}\n`);
      return end.end === "stopped" ? exitCodes.unreachable : exitCodes.ok;
    }
    const resumeAt = printer.resume();
    if (resumeAt !== undefined) params.set("since", resumeAt);
  }
}

/** Prints a follow's records as they come; resolves with its end (undefined: cut short). */
async function printFollow(
  response: IncomingMessage,
  printer: LinePrinter,
): Promise<{ end: string; message: string } | undefined> {
  for await (const text of createInterface({ input: response, crlfDelay: Infinity })) {
    if (text === "") continue;
    const record = JSON.parse(text) as FollowRecord;
    if ("end" in record) return record;
    if ("skipped" in record) await printer.skipped(record.skipped);
    else await printer.print(record);
  }
  return undefined;
}

async function refuseError(response: IncomingMessage): Promise<void> {
  const status = response.statusCode ?? 0;
  if (status < 300) return;
  const chunks: Buffer[] = [];
  for await (const chunk of response as AsyncIterable<Buffer>) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  throw BerthApiError.fromAnswer({
    status,
    json: (text === "" ? {} : JSON.parse(text)) as Record<string, unknown>,
  });
}

/**
 * Writes lines as a person reads them: the agent's stdout to stdout, its stderr to stderr,
 * Berth's notes to stderr marked [berth]; each prefixed with its session when several are
 * shown. With --json, each record as a JSON line on stdout. Remembers the lines of the last
 * moment printed, so that a follow taken up again there prints none of them twice.
 */
class LinePrinter {
  private readonly context: CommandContext;
  private readonly prefixed: boolean;
  private lastTimeText: string | undefined;
  /** The lines printed with lastTimeText's time, as JSON. */
  private atLastTime: string[] = [];
  /** After a follow is taken up again: the lines of its first moment printed already. */
  private printedAlready: string[] = [];

  constructor(context: CommandContext, prefixed: boolean) {
    this.context = context;
    this.prefixed = prefixed;
  }

  /**
   * The follow is taken up again from the last line's time (returned): the lines of that moment
   * printed already are not printed again.
   */
  resume(): string | undefined {
    this.printedAlready = [...this.atLastTime];
    return this.lastTimeText;
  }

  async print(line: LogLine): Promise<void> {
    const key = JSON.stringify(line);
    if (line.time === this.lastTimeText) {
      const already = this.printedAlready.indexOf(key);
      if (already >= 0) {
        this.printedAlready.splice(already, 1);
        return;
      }
      this.atLastTime.push(key);
    } else {
      this.lastTimeText = line.time;
      this.atLastTime = [key];
      this.printedAlready = [];
    }
    const { stdout, stderr } = this.context.io;
    if (this.context.json) {
      await writeText(stdout, `${key}\n`);
      return;
    }
    const prefix = this.prefixed ? `${shortSession(visibleText(line.sessionId))} | ` : "";
    const text = visibleText(line.line);
    if (line.stream === "stdout") await writeText(stdout, `${prefix}${text}\n`);
    else if (line.stream === "stderr") await writeText(stderr, `${prefix}${text}\n`);
    else await writeText(stderr, `${prefix}[berth] ${text}\n`);
  }

  async skipped(skipped: { lines: number; bytes: number }): Promise<void> {
    if (this.context.json) {
      await writeText(this.context.io.stdout, `${JSON.stringify({ skipped })}\n`);
      return;
    }
    await writeText(
      this.context.io.stderr,
      `berth logs: ${skipped.lines} lines (${skipped.bytes} bytes) skipped: they came faster than this terminal took them\n`,
    );
  }
}

/**
 * An agent's text as it may reach a terminal: control characters (C0 but tab, DEL, C1) shown as
 * \xHH. Raw, they would let an agent drive the reader's terminal: write to its clipboard (OSC
 * 52), move its cursor, overwrite a line to forge one of Berth's.
 */
export function visibleText(text: string): string {
  return text.replace(
    /[\u0000-\u0008\u000a-\u001f\u007f-\u009f]/g,
    (character) => `\\x${character.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/** A session id short enough to prefix lines with: its start, which usually tells them apart. */
export function shortSession(sessionId: string): string {
  return sessionId.length <= 16 ? sessionId.padEnd(16) : `${sessionId.slice(0, 15)}…`;
}

/** --since as the API takes it: an ISO time, from a duration back from now or a time. */
export function sinceOption(text: string | undefined, nowMs: number): string | undefined {
  if (text === undefined) return undefined;
  const units: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const duration = /^(\d+)([smhd])$/.exec(text);
  if (duration !== null)
    return new Date(
      nowMs - Number(duration[1]) * (units[duration[2] ?? "s"] ?? 1000),
    ).toISOString();
  const timeMs = Date.parse(text);
  if (/^\d{4}-\d{2}-\d{2}/.test(text) && !Number.isNaN(timeMs))
    return new Date(timeMs).toISOString();
  throw new UsageError(
    `--since takes a duration (30s, 10m, 2h, 1d) or an ISO 8601 time (2025-01-31T12:00:00Z), not "${text}"`,
  );
}

function noteUnreachable(context: CommandContext, nodes: unknown): void {
  if (!Array.isArray(nodes) || nodes.length === 0) return;
  context.io.stderr.write(
    `berth logs: these nodes did not answer, their lines are missing: ${nodes.join(", ")}\n`,
  );
}

async function writeText(stream: Writable, text: string): Promise<void> {
  if (!stream.write(text)) await once(stream, "drain");
}
