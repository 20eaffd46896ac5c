import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { once } from "node:events";
import type { Readable, Writable } from "node:stream";
import {
  InvokeAgentRuntimeCommand,
  InvokeAgentRuntimeCommandCommand,
  StopRuntimeSessionCommand,
} from "@aws-sdk/client-bedrock-agentcore";
import { outputTextToBytes } from "../core/output-text.ts";
import { UsageError, integerOption, optionValue, requirePositionals } from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import { describeFailure } from "./errors.ts";
import { exitCodes, formatBytes, printJson, table, type Row } from "./output.ts";
import { resolveRuntime } from "./runtimes.ts";
import { interactiveExec, runInteractiveExec, shellOptions } from "./shell.ts";

const sessionOptions = {
  session: {
    value: true,
    doc: "runtimeSessionId, 33-256 characters (default: a new one, printed on stderr)",
  },
  qualifier: { value: true, doc: "endpoint name (default DEFAULT)" },
} as const;

export const sessionCommands: CliCommand[] = [
  {
    name: "invoke",
    summary: "send a payload to the agent in a session and stream its answer to stdout",
    usage: "invoke RUNTIME [PAYLOAD] [--session ID] [--file FILE|-] [options]",
    options: {
      ...sessionOptions,
      file: { value: true, doc: "read the payload from FILE (- for stdin)" },
      "content-type": { value: true, doc: "payload content type (default application/json)" },
    },
    examples: [
      `berth invoke my_agent '{"prompt": "hello"}' --session conversation-0001-aaaaaaaaaaaaaaaaaaaa`,
      'echo \'{"prompt": "hi"}\' | berth invoke my_agent --file -',
    ],
    run: async (context) => {
      const [ref, inline, ...extra] = context.args.positionals;
      if (ref === undefined) throw new UsageError("missing RUNTIME");
      if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0] ?? ""}"`);
      const payload = await readPayload(context, inline);
      const runtime = await resolveRuntime(context.connection, ref);
      const sessionId = sessionIdOf(context);
      const qualifier = optionValue(context.args, "qualifier");
      const response = await context.connection.data.send(
        new InvokeAgentRuntimeCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: sessionId,
          payload,
          contentType: optionValue(context.args, "content-type") ?? "application/json",
          ...(qualifier === undefined ? {} : { qualifier }),
        }),
      );
      const body = response.response as unknown as Readable | undefined;
      if (body !== undefined) {
        for await (const chunk of body) await write(context.io.stdout, chunk as Buffer);
      }
      return exitCodes.ok;
    },
  },
  {
    name: "exec",
    summary:
      "run a shell command in a session; stdout and stderr stream as they come (-it: a terminal)",
    usage:
      "exec RUNTIME [--session ID] [--timeout SECONDS] -- COMMAND...\n       berth exec -it RUNTIME --session ID [--shell-id ID] [-- COMMAND...]   (a terminal, as berth shell)",
    options: {
      ...sessionOptions,
      timeout: {
        value: true,
        doc: "seconds before the command and all it started are killed (1-3600, default 300)",
      },
      "shell-id": { value: true, doc: `with -it: ${shellOptions["shell-id"].doc}` },
    },
    examples: [
      "berth exec my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa -- npm test",
      "berth exec my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa -- 'cd /mnt/workspace && git status'",
      "berth exec -it my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa -- python3",
    ],
    run: async (context) => {
      const interactive = interactiveExec(context.args);
      if (interactive !== undefined) return runInteractiveExec(context, interactive);
      const [ref, ...words] = context.args.positionals;
      if (ref === undefined) throw new UsageError("missing RUNTIME");
      const command = [...words, ...context.args.rest].join(" ");
      if (command.trim() === "") throw new UsageError("missing COMMAND (after --)");
      const timeout = integerOption(context.args, "timeout", { min: 1, max: 3600 });
      try {
        return await execute(context, ref, command, timeout);
      } catch (error) {
        // The command's own exit codes are the answer: Berth's failures get one of their own.
        if (error instanceof UsageError) throw error;
        const failure = describeFailure(error, context.connection.endpoint);
        context.io.stderr.write(`berth exec: ${failure.message}\n`);
        return exitCodes.execFailed;
      }
    },
  },
  {
    name: "stop",
    summary: "stop a session (its session storage is kept)",
    usage: "stop RUNTIME --session ID",
    options: sessionOptions,
    examples: ["berth stop my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa"],
    run: async (context) => {
      const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
      const sessionId = optionValue(context.args, "session");
      if (sessionId === undefined) throw new UsageError("--session is required");
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      await context.connection.data.send(
        new StopRuntimeSessionCommand({
          agentRuntimeArn: runtime.arn,
          runtimeSessionId: sessionId,
        }),
      );
      if (context.json) printJson(context.io, { runtimeSessionId: sessionId, status: "STOPPED" });
      else context.io.stdout.write(`Stopped session ${sessionId}.\n`);
      return exitCodes.ok;
    },
  },
  {
    name: "sessions list",
    summary: "list a runtime's running sessions with the node running each and their resource use",
    usage: "sessions list RUNTIME",
    options: {},
    examples: ["berth sessions list my_agent"],
    run: (context) =>
      showRuntimeList(context, {
        resource: "sessions",
        columns: [
          "sessionId",
          "node",
          "state",
          "version",
          "started",
          "lastActivity",
          "memory",
          "processes",
        ],
        empty: "No running sessions.",
        row: (session) => {
          const usage = (session["usage"] ?? {}) as Record<string, number | undefined>;
          return {
            sessionId: String(session["sessionId"]),
            node: typeof session["node"] === "string" ? session["node"] : "",
            state: String(session["state"]),
            version: Number(session["version"]),
            started: String(session["startedAt"]),
            lastActivity: String(session["lastActivityAt"]),
            memory: formatBytes(usage["memoryBytes"]),
            processes: usage["processes"],
          };
        },
      }),
  },
  {
    name: "storage list",
    summary:
      "list session storage of a runtime: size, usage, whether attached; with an object store, the last durable generation and whether local changes are pending",
    usage: "storage list RUNTIME",
    options: {},
    examples: ["berth storage list my_agent", "berth storage list my_agent --json"],
    run: (context) =>
      showRuntimeList(context, {
        resource: "storage",
        columns: (volumes) => [
          ...["sessionId", "mountPath", "used", "size", "onDisk", "attached", "lastUsed"],
          // Only a server with an object store reports replicas.
          ...(volumes.some((volume) => volume["replica"] !== undefined)
            ? ["durable", "durableAt", "stored", "pending"]
            : []),
        ],
        empty: "No session storage.",
        row: (volume) => {
          const replica = (volume["replica"] ?? {}) as Record<string, unknown>;
          return {
            sessionId: String(volume["sessionId"]),
            mountPath: String(volume["mountPath"]),
            used: formatBytes(volume["usedBytes"] as number | undefined),
            size: formatBytes(volume["sizeBytes"] as number | undefined),
            onDisk: formatBytes(volume["allocatedBytes"] as number | undefined),
            attached: volume["attached"] === true ? "yes" : "no",
            lastUsed: String(volume["lastUsedAt"]),
            durable:
              replica["generation"] === 0 ? "none" : `generation ${String(replica["generation"])}`,
            durableAt: typeof replica["durableAt"] === "string" ? replica["durableAt"] : "-",
            stored: formatBytes(replica["storedBytes"] as number | undefined),
            pending: pendingText(replica),
          };
        },
      }),
  },
  {
    name: "storage delete",
    summary: "delete one session's storage (stop the session first)",
    usage: "storage delete RUNTIME SESSION",
    options: {},
    examples: ["berth storage delete my_agent conversation-0001-aaaaaaaaaaaaaaaaaaaa"],
    run: async (context) => {
      const { RUNTIME, SESSION } = requirePositionals(context.args, ["RUNTIME", "SESSION"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      await context.connection.berthApi(
        "DELETE",
        `/berth/v1/runtimes/${runtime.id}/sessions/${encodeURIComponent(SESSION)}/storage`,
      );
      if (context.json) printJson(context.io, { runtimeSessionId: SESSION, storage: "DELETED" });
      else context.io.stdout.write(`Deleted the storage of session ${SESSION}.\n`);
      return exitCodes.ok;
    },
  },
];

async function execute(
  context: CommandContext,
  ref: string,
  command: string,
  timeout: number | undefined,
): Promise<number> {
  const runtime = await resolveRuntime(context.connection, ref);
  const qualifier = optionValue(context.args, "qualifier");
  const response = await context.connection.data.send(
    new InvokeAgentRuntimeCommandCommand({
      agentRuntimeArn: runtime.arn,
      runtimeSessionId: sessionIdOf(context),
      body: { command, ...(timeout === undefined ? {} : { timeout }) },
      ...(qualifier === undefined ? {} : { qualifier }),
    }),
  );
  for await (const event of response.stream ?? []) {
    const delta = event.chunk?.contentDelta;
    if (delta?.stdout !== undefined)
      await write(context.io.stdout, outputTextToBytes(delta.stdout));
    if (delta?.stderr !== undefined)
      await write(context.io.stderr, outputTextToBytes(delta.stderr));
    const stop = event.chunk?.contentStop;
    if (stop !== undefined) {
      if (stop.status === "TIMED_OUT")
        context.io.stderr.write(
          `berth exec: the command timed out and was killed (exit ${String(stop.exitCode)})\n`,
        );
      return stop.exitCode ?? exitCodes.execFailed;
    }
  }
  context.io.stderr.write("berth exec: the stream ended without the command's exit\n");
  return exitCodes.execFailed;
}

/** --session, or a new id announced on stderr so the person can come back to it. */
function sessionIdOf(context: CommandContext): string {
  const given = optionValue(context.args, "session");
  if (given !== undefined) return given;
  const created = `session-${randomUUID()}`;
  context.io.stderr.write(`session: ${created}\n`);
  return created;
}

async function readPayload(
  context: CommandContext,
  inline: string | undefined,
): Promise<Uint8Array> {
  const file = optionValue(context.args, "file");
  if (file !== undefined && inline !== undefined)
    throw new UsageError("give the payload as an argument or with --file, not both");
  if (
    file === "-" ||
    (file === undefined && inline === undefined && context.io.stdin.isTTY !== true)
  )
    return readAll(context.io.stdin);
  if (file !== undefined) {
    try {
      return readFileSync(file);
    } catch (error) {
      throw new UsageError(`cannot read --file ${file}: ${(error as Error).message}`);
    }
  }
  if (inline === undefined)
    throw new UsageError("missing PAYLOAD (an argument, --file FILE, or stdin)");
  return Buffer.from(inline);
}

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

async function write(stream: Writable, data: Uint8Array): Promise<void> {
  if (!stream.write(data)) await once(stream, "drain");
}

/** GET /berth/v1/runtimes/{id}/{resource}: the JSON as it is, or a table of its rows. */
async function showRuntimeList(
  context: CommandContext,
  list: {
    resource: string;
    /** The columns shown; a function chooses them from the items (columns some lack are left out). */
    columns: string[] | ((items: Record<string, unknown>[]) => string[]);
    empty: string;
    row: (item: Record<string, unknown>) => Row;
  },
): Promise<number> {
  const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
  const runtime = await resolveRuntime(context.connection, RUNTIME);
  const answer = await context.connection.berthApi(
    "GET",
    `/berth/v1/runtimes/${runtime.id}/${list.resource}`,
  );
  const items = (answer[list.resource] ?? []) as Record<string, unknown>[];
  if (context.json) printJson(context.io, { [list.resource]: items });
  else {
    const columns = typeof list.columns === "function" ? list.columns(items) : list.columns;
    context.io.stdout.write(table(items.map(list.row), columns, list.empty));
  }
  return exitCodes.ok;
}

/** Whether a volume holds changes its object store lacks, with the last checkpoint's error. */
function pendingText(replica: Record<string, unknown>): string {
  const error = replica["lastError"];
  if (typeof error === "string") return `yes (${error})`;
  return replica["pending"] === true ? "yes" : "no";
}
