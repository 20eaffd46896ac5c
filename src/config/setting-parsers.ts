// What a setting is made of (its part, its parser) and the parsers settings share; the
// declarations themselves are in declarations.ts, the loading in settings.ts.

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
  objectStore: "Object store: session storage, code and metadata kept in S3-compatible storage",
  cluster: "Cluster: several nodes sharing PostgreSQL and the object store",
  codeArtifacts: "Code artifacts and the runtimes that run them",
  containerImages: "Container images",
  traces: "Traces: OpenTelemetry spans exported over OTLP/HTTP (docs/observability.md)",
} as const;
export type SettingPart = keyof typeof settingParts;

export interface SettingDeclaration<T> {
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
  /**
   * The value may hold a secret (a password in a URL): an error about it never repeats it.
   * Secrets are always treated so.
   */
  confidential?: boolean;
}

export const integer =
  (min: number, max: number) =>
  (text: string): number | { problem: string } => {
    const value = Number(text);
    return /^-?\d+$/.test(text.trim()) && value >= min && value <= max
      ? value
      : { problem: `must be a whole number from ${min} to ${max} (got "${text}")` };
  };

export const matching =
  (pattern: RegExp, hint: string) =>
  (text: string): string | { problem: string } =>
    pattern.test(text) ? text : { problem: `must be ${hint} (got "${text}")` };

/** A parser's problem with the value it quotes left out: for values that may hold secrets. */
export function withoutValue(problem: string): string {
  return problem.replace(
    / \(got "[\s\S]*"\)$/,
    " (the value given is not repeated: it may hold a secret)",
  );
}

export const decimal =
  (min: number, max: number) =>
  (text: string): number | { problem: string } => {
    const value = Number(text);
    return /^\d+(\.\d+)?$/.test(text.trim()) && value >= min && value <= max
      ? value
      : { problem: `must be a number from ${min} to ${max} (got "${text}")` };
  };

export const boolean = (text: string): boolean | { problem: string } => {
  if (["true", "1", "yes"].includes(text.toLowerCase())) return true;
  if (["false", "0", "no"].includes(text.toLowerCase())) return false;
  return { problem: `must be true or false (got "${text}")` };
};

export const anyText = (text: string): string => text;

export const commaList = (text: string): string[] =>
  text
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean);

export const oneOf =
  <Choice extends string>(choices: readonly Choice[]) =>
  (text: string): Choice | { problem: string } =>
    (choices as readonly string[]).includes(text)
      ? (text as Choice)
      : { problem: `must be one of ${choices.join(", ")} (got "${text}")` };
