import { invalidFields, type FieldProblem } from "./errors.ts";

type Json = unknown;

interface StringRule {
  minLength?: number;
  maxLength?: number;
  pattern?: RegExp;
  /** Shown instead of the raw pattern, e.g. "a letter followed by letters, digits or _". */
  patternHint?: string;
}

/**
 * Reads members out of an untrusted JSON body, collecting a problem per bad field instead of
 * stopping at the first, so one ValidationException tells the caller everything to fix.
 */
export class InputReader {
  readonly problems: FieldProblem[] = [];

  problem(name: string, message: string): void {
    this.problems.push({ name, message });
  }

  /** Throws one ValidationException listing every problem found so far. */
  throwIfProblems(): void {
    if (this.problems.length > 0) throw invalidFields(this.problems);
  }

  object(value: Json, name: string): Record<string, Json> | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "object" || Array.isArray(value)) {
      this.problem(name, "must be an object");
      return undefined;
    }
    return value as Record<string, Json>;
  }

  requiredObject(value: Json, name: string): Record<string, Json> | undefined {
    if (value === undefined || value === null) {
      this.problem(name, "is required");
      return undefined;
    }
    return this.object(value, name);
  }

  string(value: Json, name: string, rule: StringRule = {}): string | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "string") {
      this.problem(name, "must be a string");
      return undefined;
    }
    const { minLength = 0, maxLength = Infinity } = rule;
    if (value.length < minLength || value.length > maxLength) {
      const range =
        maxLength === Infinity ? `at least ${minLength}` : `${minLength} to ${maxLength}`;
      this.problem(name, `must be ${range} characters long (got ${value.length})`);
      return undefined;
    }
    if (rule.pattern && !wholeMatch(rule.pattern, value)) {
      this.problem(name, `must match ${rule.patternHint ?? rule.pattern.source} (got "${value}")`);
      return undefined;
    }
    return value;
  }

  requiredString(value: Json, name: string, rule: StringRule = {}): string | undefined {
    if (value === undefined || value === null) {
      this.problem(name, "is required");
      return undefined;
    }
    return this.string(value, name, rule);
  }

  oneOf<T extends string>(value: Json, name: string, allowed: readonly T[]): T | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
      this.problem(name, `must be one of ${allowed.join(", ")} (got ${JSON.stringify(value)})`);
      return undefined;
    }
    return value as T;
  }

  integer(value: Json, name: string, min: number, max: number): number | undefined {
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      this.problem(
        name,
        `must be a whole number from ${min} to ${max} (got ${JSON.stringify(value)})`,
      );
      return undefined;
    }
    return value;
  }

  array(value: Json, name: string, minItems: number, maxItems: number): Json[] | undefined {
    if (value === undefined || value === null) return undefined;
    if (!Array.isArray(value)) {
      this.problem(name, "must be a list");
      return undefined;
    }
    if (value.length < minItems || value.length > maxItems) {
      this.problem(name, `must have ${minItems} to ${maxItems} items (got ${value.length})`);
      return undefined;
    }
    return value as Json[];
  }

  stringMap(
    value: Json,
    name: string,
    limits: { maxEntries: number; key: StringRule; value: StringRule },
  ): Record<string, string> | undefined {
    const map = this.object(value, name);
    if (map === undefined) return undefined;
    const entries = Object.entries(map);
    if (entries.length > limits.maxEntries) {
      this.problem(name, `must have at most ${limits.maxEntries} entries (got ${entries.length})`);
      return undefined;
    }
    const result: Record<string, string> = {};
    for (const [key, entry] of entries) {
      const goodKey = this.string(key, `${name} key "${key}"`, limits.key);
      const goodValue = this.string(entry, `${name}.${key}`, limits.value);
      if (goodKey !== undefined && goodValue !== undefined) result[goodKey] = goodValue;
    }
    return result;
  }

  /**
   * A tagged union: exactly one member may be set. Returns the member's name and value, refusing
   * members Berth does not support with a message that says so rather than ignoring them.
   */
  union(
    value: Json,
    name: string,
    supported: readonly string[],
    unsupported: readonly string[] = [],
  ): { member: string; value: Json } | undefined {
    const object = this.requiredObject(value, name);
    if (object === undefined) return undefined;
    const members = Object.entries(object).filter(
      ([, member]) => member !== undefined && member !== null,
    );
    if (members.length !== 1) {
      this.problem(
        name,
        `must set exactly one of ${[...supported, ...unsupported].join(", ")} (got ${members.length})`,
      );
      return undefined;
    }
    const [member, memberValue] = members[0] as [string, Json];
    if (unsupported.includes(member)) {
      this.problem(`${name}.${member}`, `is not supported by Berth; use ${supported.join(" or ")}`);
      return undefined;
    }
    if (!supported.includes(member)) {
      this.problem(`${name}.${member}`, `is not a known member; use ${supported.join(" or ")}`);
      return undefined;
    }
    return { member, value: memberValue };
  }
}

function wholeMatch(pattern: RegExp, value: string): boolean {
  const match = pattern.exec(value);
  return match !== null && match.index === 0 && match[0].length === value.length;
}
