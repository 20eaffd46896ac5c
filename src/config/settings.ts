import { readFileSync } from "node:fs";
import { homedir, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { noPythonsNamed, parsePythonInterpreters } from "./python-installs.ts";

/**
 * Which part of Berth a setting belongs to: the factory hands each part its own settings only,
 * and docs/configuration.md lists them by part.
 */
export const settingParts = {
  parts: "Parts: which implementation of each part the server is assembled from",
  server: "Server: HTTP, credentials and request limits",
  sessions: "Sessions: lifecycle and per-session limits",
  sandboxes: "Sandboxes: what every sandbox driver enforces",
  bubblewrap: "The bubblewrap sandbox driver",
  sessionStorage: "Session storage",
  codeArtifacts: "Code artifacts and the runtimes that run them",
  containerImages: "Container images",
} as const;
export type SettingPart = keyof typeof settingParts;

interface SettingDeclaration<T> {
  /** Flag `--kebab-name`, env `BERTH_SNAKE_NAME`, config file key `camelName`. */
  doc: string;
  part: SettingPart;
  /**
   * The name this setting had before (its flag, environment variable and config key): still
   * accepted, with a warning that says the new name, so no one's set-up breaks on an upgrade.
   */
  formerly?: string;
  default: T;
  /** Shown in docs instead of the computed default (e.g. a path under $HOME). */
  defaultShown?: string;
  parse: (text: string) => T | { problem: string };
  /** Secrets are accepted from the environment and the config file only, never from flags. */
  secret?: boolean;
}

const integer =
  (min: number, max: number) =>
  (text: string): number | { problem: string } => {
    const value = Number(text);
    return /^-?\d+$/.test(text.trim()) && value >= min && value <= max
      ? value
      : { problem: `must be a whole number from ${min} to ${max} (got "${text}")` };
  };

const matching =
  (pattern: RegExp, hint: string) =>
  (text: string): string | { problem: string } =>
    pattern.test(text) ? text : { problem: `must be ${hint} (got "${text}")` };

const decimal =
  (min: number, max: number) =>
  (text: string): number | { problem: string } => {
    const value = Number(text);
    return /^\d+(\.\d+)?$/.test(text.trim()) && value >= min && value <= max
      ? value
      : { problem: `must be a number from ${min} to ${max} (got "${text}")` };
  };

const boolean = (text: string): boolean | { problem: string } => {
  if (["true", "1", "yes"].includes(text.toLowerCase())) return true;
  if (["false", "0", "no"].includes(text.toLowerCase())) return false;
  return { problem: `must be true or false (got "${text}")` };
};

const anyText = (text: string): string => text;

const commaList = (text: string): string[] =>
  text
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean);

type OutboundMode = "public" | "none";
const defaultOutbound: OutboundMode = "public";

const oneOf =
  <Choice extends string>(choices: readonly Choice[]) =>
  (text: string): Choice | { problem: string } =>
    (choices as readonly string[]).includes(text)
      ? (text as Choice)
      : { problem: `must be one of ${choices.join(", ")} (got "${text}")` };

/** The embedded defaults: the other choices exist for Berth's own tests (see src/main/parts.ts). */
const defaultParts: {
  metadataStore: "sqlite" | "memory";
  sandboxDriver: "bubblewrap" | "process";
  sessionStorage: "local" | "directory";
} = { metadataStore: "sqlite", sandboxDriver: "bubblewrap", sessionStorage: "local" };

