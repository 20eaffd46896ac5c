import { stat } from "node:fs/promises";
import type { AgentArtifact } from "../../core/model.ts";
import { ArtifactProblem } from "../../core/preparation.ts";
import { insideRoot, type CodeFolders } from "./code-folders.ts";

/**
 * Checks a version's artifact when the runtime is created or updated: the code exists (a .zip is
 * unpacked now, not at the first invoke) and holds the entry point.
 */
export function codeArtifactCheck(
  folders: CodeFolders,
): (artifact: Extract<AgentArtifact, { kind: "code" }>) => Promise<undefined> {
  return async (artifact) => {
    const shown = `s3://${artifact.bucket}/${artifact.prefix}`;
    const location = asProblem(() => folders.location(artifact), shown);
    const folder = await folders.folder(artifact).catch((error: unknown) => {
      throw new ArtifactProblem(
        `Code artifact ${shown} could not be used: ${(error as Error).message}`,
      );
    });
    if (folder === undefined) {
      throw new ArtifactProblem(
        `Code artifact ${shown} not found: put it at ${location} (a folder or a .zip)`,
      );
    }
    // The last item is the script (AgentCore allows a launcher before it, e.g. opentelemetry-instrument).
    const entryFile = artifact.entryPoint.at(-1) ?? "";
    const entryPath = asProblem(() => insideRoot(folder, entryFile), shown);
    if ((await stat(entryPath).catch(() => undefined))?.isFile() !== true) {
      throw new ArtifactProblem(`Entry point ${entryFile} not found in code artifact ${shown}`);
    }
    return undefined;
  };
}

function asProblem<T>(work: () => T, shown: string): T {
  try {
    return work();
  } catch (error) {
    throw new ArtifactProblem(`Code artifact ${shown}: ${(error as Error).message}`);
  }
}
