import { stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { ArtifactProblem, type ArtifactCheck } from "../../core/preparation.ts";

/**
 * Code artifacts live in `<data-dir>/artifacts/<bucket>/<prefix>`: a folder holding the entry
 * point, or a .zip. This mirrors the S3 location AgentCore reads, on local disk.
 */
export function localArtifactCheck(artifactsDir: string): ArtifactCheck {
  return async (artifact) => {
    if (artifact.kind === "container") {
      throw new ArtifactProblem(
        `Container images are not supported by this Berth server yet (${artifact.containerUri}); use codeConfiguration`,
      );
    }
    const location = artifactLocation(artifactsDir, artifact);
    const shown = `s3://${artifact.bucket}/${artifact.prefix}`;
    const found = await stat(location).catch(() => undefined);
    if (found === undefined) {
      throw new ArtifactProblem(
        `Code artifact ${shown} not found: put it at ${location} (a folder or a .zip)`,
      );
    }
    if (found.isFile()) {
      if (!location.endsWith(".zip"))
        throw new ArtifactProblem(`Code artifact ${shown} is a file but not a .zip`);
      return;
    }
    // The last item is the script (AgentCore allows a launcher before it, e.g. opentelemetry-instrument).
    const entryFile = artifact.entryPoint.at(-1) ?? "";
    const entry = await stat(insideRoot(location, entryFile)).catch(() => undefined);
    if (entry?.isFile() !== true) {
      throw new ArtifactProblem(`Entry point ${entryFile} not found in code artifact ${shown}`);
    }
  };
}

/** Where a code artifact lives in the local store: `<artifacts>/<bucket>/<prefix>`. */
export function artifactLocation(
  artifactsDir: string,
  artifact: { bucket: string; prefix: string },
): string {
  return insideRoot(artifactsDir, join(artifact.bucket, artifact.prefix));
}

/** Resolves `relative` under `root`, refusing anything (`..`, absolute paths) that escapes it. */
function insideRoot(root: string, relative: string): string {
  const base = resolve(root);
  const target = resolve(base, relative);
  if (target !== base && !target.startsWith(base + sep)) {
    throw new ArtifactProblem(`Artifact path ${relative} leaves the artifact store`);
  }
  return target;
}
