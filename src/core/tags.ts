import type { CoreContext } from "./context.ts";
import { invalidFields, notFound } from "./errors.ts";
import { InputReader } from "./input-reader.ts";
import type { TaggedResource } from "./store.ts";

type Tags = Record<string, string>;

const tagText = {
  pattern: /[a-zA-Z0-9\s._:/=+@-]*/,
  patternHint: "letters, digits, spaces and the characters . _ : / = + @ -",
};

/** AgentCore's tag rules, as botocore's model (TagsMap, TagKey, TagValue) and devguide state them. */
export const tagRules = {
  maxTagsPerResource: 50,
  maxKeysPerUntag: 200,
  key: { minLength: 1, maxLength: 128, ...tagText },
  value: { minLength: 0, maxLength: 256, ...tagText },
  /** AWS keeps tags starting with this (in any case) for itself: callers may not set or remove them. */
  reservedPrefix: "aws:",
  resourceArn: {
    minLength: 20,
    maxLength: 1011,
    pattern:
      /arn:(?:[^:]+)?:bedrock-agentcore:[a-z0-9-]+:[0-9]{12}:([a-z-]+\/[^/]+)(?:\/[a-z-]+\/[^/]+)*/,
    patternHint:
      "an AgentCore ARN (arn:aws:bedrock-agentcore:REGION:ACCOUNT:runtime/ID, or .../runtime-endpoint/NAME)",
  },
} as const;

/**
 * Reads a tags map (CreateAgentRuntime, CreateAgentRuntimeEndpoint, TagResource), reporting
 * each bad key or value to `reader`. Builds a fresh object, so a key like `__proto__` is kept
 * as a tag instead of being swallowed by the object's prototype.
 */
export function readTags(reader: InputReader, value: unknown, name: string): Tags | undefined {
  const map = reader.object(value, name);
  if (map === undefined) return undefined;
  const entries = Object.entries(map);
  if (entries.length > tagRules.maxTagsPerResource) {
    reader.problem(
      name,
      `must have at most ${tagRules.maxTagsPerResource} tags (got ${entries.length})`,
    );
    return undefined;
  }
  const tags: [string, string][] = [];
  for (const [key, tagValue] of entries) {
    const goodKey = readTagKey(reader, key, `${name} key "${key}"`);
    const goodValue = reader.string(tagValue, `${name}.${key}`, tagRules.value);
    if (goodValue !== undefined && isReserved(goodValue)) {
      reader.problem(`${name}.${key}`, reservedMessage);
    } else if (goodKey !== undefined && goodValue !== undefined) {
      tags.push([goodKey, goodValue]);
    }
  }
  return Object.fromEntries(tags);
}

/** The tags member of a create request, on its own: throws a ValidationException naming it. */
export function readCreateTags(value: unknown): Tags {
  const reader = new InputReader();
  const tags = readTags(reader, value, "tags");
  reader.throwIfProblems();
  return tags ?? {};
}

export async function listTags(context: CoreContext, resourceArn: string): Promise<Tags> {
  const reader = new InputReader();
  checkResourceArn(reader, resourceArn);
  reader.throwIfProblems();
  const tags = await context.store.findTags(taggedResource(resourceArn));
  if (tags === undefined) throw noSuchResource(resourceArn);
  return tags;
}

/** Adds tags, overwriting the values of keys the resource already has (TagResource). */
export async function tagResource(
  context: CoreContext,
  resourceArn: string,
  body: Record<string, unknown>,
): Promise<void> {
  const reader = new InputReader();
  checkResourceArn(reader, resourceArn);
  if (body["tags"] === undefined || body["tags"] === null) reader.problem("tags", "is required");
  const added = readTags(reader, body["tags"], "tags");
  reader.throwIfProblems();
  const updated = await context.store.updateTags(taggedResource(resourceArn), (current) =>
    withinLimit({ ...current, ...added }),
  );
  if (updated === undefined) throw noSuchResource(resourceArn);
}

/** Removes the tags with these keys; keys the resource does not have are ignored (UntagResource). */
export async function untagResource(
  context: CoreContext,
  resourceArn: string,
  tagKeys: readonly string[],
): Promise<void> {
  const reader = new InputReader();
  checkResourceArn(reader, resourceArn);
  if (tagKeys.length > tagRules.maxKeysPerUntag) {
    reader.problem(
      "tagKeys",
      `must have at most ${tagRules.maxKeysPerUntag} keys (got ${tagKeys.length})`,
    );
  }
  for (const key of tagKeys) readTagKey(reader, key, `tagKeys "${key}"`);
  reader.throwIfProblems();
  const removed = new Set(tagKeys);
  const updated = await context.store.updateTags(taggedResource(resourceArn), (current) =>
    Object.fromEntries(Object.entries(current).filter(([key]) => !removed.has(key))),
  );
  if (updated === undefined) throw noSuchResource(resourceArn);
}

/** A malformed ARN is a ValidationException naming `resourceArn`, as AgentCore answers. */
function checkResourceArn(reader: InputReader, arn: string): void {
  reader.requiredString(arn, "resourceArn", tagRules.resourceArn);
}

/**
 * Which resource a well-formed ARN names. The ARN of something Berth does not tag (a gateway,
 * say) names no resource here.
 */
function taggedResource(arn: string): TaggedResource {
  // arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE, where RESOURCE may itself hold colons.
  const path = arn.split(":").slice(5).join(":").split("/");
  const [kind, runtimeId = "", endpointKind, endpointName] = path;
  if (kind === "runtime" && path.length === 2) return { arn, runtimeId, endpointName: undefined };
  if (kind === "runtime" && path.length === 4 && endpointKind === "runtime-endpoint")
    return { arn, runtimeId, endpointName };
  throw notFound(
    `No resource ${arn}: Berth tags agent runtimes (…:runtime/ID) and their endpoints (…:runtime/ID/runtime-endpoint/NAME)`,
  );
}

function readTagKey(reader: InputReader, key: string, name: string): string | undefined {
  const good = reader.string(key, name, tagRules.key);
  if (good === undefined) return undefined;
  if (isReserved(good)) {
    reader.problem(name, reservedMessage);
    return undefined;
  }
  return good;
}

function withinLimit(tags: Tags): Tags {
  const count = Object.keys(tags).length;
  if (count > tagRules.maxTagsPerResource) {
    throw invalidFields([
      {
        name: "tags",
        message: `would give the resource ${count} tags, more than the ${tagRules.maxTagsPerResource} it may have; remove some with UntagResource first`,
      },
    ]);
  }
  return tags;
}

function isReserved(text: string): boolean {
  return text.toLowerCase().startsWith(tagRules.reservedPrefix);
}

const reservedMessage = `must not start with "${tagRules.reservedPrefix}" (in any case): AWS reserves that prefix`;

function noSuchResource(arn: string) {
  return notFound(`No agent runtime or endpoint with ARN ${arn}`);
}
