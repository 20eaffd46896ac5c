import { createHash } from "node:crypto";
import { ArtifactProblem } from "../../core/preparation.ts";
import { manifestMediaTypes } from "./registry-client.ts";

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

/** An image manifest: one platform's config and layers. */
export interface ImageManifest {
  config: Descriptor;
  layers: Descriptor[];
}

/** The platform images must be built for to run here, in OCI's words (linux/amd64...). */
export function hostPlatform(): { os: string; architecture: string } {
  const architectures: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ppc64: "ppc64le",
    s390x: "s390x",
    riscv64: "riscv64",
  };
  return { os: "linux", architecture: architectures[process.arch] ?? process.arch };
}

export function sha256Digest(bytes: Buffer): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Throws unless `bytes` hash to `digest` (only sha256 digests are accepted). */
export function verifyDigest(bytes: Buffer, digest: string, what: string): void {
  if (!digest.startsWith("sha256:")) {
    throw new ArtifactProblem(
      `${what} has a ${digest.split(":")[0] ?? ""} digest; Berth verifies sha256 only`,
    );
  }
  const actual = sha256Digest(bytes);
  if (actual !== digest) {
    throw new ArtifactProblem(
      `Digest mismatch: ${what} should be ${digest} but its content is ${actual}`,
    );
  }
}

/**
 * What a manifest document is: an index (one manifest per platform), from which the host's is
 * chosen, or an image manifest.
 */
export function readManifest(
  body: Buffer,
  mediaType: string,
  shown: string,
): { kind: "index"; manifests: Descriptor[] } | ({ kind: "image" } & ImageManifest) {
  let parsed: {
    mediaType?: string;
    manifests?: Descriptor[];
    config?: Descriptor;
    layers?: Descriptor[];
  };
  try {
    parsed = JSON.parse(body.toString("utf8")) as typeof parsed;
  } catch {
    throw new ArtifactProblem(`The manifest of ${shown} is not JSON`);
  }
  const type = parsed.mediaType ?? mediaType;
  if (
    type === manifestMediaTypes.ociIndex ||
    type === manifestMediaTypes.dockerList ||
    parsed.manifests !== undefined
  ) {
    return { kind: "index", manifests: parsed.manifests ?? [] };
  }
  if (parsed.config === undefined || !Array.isArray(parsed.layers)) {
    // The type is shown only when it looks like one: the answer may not be a registry's.
    const typeShown = /^application\/[\w.+-]{1,100}$/.test(type) ? type : "no known media type";
    throw new ArtifactProblem(
      `The manifest of ${shown} (${typeShown}) is not an OCI or Docker v2 image manifest`,
    );
  }
  return { kind: "image", config: parsed.config, layers: parsed.layers };
}

/** The index entry for this host's platform, or a problem that lists what the image offers. */
export function choosePlatform(manifests: Descriptor[], shown: string): Descriptor {
  const host = hostPlatform();
  const candidates = manifests.filter(
    (entry) => entry.platform?.os === host.os && entry.platform.architecture === host.architecture,
  );
  // arm64 images may say variant v8; without a variant preference, the first match wins.
  const chosen = candidates.find((entry) => entry.platform?.variant === undefined) ?? candidates[0];
  if (chosen !== undefined) return chosen;
  const offered = manifests
    .map((entry) =>
      [entry.platform?.os, entry.platform?.architecture, entry.platform?.variant]
        .filter(Boolean)
        .join("/"),
    )
    .filter((platform) => platform !== "" && platform !== "unknown/unknown");
  throw new ArtifactProblem(
    `Wrong platform: ${shown} has no image for ${host.os}/${host.architecture} (it has ${offered.join(", ") || "none"})`,
  );
}
