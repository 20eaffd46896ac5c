import type { RuntimeVersionRecord } from "../../core/model.ts";
import type { LaunchPlan, LaunchPlanner } from "../../core/sessions.ts";
import type { CodeFolders } from "./code-folders.ts";

/**
 * Turns a code artifact into the folder a sandbox mounts at /app and the command it runs there:
 * `node <entry>` or `python3 <entry>`; with two entryPoint items the first is a launcher
 * (e.g. `opentelemetry-instrument python3 main.py`).
 */
export async function planCodeLaunch(
  folders: CodeFolders,
  version: RuntimeVersionRecord,
): Promise<LaunchPlan> {
  const artifact = version.config.artifact;
  if (artifact.kind !== "code") throw new Error("not a code artifact");
  const codeDir = await folders.folder(artifact);
  if (codeDir === undefined)
    throw new Error(`code artifact s3://${artifact.bucket}/${artifact.prefix} is gone`);
  const interpreter = artifact.runtime === "NODE_22" ? "node" : "python3";
  const [first = "", second] = artifact.entryPoint;
  const command = second === undefined ? [interpreter, first] : [first, interpreter, second];
  return { filesystem: { kind: "code", codeDir }, command, environment: {}, shell: "/bin/bash" };
}

/** Plans code artifacts with `code` and container images with `image`. */
export function launchPlanner(planners: {
  code: (version: RuntimeVersionRecord) => Promise<LaunchPlan>;
  image: (version: RuntimeVersionRecord) => Promise<LaunchPlan>;
}): LaunchPlanner {
  return (version) =>
    version.config.artifact.kind === "code" ? planners.code(version) : planners.image(version);
}
