import { serverProtocols, type ServerProtocol } from "../core/protocols.ts";
import { spawn } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { Transform } from "node:stream";
import {
  CreateAgentRuntimeCommand,
  CreateAgentRuntimeEndpointCommand,
  DeleteAgentRuntimeCommand,
  DeleteAgentRuntimeEndpointCommand,
  GetAgentRuntimeCommand,
  GetAgentRuntimeEndpointCommand,
  ListAgentRuntimeEndpointsCommand,
  ListAgentRuntimesCommand,
  UpdateAgentRuntimeCommand,
  UpdateAgentRuntimeEndpointCommand,
  type AgentRuntimeArtifact,
  type GetAgentRuntimeCommandOutput,
} from "@aws-sdk/client-bedrock-agentcore-control";
import {
  UsageError,
  hasFlag,
  integerOption,
  optionValue,
  pairsOption,
  requirePositionals,
} from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import type { Connection } from "./connection.ts";
import { BerthApiError } from "./errors.ts";
import { Progress, exitCodes, formatBytes, printJson, table, type Io } from "./output.ts";

export interface RuntimeRef {
  id: string;
  arn: string;
  name: string;
}

const uploadBucket = "berth-uploads";
const idPattern = /^[a-zA-Z][a-zA-Z0-9_]{0,47}-[a-zA-Z0-9]{10}$/;

/** A runtime named by id, ARN or name (names are looked up). */
export async function resolveRuntime(connection: Connection, ref: string): Promise<RuntimeRef> {
  const id = ref.startsWith("arn:") ? (ref.split("/").at(-1) ?? ref) : ref;
  if (idPattern.test(id)) {
    const runtime = await connection.control.send(
      new GetAgentRuntimeCommand({ agentRuntimeId: id }),
    );
    return { id, arn: runtime.agentRuntimeArn ?? "", name: runtime.agentRuntimeName ?? "" };
  }
  let nextToken: string | undefined;
  do {
    const page = await connection.control.send(new ListAgentRuntimesCommand({ nextToken }));
    const found = page.agentRuntimes?.find((runtime) => runtime.agentRuntimeName === ref);
    if (found !== undefined) {
      return {
        id: found.agentRuntimeId ?? "",
        arn: found.agentRuntimeArn ?? "",
        name: found.agentRuntimeName ?? "",
      };
    }
    nextToken = page.nextToken;
  } while (nextToken !== undefined);
  throw new BerthApiError(
    "ResourceNotFoundException",
    `No agent runtime named or with id "${ref}"; \`berth runtimes list\` shows them`,
  );
}

const runtimeSettings = {
  runtime: {
    value: true,
    doc: "NODE_22 or PYTHON_3_10..PYTHON_3_14; the server needs that Python (default: PYTHON_3_12 for a .py entry, else NODE_22)",
  },
  storage: {
    value: true,
    repeatable: true,
    doc: "session storage mount path, e.g. /mnt/workspace (repeatable)",
  },
  env: { value: true, repeatable: true, doc: "environment variable NAME=VALUE (repeatable)" },
  "idle-timeout": { value: true, doc: "idleRuntimeSessionTimeout in seconds" },
  "max-lifetime": { value: true, doc: "maxLifetime in seconds" },
  description: { value: true, doc: "a description" },
  protocol: {
    value: true,
    doc: "the agent's server protocol: HTTP (default), MCP (port 8000, /mcp), A2A (port 9000) or AGUI",
  },
  "no-wait": { doc: "return at once instead of waiting until the version is READY" },
} as const;

const codeOptions = {
  code: { value: true, doc: "folder with the agent's code, uploaded to Berth" },
  entry: { value: true, doc: "entry point inside the folder, e.g. main.js or main.py" },
  image: {
    value: true,
    doc: "a container image (host[:port]/repository:tag or @sha256:…), pulled by Berth",
  },
} as const;

