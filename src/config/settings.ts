import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

interface SettingDeclaration<T> {
  /** Flag `--kebab-name`, env `BERTH_SNAKE_NAME`, config file key `camelName`. */
  doc: string;
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

const boolean = (text: string): boolean | { problem: string } => {
  if (["true", "1", "yes"].includes(text.toLowerCase())) return true;
  if (["false", "0", "no"].includes(text.toLowerCase())) return false;
  return { problem: `must be true or false (got "${text}")` };
};

const anyText = (text: string): string => text;

/** Every setting Berth reads, in one place. docs/configuration.md is generated from this. */
export const settingDeclarations = {
  host: { doc: "Address the HTTP server listens on.", default: "127.0.0.1", parse: anyText },
  port: {
    doc: "Port the HTTP server listens on (0 picks a free one).",
    default: 8787,
    parse: integer(0, 65_535),
  },
  dataDir: {
    doc: "Directory for the metadata database, credentials and artifacts. Created with mode 0700.",
    default: join(homedir(), ".berth"),
    defaultShown: "~/.berth",
    parse: (text: string) => resolve(text),
  },
  region: {
    doc: "AWS region Berth answers as: used in ARNs and in SigV4 credential scopes.",
    default: "us-east-1",
    parse: matching(/^[a-z]{2}(-[a-z]+)+-\d+$/, "a region name like us-east-1"),
  },
  accountId: {
    doc: "12-digit account id used in ARNs.",
    default: "123456789012",
    parse: matching(/^\d{12}$/, "12 digits"),
  },
  accessKeyId: {
    doc: "SigV4 access key id clients sign with. With secretAccessKey; when both are unset, a key pair is generated on first start and kept in <data-dir>/credentials.json.",
    default: "",
    parse: matching(/^[A-Z0-9]{16,128}$/, "16 to 128 uppercase letters and digits"),
  },
  secretAccessKey: {
    doc: "SigV4 secret access key (environment or config file only).",
    default: "",
    parse: matching(/^.{16,128}$/, "16 to 128 characters"),
    secret: true,
  },
  insecureNoAuth: {
    doc: "Accept unsigned requests. Anyone who can reach the port can then run code: only for throwaway local experiments.",
    default: false,
    parse: boolean,
  },
  clockSkewSeconds: {
    doc: "How far a request's x-amz-date may be from the server's clock.",
    default: 300,
    parse: integer(1, 3600),
  },
  maxRequestBodyBytes: {
    doc: "Largest control-plane request body accepted.",
    default: 1_048_576,
    parse: integer(1024, 104_857_600),
  },
  idempotencyWindowSeconds: {
    doc: "How long a clientToken's first answer is kept for retries.",
    default: 28_800,
    parse: integer(60, 604_800),
  },
} satisfies Record<string, SettingDeclaration<unknown>>;

type Declarations = typeof settingDeclarations;
export type SettingName = keyof Declarations;
export type Settings = { [Name in SettingName]: Declarations[Name]["default"] };

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

/**
 * Resolves settings from, lowest first: defaults, the config file (--config / BERTH_CONFIG, JSON),
 * BERTH_* environment variables, then flags. Every problem is collected and reported at once.
 */
export function loadSettings(args: readonly string[], env: NodeJS.ProcessEnv): Settings {
  const problems: string[] = [];
  const flags = parseFlags(args, problems);
  const configPath = flags.get("config") ?? env["BERTH_CONFIG"];
  flags.delete("config");
  const fileValues =
    configPath === undefined ? new Map<string, string>() : readConfigFile(configPath, problems);

  const settings: Record<string, unknown> = {};
  for (const [name, declaration] of Object.entries(settingDeclarations) as [
    SettingName,
    SettingDeclaration<unknown>,
  ][]) {
    const fromFlag = flags.get(name);
    if (fromFlag !== undefined && declaration.secret === true) {
      problems.push(
        `${flagName(name)} is a secret: pass it as ${envName(name)} or in the config file, not as a flag`,
      );
    }
    const sources: [string, string | undefined][] = [
      [flagName(name), declaration.secret === true ? undefined : fromFlag],
      [envName(name), env[envName(name)]],
      [`config file key ${name}`, fileValues.get(name)],
    ];
    const chosen = sources.find(([, value]) => value !== undefined && value !== "");
    if (chosen === undefined) {
      settings[name] = declaration.default;
      continue;
    }
    const parsed = declaration.parse(chosen[1] ?? "");
    if (typeof parsed === "object" && parsed !== null && "problem" in parsed) {
      problems.push(`${chosen[0]} ${String(parsed.problem)}`);
    } else {
      settings[name] = parsed;
    }
    flags.delete(name);
  }
  for (const unknown of flags.keys()) {
    if (!(unknown in settingDeclarations))
      problems.push(`unknown flag ${flagName(unknown)} (see berth serve --help)`);
  }
  if (Boolean(settings["accessKeyId"]) !== Boolean(settings["secretAccessKey"])) {
    problems.push(
      "accessKeyId and secretAccessKey must be set together (or neither, to use generated credentials)",
    );
  }
  if (problems.length > 0) throw new SettingsError(problems);
  return settings as Settings;
}

function parseFlags(args: readonly string[], problems: string[]): Map<string, string> {
  const flags = new Map<string, string>();
  for (let index = 0; index < args.length; index += 1) {
    const arg = args[index] ?? "";
    const match = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(arg);
    if (match === null) {
      problems.push(`unexpected argument "${arg}"`);
      continue;
    }
    const name = (match[1] ?? "").replace(/-([a-z0-9])/g, (_, letter: string) =>
      letter.toUpperCase(),
    );
    const declaration = (settingDeclarations as Record<string, SettingDeclaration<unknown>>)[name];
    let value = match[2];
    if (value === undefined) {
      const next = args[index + 1];
      const isBooleanFlag = declaration?.default === false;
      if (isBooleanFlag && (next === undefined || next.startsWith("--"))) value = "true";
      else {
        value = next ?? "";
        index += 1;
      }
    }
    flags.set(name, value);
  }
  return flags;
}

function readConfigFile(path: string, problems: string[]): Map<string, string> {
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
  const values = new Map<string, string>();
  for (const [key, value] of Object.entries(parsed)) {
    if (!(key in settingDeclarations)) problems.push(`config file ${path}: unknown key ${key}`);
    else values.set(key, String(value));
  }
  return values;
}