/** Every setting Berth reads, in one place. docs/configuration.md is generated from this. */
export const settingDeclarations = {
  metadataStore: {
    part: "parts",
    doc: "Where runtimes, versions, endpoints and session storage records are kept: sqlite (<data-dir>/berth.db). memory keeps nothing across a restart and exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.metadataStore,
    parse: oneOf(["sqlite", "memory"] as const),
  },
  sandboxDriver: {
    part: "parts",
    doc: "What isolates each session: bubblewrap (namespaces, cgroups, seccomp and a uid of its own; needs root). process runs agents as plain processes of Berth's own user, with no isolation at all, and exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.sandboxDriver,
    parse: oneOf(["bubblewrap", "process"] as const),
  },
  sessionStorage: {
    part: "parts",
    doc: "Where session storage volumes live: local (an ext4 image per volume on the data directory's disk, its blocks reserved, loop-mounted while its session runs; needs root). directory (a plain folder per volume: no size limit, so one session could fill the disk) exists for Berth's own tests: berth serve refuses it.",
    default: defaultParts.sessionStorage,
    parse: oneOf(["local", "directory"] as const),
  },
  host: {
    part: "server",
    doc: "Address the HTTP server listens on.",
    default: "127.0.0.1",
    parse: anyText,
  },
  port: {
    part: "server",
    doc: "Port the HTTP server listens on (0 picks a free one).",
    default: 8787,
    parse: integer(0, 65_535),
  },
  dataDir: {
    part: "server",
    doc: "Directory for the metadata database, credentials, artifacts and session folders. Made mode 0711: sandbox users may pass through it to their own folders but not list it; the database and credentials inside are 0600.",
    default: process.getuid?.() === 0 ? "/var/lib/berth" : join(homedir(), ".berth"),
    defaultShown: "/var/lib/berth (root), ~/.berth (others)",
    parse: (text: string) => resolve(text),
  },
  region: {
    part: "server",
    doc: "AWS region Berth answers as: used in ARNs and in SigV4 credential scopes.",
    default: "us-east-1",
    parse: matching(/^[a-z]{2}(-[a-z]+)+-\d+$/, "a region name like us-east-1"),
  },
  accountId: {
    part: "server",
    doc: "12-digit account id used in ARNs.",
    default: "123456789012",
    parse: matching(/^\d{12}$/, "12 digits"),
  },
  accessKeyId: {
    part: "server",
    doc: "SigV4 access key id clients sign with. With secretAccessKey; when both are unset, a key pair is generated on first start and kept in <data-dir>/credentials.json.",
    default: "",
    parse: matching(/^[A-Z0-9]{16,128}$/, "16 to 128 uppercase letters and digits"),
  },
  secretAccessKey: {
    part: "server",
    doc: "SigV4 secret access key (environment or config file only).",
    default: "",
    parse: matching(/^.{16,128}$/, "16 to 128 characters"),
    secret: true,
  },
  insecureNoAuth: {
    part: "server",
    doc: "Accept unsigned requests. Anyone who can reach the port can then run code: only for throwaway local experiments.",
    default: false,
    parse: boolean,
  },
  clockSkewSeconds: {
    part: "server",
    doc: "How far a request's x-amz-date may be from the server's clock.",
    default: 300,
    parse: integer(1, 3600),
  },
  sessionStorageBytes: {
    part: "sessionStorage",
    doc: "Size of each session storage volume (a filesystem of its own: writing past it gives ENOSPC).",
    default: 1_073_741_824,
    parse: integer(16_777_216, 1_099_511_627_776),
  },
  sessionStorageRetentionSeconds: {
    part: "sessionStorage",
    doc: "Session storage unused for this long is deleted (AgentCore: 14 days).",
    default: 1_209_600,
    parse: integer(1, 315_360_000),
  },
  sessionStorageSweepIntervalMs: {
    part: "sessionStorage",
    doc: "How often storage past its retention is looked for.",
    default: 60_000,
    parse: integer(50, 86_400_000),
  },
  maxArtifactBytes: {
    part: "codeArtifacts",
    doc: "Largest code upload (PUT /berth/v1/artifacts/..., what `berth runtimes create --code` sends).",
    default: 1_073_741_824,
    parse: integer(1024, 1_099_511_627_776),
  },
  maxArtifactUnpackedBytes: {
    part: "codeArtifacts",
    doc: "Largest code artifact once decompressed (an upload's .tar.gz, or a .zip in the artifact store): unpacking stops and is undone past it, so a small archive cannot fill the disk. AgentCore's quota: 750 MB uncompressed.",
    default: 786_432_000,
    parse: integer(1024, 1_099_511_627_776),
  },
  maxArtifactEntries: {
    part: "codeArtifacts",
    doc: "Most files, folders and links a code artifact may unpack to (an upload's .tar.gz, or a .zip in the artifact store).",
    default: 200_000,
    parse: integer(1, 100_000_000),
  },
  registryCredentialsFile: {
    part: "containerImages",
    doc: 'A JSON file of credentials for container registries, in Docker\'s config.json form: {"auths": {"registry.example.com:5000": {"username": "...", "password": "..."}}} (or "auth": base64 of user:password). Read at every pull, so changes need no restart. Keep it mode 0600.',
    default: "",
    defaultShown: "(none: registries are used anonymously)",
    parse: anyText,
  },
  registryInsecureHosts: {
    part: "containerImages",
    doc: "Comma-separated registries (host or host:port) that may be reached over plain HTTP instead of HTTPS. Loopback addresses are always allowed to be (reaching them at all takes registryPrivateHosts).",
    default: [] as string[],
    defaultShown: "(none besides loopback)",
    parse: commaList,
  },
  registryPrivateHosts: {
    part: "containerImages",
    doc: "Comma-separated registries (host or host:port) that may be reached although they resolve to a loopback, private, link-local or other non-public address, or to one of this machine's own. Others are refused, and so are redirects and token realms that lead to such an address: an image reference must not make Berth, which runs as root outside the sandboxes' firewall, query the services of this machine or its network.",
    default: [] as string[],
    defaultShown: "(none: only public addresses)",
    parse: commaList,
  },
  maxImageBytes: {
    part: "containerImages",
    doc: "Largest container image accepted, unpacked (file contents and the layers' tar metadata); a bigger one fails its version with CREATE_FAILED/UPDATE_FAILED.",
    default: 17_179_869_184,
    parse: integer(1_048_576, 1_099_511_627_776),
  },
  maxImageMetadataBytes: {
    part: "containerImages",
    doc: "Largest piece of image metadata Berth holds in memory while pulling: a manifest, an image config, a token answer, or one PAX or GNU long-name header of a layer. A bigger one fails its version.",
    default: 4_194_304,
    parse: integer(65_536, 268_435_456),
  },
  imageRetentionSeconds: {
    part: "containerImages",
    doc: "Container images no version uses and no one loaded by name are removed from the cache after this long unused.",
    default: 86_400,
    parse: integer(0, 315_360_000),
  },
  imageGcIntervalMs: {
    part: "containerImages",
    doc: "How often the image cache is swept for images past their retention.",
    default: 3_600_000,
    parse: integer(50, 86_400_000),
  },
  commandKillGraceMs: {
    part: "sessions",
    doc: "After a command's timeout, how long its processes get between SIGTERM and SIGKILL.",
    default: 2000,
    parse: integer(0, 60_000),
  },
  shutdownGraceSeconds: {
    part: "server",
    doc: "On SIGTERM or SIGINT, Berth stops taking requests (new connections are refused) and gives those in flight this long to finish. Then what still runs is ended, each with a clear last word: a command's stream an internalServerException event, an event-stream (SSE) answer a last `event: error`. A second signal ends the wait at once.",
    default: 30,
    parse: integer(0, 3600),
  },
  maxRequestBodyBytes: {
    part: "server",
    doc: "Largest control-plane request body accepted.",
    default: 1_048_576,
    parse: integer(1024, 104_857_600),
  },
  maxConnections: {
    part: "server",
    doc: "Most HTTP connections open at once; past it, new connections are closed as soon as they are accepted.",
    default: 1024,
    parse: integer(1, 1_000_000),
  },
  requestHeadersTimeoutSeconds: {
    part: "server",
    doc: "How long a client has to send a request's headers; a slower one gets 408 and its connection closed.",
    default: 60,
    parse: integer(1, 3600),
  },
  requestTimeoutSeconds: {
    part: "server",
    doc: "How long a client has to send a whole request, headers and body (uploads included); a slower one gets 408 and its connection closed. Answers may stream for longer.",
    default: 300,
    parse: integer(1, 86_400),
  },
  maxUnauthenticatedBufferBytes: {
    part: "server",
    doc: "Most bytes, in memory and on disk, that request bodies may hold together before their signature is checked (SigV4 signs the body's SHA-256, so a body is held until it is known; an access key id is no secret). Past it, requests get ThrottlingException. Bodies signed as UNSIGNED-PAYLOAD (invocations and uploads) stream and need none.",
    default: 268_435_456,
    parse: integer(65_536, 1_099_511_627_776),
  },
  maxInMemoryBodyBytes: {
    part: "server",
    doc: "A request body held until its signature is checked stays in memory up to this size; a bigger one is written to an already-unlinked file in <data-dir>/request-bodies (root only, mode 0600), gone when the request ends.",
    default: 65_536,
    parse: integer(0, 104_857_600),
  },
  idempotencyWindowSeconds: {
    part: "server",
    doc: "How long a clientToken's first answer is kept for retries.",
    default: 28_800,
    parse: integer(60, 604_800),
  },
  maxPayloadBytes: {
    part: "sessions",
    doc: "Largest InvokeAgentRuntime payload accepted (AgentCore: 100 MB).",
    default: 104_857_600,
    parse: integer(1, 1_073_741_824),
  },
  maxSessions: {
    part: "sessions",
    doc: "Most sessions (sandboxes) running at once; more answer ServiceQuotaExceededException.",
    default: 64,
    parse: integer(1, 65_536),
  },
  sessionMemoryBytes: {
    part: "sandboxes",
    doc: "Memory limit of one session's sandbox (cgroup); the kernel OOM-kills past it.",
    default: 2_147_483_648,
    parse: integer(16_777_216, 1_099_511_627_776),
  },
  sessionPids: {
    part: "sandboxes",
    doc: "Most processes and threads in one session's sandbox (cgroup); fork fails past it.",
    default: 1024,
    parse: integer(16, 1_048_576),
  },
  sessionCpus: {
    part: "sandboxes",
    doc: "CPU time one session may use, in CPUs (cgroup quota); sessions also get equal CPU shares.",
    default: 2,
    parse: decimal(0.05, 1024),
  },
  sandboxesMemoryBytes: {
    part: "sandboxes",
    doc: "Memory all sessions together may use (the parent cgroup's limit), whatever maxSessions × sessionMemoryBytes adds up to: the host and Berth itself keep the rest.",
    default: Math.floor((totalmem() * 3) / 4),
    defaultShown: "3/4 of the host's memory",
    parse: integer(16_777_216, 1_099_511_627_776 * 64),
  },
  sandboxesPids: {
    part: "sandboxes",
    doc: "Most processes and threads all sessions together may have (the parent cgroup's limit).",
    default: 32_768,
    parse: integer(16, 4_194_304),
  },
  agentStartupTimeoutSeconds: {
    part: "sessions",
    doc: "How long a new session's agent has to answer GET /ping before the invocation fails with RuntimeClientError.",
    default: 30,
    parse: integer(1, 600),
  },
  agentPingTimeoutMs: {
    part: "sessions",
    doc: "How long an agent's GET /ping may take, answer and body together; a slower answer counts as unhealthy (a session past its idle timeout then ends).",
    default: 1000,
    parse: integer(50, 60_000),
  },
  agentPingMaxBytes: {
    part: "sessions",
    doc: "Most bytes of an agent's GET /ping answer body read; a longer answer counts as unhealthy.",
    default: 4096,
    parse: integer(256, 1_048_576),
  },
  minLifecycleSeconds: {
    part: "sessions",
    doc: "Smallest idleRuntimeSessionTimeout and maxLifetime a runtime may ask for (AgentCore: 60). Lower it for tests and demos.",
    default: 60,
    parse: integer(1, 60),
  },
  sessionSweepIntervalMs: {
    part: "sessions",
    doc: "How often idle and max-lifetime deadlines are checked.",
    default: 1000,
    parse: integer(10, 60_000),
  },
  maxAgentOutputLineBytes: {
    part: "sessions",
    doc: "Longest line of an agent's stdout or stderr Berth keeps: a longer one is logged cut there (and marked as cut), the rest of it read and dropped up to its newline.",
    default: 16_384,
    parse: integer(256, 1_048_576),
  },
  agentLogBytesPerSecond: {
    part: "sessions",
    doc: "Log bytes one session's agent output may use per second, on average (a token bucket, with agentLogBurstBytes). Lines past it are dropped; one 'agent output dropped' record a second says how many. The agent is never slowed: its output is still read as fast as it writes.",
    default: 262_144,
    parse: integer(1024, 1_073_741_824),
  },
  agentLogBurstBytes: {
    part: "sessions",
    doc: "Log bytes one session's agent output may use at once after a quiet spell (see agentLogBytesPerSecond). A line whose record is bigger than this is always dropped.",
    default: 1_048_576,
    parse: integer(65_536, 1_073_741_824),
  },
  bubblewrapUidBase: {
    part: "bubblewrap",
    formerly: "sandboxUidBase",
    doc: "First host uid given to sandboxes; each running session, and each sandbox prepared ahead, gets its own uid from [base, base + maxSessions + 16). Must not overlap real users.",
    default: 2_000_000,
    parse: integer(10_000, 4_000_000_000),
  },
  bubblewrapCgroupParent: {
    part: "bubblewrap",
    formerly: "cgroupParent",
    doc: "Name of the cgroup under which each session gets its own (in every v1 controller, or the v2 tree). Leftovers in it are killed at start.",
    default: "berth",
    parse: matching(/^[a-zA-Z0-9_.-]{1,64}$/, "letters, digits, '.', '_' or '-'"),
  },
  sandboxOutbound: {
    part: "sandboxes",
    doc: "Network for sandboxes of PUBLIC runtimes: public (outbound through a user-mode network stack; the host itself, loopback, link-local and private ranges are blocked) or none (loopback only).",
    default: defaultOutbound,
    parse: (text: string): OutboundMode | { problem: string } =>
      text === "public" || text === "none"
        ? text
        : { problem: `must be public or none (got "${text}")` },
  },
  sandboxAllowedNetworks: {
    part: "sandboxes",
    doc: "Comma-separated IPv4 CIDRs sandboxes may reach even though they are private, e.g. an internal model gateway.",
    default: [] as string[],
    defaultShown: "(none)",
    parse: (text: string): string[] | { problem: string } => {
      const networks = commaList(text);
      const bad = networks.filter((network) => !/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(network));
      return bad.length === 0
        ? networks
        : { problem: `must be IPv4 CIDRs like 10.1.0.0/16 (bad: ${bad.join(", ")})` };
    },
  },
  bubblewrapSeccomp: {
    part: "bubblewrap",
    formerly: "sandboxSeccomp",
    doc: "Run every process of a session under Berth's seccomp filter, which refuses system calls agents do not need that expose the kernel: new namespaces, mounts, keyrings, eBPF, io_uring, raw and packet sockets and more (docs/security.md lists them). Written for x86_64: elsewhere, set false.",
    default: true,
    parse: boolean,
  },
  bubblewrapPrestart: {
    part: "bubblewrap",
    formerly: "sandboxPrestart",
    doc: "Sandboxes prepared ahead (namespaces, cgroup, uid; no agent process yet) per recently used runtime version, so a new session only waits for its agent to start. One taken is replaced a second later, after its agent's start. 0 turns this off.",
    default: 2,
    parse: integer(0, 8),
  },
  nodeBinary: {
    part: "codeArtifacts",
    doc: "Interpreter for runtime NODE_22 (any Node.js >= 22 runs NODE_22 agents; the default is the Node 24 Berth runs on).",
    default: process.execPath,
    defaultShown: "the Node.js running Berth",
    parse: (text: string) => resolve(text),
  },
  pythonInterpreters: {
    part: "codeArtifacts",
    doc: "The Python each Python runtime runs on, as comma-separated RUNTIME=PATH entries, e.g. PYTHON_3_12=/opt/python3.12/bin/python3.12. A runtime not named uses the first python3.X found on Berth's PATH, in /usr/local/bin, /usr/bin, /opt/*/bin or pyenv's versions ($PYENV_ROOT, /root/.pyenv); one with none fails its versions (CREATE_FAILED) instead of running another version.",
    default: noPythonsNamed,
    defaultShown: "(found as described)",
    parse: parsePythonInterpreters,
  },
} satisfies Record<string, SettingDeclaration<unknown>>;

