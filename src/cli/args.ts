/** Raised for a command line that cannot be understood: exit code 2 with the message. */
export class UsageError extends Error {}

export interface OptionSpec {
  /** Takes a value (`--name VALUE` or `--name=VALUE`); repeatable options collect every value. */
  value?: boolean;
  repeatable?: boolean;
}

export interface ParsedArgs {
  positionals: string[];
  options: Map<string, string[]>;
  /** Words after `--`, untouched (a command to run). */
  rest: string[];
}

/** Parses `args` against the options a command knows; unknown options are usage errors. */
export function parseArgs(args: readonly string[], spec: Record<string, OptionSpec>): ParsedArgs {
  const parsed: ParsedArgs = { positionals: [], options: new Map(), rest: [] };
  for (let index = 0; index < args.length; index += 1) {
    const word = args[index] ?? "";
    if (word === "--") {
      parsed.rest = args.slice(index + 1);
      break;
    }
    if (!word.startsWith("--") || word === "-") {
      parsed.positionals.push(word);
      continue;
    }
    const [name = "", inline] = word.slice(2).split(/=(.*)/s, 2);
    const option = spec[name];
    if (option === undefined) throw new UsageError(`unknown option --${name}`);
    let value = "true";
    if (option.value === true) {
      const next = inline ?? args[(index += 1)];
      if (next === undefined) throw new UsageError(`--${name} needs a value`);
      value = next;
    } else if (inline !== undefined) {
      throw new UsageError(`--${name} takes no value`);
    }
    const values = parsed.options.get(name) ?? [];
    if (values.length > 0 && option.repeatable !== true)
      throw new UsageError(`--${name} given twice`);
    parsed.options.set(name, [...values, value]);
  }
  return parsed;
}

export function optionValue(parsed: ParsedArgs, name: string): string | undefined {
  return parsed.options.get(name)?.at(-1);
}

export function hasFlag(parsed: ParsedArgs, name: string): boolean {
  return parsed.options.has(name);
}

export function integerOption(
  parsed: ParsedArgs,
  name: string,
  range: { min: number; max: number },
): number | undefined {
  const text = optionValue(parsed, name);
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < range.min || value > range.max)
    throw new UsageError(`--${name} must be a whole number from ${range.min} to ${range.max}`);
  return value;
}

/** `NAME=VALUE` options (e.g. --env) as a record. */
export function pairsOption(parsed: ParsedArgs, name: string): Record<string, string> {
  const pairs: Record<string, string> = {};
  for (const pair of parsed.options.get(name) ?? []) {
    const split = pair.indexOf("=");
    if (split <= 0) throw new UsageError(`--${name} wants NAME=VALUE (got "${pair}")`);
    pairs[pair.slice(0, split)] = pair.slice(split + 1);
  }
  return pairs;
}

/** The positionals a command needs, by name, or a usage error naming what is missing. */
export function requirePositionals<const Names extends readonly string[]>(
  parsed: ParsedArgs,
  names: Names,
): Record<Names[number], string> {
  if (parsed.positionals.length < names.length) {
    throw new UsageError(`missing ${names.slice(parsed.positionals.length).join(" ")}`);
  }
  if (parsed.positionals.length > names.length) {
    throw new UsageError(`unexpected argument "${parsed.positionals[names.length] ?? ""}"`);
  }
  return Object.fromEntries(
    names.map((name, index) => [name, parsed.positionals[index]]),
  ) as Record<Names[number], string>;
}
