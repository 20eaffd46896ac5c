import { readFileSync } from "node:fs";
import { settingDeclarations } from "./declarations.ts";
import { withoutValue, type SettingDeclaration, type SettingPart } from "./setting-parsers.ts";

export { settingDeclarations } from "./declarations.ts";
export { settingParts, type SettingPart } from "./setting-parsers.ts";

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
      const problem = String(parsed.problem);
      const confidential = declaration.secret === true || declaration.confidential === true;
      problems.push(`${given.source} ${confidential ? withoutValue(problem) : problem}`);
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
  if (
    Boolean(settings["objectStoreAccessKeyId"]) !== Boolean(settings["objectStoreSecretAccessKey"])
  ) {
    problems.push(
      "objectStoreAccessKeyId and objectStoreSecretAccessKey must be set together (or neither, to use the AWS SDK's default credential chain)",
    );
  }
  // Where to find a store, with no store named: most likely --object-store-url forgotten.
  const needsObjectStore = ["objectStoreEndpoint", "objectStoreRegion"].filter((name) =>
    Boolean(settings[name]),
  );
  if (!settings["objectStoreUrl"] && needsObjectStore.length > 0) {
    problems.push(
      `${needsObjectStore.join(", ")} set without objectStoreUrl: set --object-store-url s3://BUCKET/PREFIX too`,
    );
  }
  if (settings["databaseUrl"]) problems.push(...clusterProblems(settings));
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

/** A node of a cluster needs what lets sessions move between nodes and nodes trust each other. */
function clusterProblems(settings: Record<string, unknown>): string[] {
  const problems: string[] = [];
  if (!settings["objectStoreUrl"]) {
    problems.push(
      "databaseUrl set without objectStoreUrl: nodes of a cluster keep session storage and code in an object store, set --object-store-url s3://BUCKET/PREFIX too",
    );
  }
  if (!settings["clusterSecret"]) {
    problems.push(
      "databaseUrl set without clusterSecret: set BERTH_CLUSTER_SECRET (the same on every node, e.g. openssl rand -hex 32)",
    );
  }
  if (settings["metadataStore"] === "memory") {
    problems.push("databaseUrl and metadataStore=memory contradict each other: choose one");
  }
  return problems;
}