type Declarations = typeof settingDeclarations;
export type SettingName = keyof Declarations;
export type Settings = { [Name in SettingName]: Declarations[Name]["default"] };
/** The settings of one part: what that part's factory is given, and nothing else. */
export type SettingsOf<Part extends SettingPart> = {
  [Name in SettingName as Declarations[Name]["part"] extends Part ? Name : never]: Settings[Name];
};

export function flagName(name: string): string {
  return `--${name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`)}`;
}

export function envName(name: string): string {
  return `BERTH_${name.replace(/[A-Z]/g, (letter) => `_${letter}`).toUpperCase()}`;
}

export class SettingsError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`Invalid settings:\n${problems.map((problem) => `  - ${problem}`).join("\n")}`);
    this.problems = problems;
  }
}

/** The settings, and a line for each thing the user should change though it still works. */
export interface LoadedSettings {
  settings: Settings;
  warnings: string[];
}

type Declaration = SettingDeclaration<unknown>;
const declarations = settingDeclarations as Record<string, Declaration>;

/** Former name -> current name, for every renamed setting. */
const currentNames = new Map(
  Object.entries(declarations).flatMap(([name, declaration]) =>
    declaration.formerly === undefined ? [] : [[declaration.formerly, name] as const],
  ),
);

/** A value as the user gave it, and how they spelled where it came from. */
interface GivenValue {
  value: string;
  source: string;
  /** The former name it was given under, if so. */
  formerly?: string;
}

/**
 * Resolves settings from, lowest first: defaults, the config file (--config / BERTH_CONFIG, JSON),
 * BERTH_* environment variables, then flags. Every problem is collected and reported at once.
 */
export function loadSettings(args: readonly string[], env: NodeJS.ProcessEnv): Settings {
  return loadSettingsWithWarnings(args, env).settings;
}

export function loadSettingsWithWarnings(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): LoadedSettings {
  const problems: string[] = [];
  // Every use of a former name is warned about, also one that a current name overrides: the
  // user still has it somewhere, and it stops working in a future release.
  const warnings: string[] = [];
  const flags = parseFlags(args, problems, warnings);
  const configPath = flags.get("config")?.value ?? env["BERTH_CONFIG"];
  flags.delete("config");
  const fileValues =
    configPath === undefined
      ? new Map<string, GivenValue>()
      : readConfigFile(configPath, problems, warnings);
  for (const [former, name] of currentNames) {
    if (env[envName(former)] !== undefined && env[envName(former)] !== "")
      warnings.push(renamedWarning(envName(former), name));
  }

  const settings: Record<string, unknown> = {};
  for (const [name, declaration] of Object.entries(declarations)) {
    const fromFlag = flags.get(name);
    flags.delete(name);
    if (fromFlag !== undefined && declaration.secret === true) {
      problems.push(
        `${fromFlag.source} is a secret: pass it as ${envName(name)} or in the config file, not as a flag`,
      );
    }
    const given = [
      declaration.secret === true ? undefined : fromFlag,
      fromEnvironment(env, name, declaration),
      fileValues.get(name),
    ].find((value) => value !== undefined && value.value !== "");
    if (given === undefined) {
      settings[name] = declaration.default;
      continue;
    }
    const parsed = declaration.parse(given.value);
    if (typeof parsed === "object" && parsed !== null && "problem" in parsed) {
      problems.push(`${given.source} ${String(parsed.problem)}`);
    } else {
      settings[name] = parsed;
    }
  }
  for (const unknown of flags.values())
    problems.push(`unknown flag ${unknown.source} (see berth serve --help)`);
  if (Boolean(settings["accessKeyId"]) !== Boolean(settings["secretAccessKey"])) {
    problems.push(
      "accessKeyId and secretAccessKey must be set together (or neither, to use generated credentials)",
    );
  }
  if (problems.length > 0) throw new SettingsError(problems);
  return { settings: settings as Settings, warnings };
}

/** BERTH_NAME, else the variable of the setting's former name. */
function fromEnvironment(
  env: NodeJS.ProcessEnv,
  name: string,
  declaration: Declaration,
): GivenValue | undefined {
  const current = env[envName(name)];
  if (current !== undefined && current !== "") return { value: current, source: envName(name) };
  if (declaration.formerly === undefined) return undefined;
  const former = env[envName(declaration.formerly)];
  return former === undefined
    ? undefined
    : { value: former, source: envName(declaration.formerly), formerly: declaration.formerly };
}

function renamedWarning(source: string, name: string): string {
  return (
    `${source} is a former name of ${name}; it still works, but use ${flagName(name)}, ` +
    `${envName(name)} or config key ${name} (the former names will go in a future release)`
  );
}

function parseFlags(
  args: readonly string[],
  problems: string[],
  warnings: string[],
): Map<string, GivenValue> {
  const flags = new Map<string, GivenValue>();
  for (let index = 0; index < args.length; index += 1) {
    const arg = args[index] ?? "";
    const match = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(arg);
    if (match === null) {
      problems.push(`unexpected argument "${arg}"`);
      continue;
    }
    const spelled = (match[1] ?? "").replace(/-([a-z0-9])/g, (_, letter: string) =>
      letter.toUpperCase(),
    );
    const name = currentNames.get(spelled) ?? spelled;
    let value = match[2];
    if (value === undefined) {
      const next = args[index + 1];
      const isBooleanFlag = declarations[name]?.default === false;
      if (isBooleanFlag && (next === undefined || next.startsWith("--"))) value = "true";
      else {
        value = next ?? "";
        index += 1;
      }
    }
    if (spelled !== name) warnings.push(renamedWarning(flagName(spelled), name));
    // The current name wins over a former one given too, whatever their order.
    const earlier = flags.get(name);
    if (spelled !== name && earlier !== undefined && earlier.formerly === undefined) continue;
    flags.set(name, {
      value,
      source: flagName(spelled),
      ...(spelled === name ? {} : { formerly: spelled }),
    });
  }
  return flags;
}

function readConfigFile(
  path: string,
  problems: string[],
  warnings: string[],
): Map<string, GivenValue> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    problems.push(`config file ${path} could not be read as JSON: ${(error as Error).message}`);
    return new Map();
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    problems.push(`config file ${path} must hold a JSON object`);
    return new Map();
  }
  const values = new Map<string, GivenValue>();
  for (const [key, value] of Object.entries(parsed)) {
    const name = currentNames.get(key) ?? key;
    if (!(name in settingDeclarations)) {
      problems.push(`config file ${path}: unknown key ${key}`);
      continue;
    }
    if (name !== key) warnings.push(renamedWarning(`config file key ${key}`, name));
    // The current name wins over a former one given too.
    if (name !== key && Object.hasOwn(parsed, name)) continue;
    values.set(name, {
      value: String(value),
      source: `config file key ${key}`,
      ...(name === key ? {} : { formerly: key }),
    });
  }
  return values;
}
