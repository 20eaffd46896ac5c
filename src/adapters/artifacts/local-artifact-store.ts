import type { AgentArtifact } from "../../core/model.ts";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { CodeSource } from "./code-source.ts";
import { resolveBeneath } from "./resolve-beneath.ts";

/**
 * Checks a version's artifact when the runtime is created or updated: the code exists (a .zip is
 * unpacked now, not at the first invoke) and holds the entry point.
 */
export function codeArtifactCheck(
  folders: CodeSource,
): (artifact: Extract<AgentArtifact, { kind: "code" }>) => Promise<undefined> {
  return async (artifact) => {
    const shown = `s3://${artifact.bucket}/${artifact.prefix}`;
    // Refuses a location that leaves the store before anything is looked up.
    asProblem(() => folders.location(artifact), shown);
    const folder = await folders.folder(artifact).catch((error: unknown) => {
      throw new ArtifactProblem(
        `Code artifact ${shown} could not be used: ${(error as Error).message}`,
      );
    });
    if (folder === undefined) {
      throw new ArtifactProblem(folders.notFound(artifact));
    }
    // The last item is the script (AgentCore allows a launcher before it, e.g. opentelemetry-instrument).
    const entryFile = artifact.entryPoint.at(-1) ?? "";
    const problem = await entryPointProblem(folder, entryFile);
    if (problem !== undefined) {
      throw new ArtifactProblem(
        `Entry point ${entryFile} ${problem} ${shown} (agentRuntimeArtifact.codeConfiguration.entryPoint)`,
      );
    }
    return undefined;
  };
}

/**
 * Why the entry point cannot be run from the code folder, if it cannot. It is looked up without
 * leaving the folder: Berth looks as root, and a path through `hostroot -> /` must not tell the
 * caller whether some host file exists. What is outside is never looked at, so the answer is the
 * same whatever is there.
 */
async function entryPointProblem(folder: string, entryFile: string): Promise<string | undefined> {
  const found = await resolveBeneath(folder, entryFile);
  switch (found.kind) {
    case "found":
      return found.stats.isFile() ? undefined : "is not a file in code artifact";
    case "missing":
      return "not found in code artifact";
    case "loop":
      return "goes through too many symbolic links in code artifact";
    case "leaves":
      return found.via === undefined
        ? "leaves code artifact"
        : `goes through a symbolic link (${found.via}) out of code artifact`;
  }
}

function asProblem<T>(work: () => T, shown: string): T {
  try {
    return work();
  } catch (error) {
    throw new ArtifactProblem(`Code artifact ${shown}: ${(error as Error).message}`);
  }
}
