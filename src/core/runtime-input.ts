import { parseImageReference } from "./image-reference.ts";
import { InputReader } from "./input-reader.ts";
import { managedRuntimes, type AgentArtifact, type RuntimeConfig } from "./model.ts";
import { serverProtocols, type ServerProtocol } from "./protocols.ts";

/** AgentCore's documented limits, shared by runtimes and endpoints. */
export const inputLimits = {
  namePattern: /[a-zA-Z][a-zA-Z0-9_]{0,47}/,
  nameHint: "a letter, then up to 47 letters, digits or underscores",
  clientToken: { minLength: 33, maxLength: 256, pattern: /[a-zA-Z0-9](-*[a-zA-Z0-9]){0,256}/ },
  description: { minLength: 0, maxLength: 4096 },
  sessionSeconds: { min: 60, max: 28_800 },
  defaultIdleSeconds: 900,
  defaultMaxLifetimeSeconds: 28_800,
  mountPath: {
    minLength: 6,
    maxLength: 200,
    pattern: /\/mnt\/[a-zA-Z0-9._-]+/,
    patternHint: "/mnt/ followed by letters, digits, '.', '_' or '-'",
  },
  maxFilesystems: 5,
  tags: {
    maxEntries: 50,
    key: { minLength: 1, maxLength: 128 },
    value: { minLength: 0, maxLength: 256 },
  },
} as const;

export interface RuntimeInput {
  name: string;
  config: RuntimeConfig;
  tags: Record<string, string>;
  clientToken: string | undefined;
}

/** Parses CreateAgentRuntime's body (and, without name and tags, UpdateAgentRuntime's). */
export function readRuntimeInput(
  body: Record<string, unknown>,
  kind: "create" | "update",
  minLifecycleSeconds: number = inputLimits.sessionSeconds.min,
): RuntimeInput {
  const reader = new InputReader();
  const name =
    kind === "create"
      ? reader.requiredString(body["agentRuntimeName"], "agentRuntimeName", {
          pattern: inputLimits.namePattern,
          patternHint: inputLimits.nameHint,
        })
      : "";
  const artifact = readArtifact(reader, body["agentRuntimeArtifact"]);
  const roleArn = reader.string(body["roleArn"], "roleArn", {
    minLength: 1,
    maxLength: 2048,
    pattern: /arn:aws(-[^:]+)?:iam::([0-9]{12})?:role\/.+/,
    patternHint: "an IAM role ARN (arn:aws:iam::123456789012:role/name)",
  });
  const description = reader.string(body["description"], "description", inputLimits.description);
  readNetworkMode(reader, body["networkConfiguration"]);
  const serverProtocol = readServerProtocol(reader, body["protocolConfiguration"]);
  const lifecycle = readLifecycle(reader, body["lifecycleConfiguration"], minLifecycleSeconds);
  const environmentVariables = reader.stringMap(
    body["environmentVariables"],
    "environmentVariables",
    {
      maxEntries: 50,
      key: {
        minLength: 1,
        maxLength: 100,
        pattern: /[a-zA-Z_][a-zA-Z0-9_]*/,
        patternHint: "a shell variable name",
      },
      // No NUL: a process's environment cannot hold one.
      value: { minLength: 0, maxLength: 5000, pattern: /[^\0]*/, patternHint: "text without NUL" },
    },
  );
  const mountPaths = readFilesystems(reader, body["filesystemConfigurations"]);
  const allowlist = readHeaderAllowlist(reader, body["requestHeaderConfiguration"]);
  refuseUnsupported(reader, body);
  const tags = kind === "create" ? reader.stringMap(body["tags"], "tags", inputLimits.tags) : {};
  const clientToken = reader.string(body["clientToken"], "clientToken", inputLimits.clientToken);
  reader.throwIfProblems();

  return {
    name: name ?? "",
    tags: tags ?? {},
    clientToken,
    config: {
      artifact: artifact as AgentArtifact,
      roleArn,
      networkMode: "PUBLIC",
      description: description ?? "",
      serverProtocol,
      idleRuntimeSessionTimeoutSeconds: lifecycle.idle,
      maxLifetimeSeconds: lifecycle.maxLifetime,
      environmentVariables: environmentVariables ?? {},
      sessionStorageMountPaths: mountPaths,
      requestHeaderAllowlist: allowlist,
    },
  };
}