export const runtimeCommands: CliCommand[] = [
  {
    name: "runtimes create",
    summary: "create an agent runtime from a local folder (uploaded to Berth) or an image",
    usage: "runtimes create NAME (--code DIR --entry FILE | --image URI) [options]",
    options: { ...codeOptions, ...runtimeSettings },
    examples: [
      "berth runtimes create my_agent --code ./examples/node-agent --entry main.js",
      "berth runtimes create coder --code . --entry main.py --storage /mnt/workspace --env MODEL=small",
      "berth runtimes create boxed --image registry.example.com:5000/agent:1",
    ],
    run: async (context) => {
      const { NAME } = requirePositionals(context.args, ["NAME"]);
      const artifact = await artifactOf(context, NAME);
      const created = await context.connection.control.send(
        new CreateAgentRuntimeCommand({
          agentRuntimeName: NAME,
          agentRuntimeArtifact: artifact,
          roleArn: undefined,
          networkConfiguration: { networkMode: "PUBLIC" },
          ...runtimeConfig(context),
        }),
      );
      return showSettled(context, created.agentRuntimeId ?? "");
    },
  },
  {
    name: "runtimes update",
    summary: "make a new version: new code, settings, or both",
    usage: "runtimes update RUNTIME [--code DIR --entry FILE | --image URI] [options]",
    options: { ...codeOptions, ...runtimeSettings },
    examples: [
      "berth runtimes update my_agent --code ./examples/node-agent --entry main.js",
      "berth runtimes update my_agent --env LOG_LEVEL=debug --storage /mnt/workspace",
    ],
    run: async (context) => {
      const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      const current = await context.connection.control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: runtime.id }),
      );
      const artifact =
        hasFlag(context.args, "code") || hasFlag(context.args, "image")
          ? await artifactOf(context, runtime.name)
          : current.agentRuntimeArtifact;
      if (artifact === undefined)
        throw new UsageError("the runtime has no artifact; give --code or --image");
      await context.connection.control.send(
        new UpdateAgentRuntimeCommand({
          agentRuntimeId: runtime.id,
          agentRuntimeArtifact: artifact,
          roleArn: current.roleArn,
          networkConfiguration: current.networkConfiguration ?? { networkMode: "PUBLIC" },
          ...keptConfig(current),
          ...runtimeConfig(context),
        }),
      );
      return showSettled(context, runtime.id);
    },
  },
  {
    name: "runtimes list",
    summary: "list agent runtimes",
    usage: "runtimes list",
    options: {},
    examples: ["berth runtimes list", "berth runtimes list --json"],
    run: async (context) => {
      requirePositionals(context.args, []);
      const runtimes = [];
      let nextToken: string | undefined;
      do {
        const page = await context.connection.control.send(
          new ListAgentRuntimesCommand({ nextToken }),
        );
        runtimes.push(...(page.agentRuntimes ?? []));
        nextToken = page.nextToken;
      } while (nextToken !== undefined);
      if (context.json) printJson(context.io, { agentRuntimes: runtimes });
      else
        context.io.stdout.write(
          table(
            runtimes.map((runtime) => ({
              id: runtime.agentRuntimeId,
              name: runtime.agentRuntimeName,
              version: runtime.agentRuntimeVersion,
              status: runtime.status,
              updated: runtime.lastUpdatedAt?.toISOString(),
            })),
            ["id", "name", "version", "status", "updated"],
            "No agent runtimes yet: create one with `berth runtimes create`.",
          ),
        );
      return exitCodes.ok;
    },
  },
  {
    name: "runtimes get",
    summary: "show one runtime (its latest version)",
    usage: "runtimes get RUNTIME",
    options: {},
    examples: ["berth runtimes get my_agent", "berth runtimes get my_agent-AbCdEf1234 --json"],
    run: async (context) => {
      const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      return showRuntime(context, runtime.id);
    },
  },
  {
    name: "runtimes delete",
    summary: "delete a runtime, its endpoints, sessions and session storage",
    usage: "runtimes delete RUNTIME",
    options: {},
    examples: ["berth runtimes delete my_agent"],
    run: async (context) => {
      const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      await context.connection.control.send(
        new DeleteAgentRuntimeCommand({ agentRuntimeId: runtime.id }),
      );
      if (context.json) printJson(context.io, { agentRuntimeId: runtime.id, status: "DELETED" });
      else context.io.stdout.write(`Deleted ${runtime.name} (${runtime.id}).\n`);
      return exitCodes.ok;
    },
  },
  {
    name: "endpoints list",
    summary: "list a runtime's endpoints",
    usage: "endpoints list RUNTIME",
    options: {},
    examples: ["berth endpoints list my_agent"],
    run: async (context) => {
      const { RUNTIME } = requirePositionals(context.args, ["RUNTIME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      const page = await context.connection.control.send(
        new ListAgentRuntimeEndpointsCommand({ agentRuntimeId: runtime.id }),
      );
      const endpoints = page.runtimeEndpoints ?? [];
      if (context.json) printJson(context.io, { runtimeEndpoints: endpoints });
      else
        context.io.stdout.write(
          table(
            endpoints.map((endpoint) => ({
              name: endpoint.name,
              liveVersion: endpoint.liveVersion,
              targetVersion: endpoint.targetVersion,
              status: endpoint.status,
            })),
            ["name", "liveVersion", "targetVersion", "status"],
            "No endpoints.",
          ),
        );
      return exitCodes.ok;
    },
  },
  {
    name: "endpoints create",
    summary: "create a named endpoint pinned to a version",
    usage: "endpoints create RUNTIME NAME [--version N]",
    options: { version: { value: true, doc: "the version to serve (default: the latest)" } },
    examples: ["berth endpoints create my_agent prod --version 1"],
    run: async (context) => {
      const { RUNTIME, NAME } = requirePositionals(context.args, ["RUNTIME", "NAME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      const version = integerOption(context.args, "version", { min: 1, max: 1_000_000 });
      const created = await context.connection.control.send(
        new CreateAgentRuntimeEndpointCommand({
          agentRuntimeId: runtime.id,
          name: NAME,
          ...(version === undefined ? {} : { agentRuntimeVersion: String(version) }),
        }),
      );
      return showEndpoint(context, runtime.id, created.endpointName ?? NAME);
    },
  },
  {
    name: "endpoints update",
    summary: "point an endpoint at another version",
    usage: "endpoints update RUNTIME NAME --version N",
    options: { version: { value: true, doc: "the version to serve" } },
    examples: ["berth endpoints update my_agent prod --version 2"],
    run: async (context) => {
      const { RUNTIME, NAME } = requirePositionals(context.args, ["RUNTIME", "NAME"]);
      const version = integerOption(context.args, "version", { min: 1, max: 1_000_000 });
      if (version === undefined) throw new UsageError("--version is required");
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      await context.connection.control.send(
        new UpdateAgentRuntimeEndpointCommand({
          agentRuntimeId: runtime.id,
          endpointName: NAME,
          agentRuntimeVersion: String(version),
        }),
      );
      return showEndpoint(context, runtime.id, NAME);
    },
  },
  {
    name: "endpoints get",
    summary: "show one endpoint",
    usage: "endpoints get RUNTIME NAME",
    options: {},
    examples: ["berth endpoints get my_agent DEFAULT"],
    run: async (context) => {
      const { RUNTIME, NAME } = requirePositionals(context.args, ["RUNTIME", "NAME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      return showEndpoint(context, runtime.id, NAME);
    },
  },
  {
    name: "endpoints delete",
    summary: "delete a named endpoint",
    usage: "endpoints delete RUNTIME NAME",
    options: {},
    examples: ["berth endpoints delete my_agent prod"],
    run: async (context) => {
      const { RUNTIME, NAME } = requirePositionals(context.args, ["RUNTIME", "NAME"]);
      const runtime = await resolveRuntime(context.connection, RUNTIME);
      await context.connection.control.send(
        new DeleteAgentRuntimeEndpointCommand({ agentRuntimeId: runtime.id, endpointName: NAME }),
      );
      if (context.json) printJson(context.io, { endpointName: NAME, status: "DELETED" });
      else context.io.stdout.write(`Deleted endpoint ${NAME} of ${runtime.name}.\n`);
      return exitCodes.ok;
    },
  },
];

function runtimeConfig(context: CommandContext) {
  const idle = integerOption(context.args, "idle-timeout", { min: 1, max: 28_800 });
  const lifetime = integerOption(context.args, "max-lifetime", { min: 1, max: 28_800 });
  const storage = context.args.options.get("storage");
  const environment = pairsOption(context.args, "env");
  const description = optionValue(context.args, "description");
  const protocol = optionValue(context.args, "protocol");
  if (protocol !== undefined && !(serverProtocols as readonly string[]).includes(protocol)) {
    throw new UsageError(`--protocol must be one of ${serverProtocols.join(", ")}`);
  }
  return {
    ...(protocol === undefined
      ? {}
      : { protocolConfiguration: { serverProtocol: protocol as ServerProtocol } }),
    ...(idle === undefined && lifetime === undefined
      ? {}
      : {
          lifecycleConfiguration: {
            ...(idle === undefined ? {} : { idleRuntimeSessionTimeout: idle }),
            ...(lifetime === undefined ? {} : { maxLifetime: lifetime }),
          },
        }),
    ...(storage === undefined
      ? {}
      : {
          filesystemConfigurations: storage.map((mountPath) => ({ sessionStorage: { mountPath } })),
        }),
    ...(Object.keys(environment).length === 0 ? {} : { environmentVariables: environment }),
    ...(description === undefined ? {} : { description }),
  };
}

/** What an update carries over from the current version when not given again. */
function keptConfig(current: GetAgentRuntimeCommandOutput) {
  return {
    // An MCP server stays one: an update without --protocol would otherwise make it HTTP.
    ...(current.protocolConfiguration === undefined
      ? {}
      : { protocolConfiguration: current.protocolConfiguration }),
    ...(current.lifecycleConfiguration === undefined
      ? {}
      : { lifecycleConfiguration: current.lifecycleConfiguration }),
    ...(current.filesystemConfigurations === undefined
      ? {}
      : { filesystemConfigurations: current.filesystemConfigurations }),
    ...(current.environmentVariables === undefined
      ? {}
      : { environmentVariables: current.environmentVariables }),
    ...(current.description === undefined ? {} : { description: current.description }),
  };
}

/** --image as it is, or --code packed with tar and uploaded to Berth; returns the artifact. */
async function artifactOf(context: CommandContext, name: string): Promise<AgentRuntimeArtifact> {
  const image = optionValue(context.args, "image");
  if (image !== undefined) return { containerConfiguration: { containerUri: image } };
  const folder = optionValue(context.args, "code");
  const entry = optionValue(context.args, "entry");
  if (folder === undefined || entry === undefined)
    throw new UsageError("--code DIR and --entry FILE are required");
  const directory = resolve(folder);
  if (!existsSync(directory) || !statSync(directory).isDirectory())
    throw new UsageError(`--code ${folder} is not a folder`);
  if (!existsSync(join(directory, entry)))
    throw new UsageError(`--entry ${entry} is not in ${folder}`);
  const prefix = `${name}-${Date.now().toString(36)}`;
  const progress = new Progress(context.io, `Uploading ${folder}`, context.json);
  const tar = spawn("tar", ["-czf", "-", "-C", directory, "."], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let sent = 0;
  const counted = tar.stdout.pipe(
    new Transform({
      transform(chunk: Buffer, _encoding, done) {
        sent += chunk.length;
        progress.update(`Uploading ${folder} (${formatBytes(sent)})`);
        done(null, chunk);
      },
    }),
  );
  let answer: Record<string, unknown>;
  try {
    answer = await context.connection.berthApi(
      "PUT",
      `/berth/v1/artifacts/${uploadBucket}/${encodeURIComponent(prefix)}`,
      counted,
    );
  } finally {
    progress.done();
  }
  return {
    codeConfiguration: {
      code: { s3: uploadedCode(answer) ?? { bucket: uploadBucket, prefix } },
      runtime: (optionValue(context.args, "runtime") ??
        (entry.endsWith(".py") ? "PYTHON_3_12" : "NODE_22")) as "NODE_22",
      entryPoint: [entry],
    },
  };
}

/**
 * Where the upload's answer says the code now is (with an object store: the object it became);
 * undefined from a Berth that answers without it, which kept the code where it was sent.
 */
function uploadedCode(
  answer: Record<string, unknown>,
): { bucket: string; prefix: string; versionId?: string } | undefined {
  const s3 = answer["s3"];
  if (typeof s3 !== "object" || s3 === null) return undefined;
  const { bucket, prefix, versionId } = s3 as Record<string, unknown>;
  if (typeof bucket !== "string" || typeof prefix !== "string") return undefined;
  return { bucket, prefix, ...(typeof versionId === "string" ? { versionId } : {}) };
}

/** Waits (with a progress line) until the latest version is READY or failed, then shows it. */
async function showSettled(context: CommandContext, runtimeId: string): Promise<number> {
  if (!hasFlag(context.args, "no-wait")) {
    const progress = new Progress(context.io, "Preparing the new version", context.json);
    try {
      for (;;) {
        const runtime = await context.connection.control.send(
          new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }),
        );
        if (runtime.status !== "CREATING" && runtime.status !== "UPDATING") break;
        await new Promise((settle) => setTimeout(settle, 100));
      }
    } finally {
      progress.done();
    }
  }
  return showRuntime(context, runtimeId);
}

async function showRuntime(context: CommandContext, runtimeId: string): Promise<number> {
  const runtime = await context.connection.control.send(
    new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }),
  );
  if (context.json) printJson(context.io, withoutMetadata(runtime));
  else
    writeFields(context.io, {
      id: runtime.agentRuntimeId,
      name: runtime.agentRuntimeName,
      arn: runtime.agentRuntimeArn,
      version: runtime.agentRuntimeVersion,
      status: runtime.status,
      failureReason: runtime.failureReason,
      storage: runtime.filesystemConfigurations
        ?.map((filesystem) => filesystem.sessionStorage?.mountPath)
        .join(", "),
      updated: runtime.lastUpdatedAt?.toISOString(),
    });
  return runtime.status === "CREATE_FAILED" || runtime.status === "UPDATE_FAILED"
    ? exitCodes.failed
    : exitCodes.ok;
}

async function showEndpoint(
  context: CommandContext,
  runtimeId: string,
  name: string,
): Promise<number> {
  const endpoint = await context.connection.control.send(
    new GetAgentRuntimeEndpointCommand({ agentRuntimeId: runtimeId, endpointName: name }),
  );
  if (context.json) printJson(context.io, withoutMetadata(endpoint));
  else
    writeFields(context.io, {
      name: endpoint.name,
      arn: endpoint.agentRuntimeEndpointArn,
      liveVersion: endpoint.liveVersion,
      targetVersion: endpoint.targetVersion,
      status: endpoint.status,
    });
  return exitCodes.ok;
}

/** An SDK answer without the SDK's own bookkeeping ($metadata). */
function withoutMetadata(answer: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(answer).filter(([key]) => key !== "$metadata"));
}

function writeFields(io: Io, fields: Record<string, string | number | undefined>): void {
  const width = Math.max(...Object.keys(fields).map((key) => key.length));
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined && value !== "")
      io.stdout.write(`${key.padEnd(width)}  ${String(value)}\n`);
  }
}
