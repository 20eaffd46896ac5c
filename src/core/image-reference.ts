/** A container image named the way registries name them: `host[:port]/repository[:tag][@digest]`. */
export interface ImageReference {
  /** `host` or `host:port`, as written. */
  registry: string;
  repository: string;
  tag: string | undefined;
  /** `sha256:<64 hex>`; when given, the tag (if any) is only a label. */
  digest: string | undefined;
}

const repositoryPattern =
  /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;
const tagPattern = /^[\w][\w.-]{0,127}$/;
const digestPattern = /^sha256:[a-f0-9]{64}$/;
const registryPattern = /^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$/;

/**
 * Parses a containerUri. Returns a reason instead when it is not one: Berth pulls from the
 * registry the URI names, so the registry host must be there (no implicit Docker Hub).
 */
export function parseImageReference(uri: string): ImageReference | { problem: string } {
  const example =
    "e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/agent:1 or 127.0.0.1:5000/agent@sha256:…";
  const slash = uri.indexOf("/");
  const registry = slash === -1 ? "" : uri.slice(0, slash);
  if (
    slash === -1 ||
    !registryPattern.test(registry) ||
    !(registry.includes(".") || registry.includes(":") || registry === "localhost")
  ) {
    return {
      problem: `must start with the registry's host (host[:port]/repository:tag, ${example})`,
    };
  }
  let rest = uri.slice(slash + 1);
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestPattern.test(digest))
      return { problem: `has a digest that is not sha256:<64 lowercase hex digits> (${example})` };
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon !== -1) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagPattern.test(tag))
      return {
        problem: `has a tag "${tag}" with characters a tag cannot have (letters, digits, _ . -)`,
      };
  }
  if (!repositoryPattern.test(rest)) {
    return {
      problem: `has a repository "${rest}" that is not valid (lowercase letters, digits, separators . _ - and /)`,
    };
  }
  return {
    registry,
    repository: rest,
    tag: tag ?? (digest === undefined ? "latest" : undefined),
    digest,
  };
}

export function formatImageReference(reference: ImageReference): string {
  const tag = reference.tag === undefined ? "" : `:${reference.tag}`;
  const digest = reference.digest === undefined ? "" : `@${reference.digest}`;
  return `${reference.registry}/${reference.repository}${tag}${digest}`;
}