function readArtifact(reader: InputReader, value: unknown): AgentArtifact | undefined {
  const name = "agentRuntimeArtifact";
  const chosen = reader.union(value, name, ["codeConfiguration", "containerConfiguration"]);
  if (chosen === undefined) return undefined;
  if (chosen.member === "containerConfiguration") {
    const container = reader.requiredObject(chosen.value, `${name}.containerConfiguration`);
    const containerUri = reader.requiredString(
      container?.["containerUri"],
      `${name}.containerConfiguration.containerUri`,
      { minLength: 1, maxLength: 1024 },
    );
    if (containerUri === undefined) return undefined;
    const parsed = parseImageReference(containerUri);
    if ("problem" in parsed) {
      reader.problem(`${name}.containerConfiguration.containerUri`, parsed.problem);
      return undefined;
    }
    return { kind: "container", containerUri };
  }
  const prefix = `${name}.codeConfiguration`;
  const code = reader.requiredObject(chosen.value, prefix);
  if (code === undefined) return undefined;
  const source = reader.union(code["code"], `${prefix}.code`, ["s3"]);
  const s3 =
    source === undefined ? undefined : reader.requiredObject(source.value, `${prefix}.code.s3`);
  const bucket = reader.requiredString(s3?.["bucket"], `${prefix}.code.s3.bucket`, {
    pattern: /[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/,
    patternHint: "an S3 bucket name (3-63 lowercase letters, digits, '.' or '-')",
  });
  const objectPrefix = reader.requiredString(s3?.["prefix"], `${prefix}.code.s3.prefix`, {
    minLength: 1,
    maxLength: 1024,
  });
  const versionId = reader.string(s3?.["versionId"], `${prefix}.code.s3.versionId`, {
    minLength: 1,
    maxLength: 1024,
  });
  const runtime = reader.oneOf(code["runtime"], `${prefix}.runtime`, managedRuntimes);
  if (code["runtime"] === undefined) reader.problem(`${prefix}.runtime`, "is required");
  const entryPoint = readEntryPoint(reader, code["entryPoint"], `${prefix}.entryPoint`);
  if (
    bucket === undefined ||
    objectPrefix === undefined ||
    runtime === undefined ||
    entryPoint === undefined
  ) {
    return undefined;
  }
  return { kind: "code", bucket, prefix: objectPrefix, versionId, runtime, entryPoint };
}

function readEntryPoint(reader: InputReader, value: unknown, name: string): string[] | undefined {
  if (value === undefined || value === null) {
    reader.problem(name, 'is required: the file that starts the agent, e.g. ["main.py"]');
    return undefined;
  }
  const items = reader.array(value, name, 1, 2);
  if (items === undefined) return undefined;
  const entryPoint = items.map((item, index) =>
    reader.requiredString(item, `${name}[${index}]`, { minLength: 1, maxLength: 128 }),
  );
  return entryPoint.every((item) => item !== undefined) ? entryPoint : undefined;
}

function readNetworkMode(reader: InputReader, value: unknown): void {
  const network = reader.object(value, "networkConfiguration");
  if (network === undefined) return;
  const mode = reader.oneOf(network["networkMode"], "networkConfiguration.networkMode", [
    "PUBLIC",
    "VPC",
  ]);
  if (mode === "VPC") {
    reader.problem(
      "networkConfiguration.networkMode",
      "VPC is not supported by Berth; use PUBLIC (an operator setting can turn outbound access off)",
    );
  }
}

/** The agent's server protocol (core/protocols.ts); HTTP when none is given, as on AgentCore. */
function readServerProtocol(reader: InputReader, value: unknown): ServerProtocol {
  const protocol = reader.object(value, "protocolConfiguration");
  if (protocol === undefined) return "HTTP";
  const name = "protocolConfiguration.serverProtocol";
  if (protocol["serverProtocol"] === undefined || protocol["serverProtocol"] === null) {
    reader.problem(name, `is required: one of ${serverProtocols.join(", ")}`);
    return "HTTP";
  }
  return reader.oneOf(protocol["serverProtocol"], name, serverProtocols) ?? "HTTP";
}

function readLifecycle(
  reader: InputReader,
  value: unknown,
  min: number,
): { idle: number; maxLifetime: number } {
  const lifecycle = reader.object(value, "lifecycleConfiguration");
  const { max } = inputLimits.sessionSeconds;
  const idle =
    reader.integer(
      lifecycle?.["idleRuntimeSessionTimeout"],
      "lifecycleConfiguration.idleRuntimeSessionTimeout",
      min,
      max,
    ) ?? inputLimits.defaultIdleSeconds;
  const maxLifetime =
    reader.integer(lifecycle?.["maxLifetime"], "lifecycleConfiguration.maxLifetime", min, max) ??
    inputLimits.defaultMaxLifetimeSeconds;
  if (idle > maxLifetime) {
    reader.problem(
      "lifecycleConfiguration.idleRuntimeSessionTimeout",
      `must not exceed maxLifetime (${idle} > ${maxLifetime})`,
    );
  }
  return { idle, maxLifetime };
}

function readFilesystems(reader: InputReader, value: unknown): string[] {
  const name = "filesystemConfigurations";
  const items = reader.array(value, name, 0, inputLimits.maxFilesystems) ?? [];
  const mountPaths: string[] = [];
  items.forEach((item, index) => {
    const itemName = `${name}[${index}]`;
    const chosen = reader.union(
      item,
      itemName,
      ["sessionStorage"],
      ["efsAccessPoint", "s3FilesAccessPoint", "capacityProviderVolume"],
    );
    if (chosen === undefined) return;
    const storage = reader.requiredObject(chosen.value, `${itemName}.sessionStorage`);
    const mountPath = reader.requiredString(
      storage?.["mountPath"],
      `${itemName}.sessionStorage.mountPath`,
      inputLimits.mountPath,
    );
    if (mountPath === undefined) return;
    if (mountPath === "/mnt/." || mountPath === "/mnt/..") {
      reader.problem(`${itemName}.sessionStorage.mountPath`, `must name a folder under /mnt`);
      return;
    }
    if (mountPaths.includes(mountPath)) {
      reader.problem(
        `${itemName}.sessionStorage.mountPath`,
        `duplicates another mount path (${mountPath})`,
      );
      return;
    }
    mountPaths.push(mountPath);
  });
  return mountPaths;
}

function readHeaderAllowlist(reader: InputReader, value: unknown): string[] {
  const name = "requestHeaderConfiguration";
  if (value === undefined || value === null) return [];
  const chosen = reader.union(value, name, ["requestHeaderAllowlist"]);
  if (chosen === undefined) return [];
  const items = reader.array(chosen.value, `${name}.requestHeaderAllowlist`, 1, 20) ?? [];
  return items.flatMap((item, index) => {
    const header = reader.requiredString(item, `${name}.requestHeaderAllowlist[${index}]`, {
      minLength: 1,
      maxLength: 256,
      pattern: /(Authorization|X-Amzn-Bedrock-AgentCore-Runtime-Custom-[a-zA-Z0-9-]+)/i,
      patternHint: "Authorization or X-Amzn-Bedrock-AgentCore-Runtime-Custom-<name>",
    });
    return header === undefined ? [] : [header];
  });
}

/** Members AgentCore has and Berth does not implement: refused, never silently ignored. */
function refuseUnsupported(reader: InputReader, body: Record<string, unknown>): void {
  const unsupported: Record<string, string> = {
    authorizerConfiguration:
      "inbound JWT authorizers are not supported by Berth; requests are authenticated with SigV4",
    capacityProviderConfiguration: "capacity providers are not supported by Berth",
    metadataConfiguration: "runtime metadata configuration is not supported by Berth",
  };
  for (const [member, message] of Object.entries(unsupported)) {
    if (body[member] !== undefined && body[member] !== null) reader.problem(member, message);
  }
}
