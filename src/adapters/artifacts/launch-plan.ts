import type { ManagedRuntime, RuntimeVersionRecord } from "../../core/model.ts";
import { ArtifactProblem } from "../../core/preparation.ts";
import type { SandboxInterpreter } from "../../core/sandbox.ts";
import type { LaunchPlan, LaunchPlanner } from "../../core/sessions.ts";
import type { CodeSource } from "./code-source.ts";

/** The interpreter of each runtime this server has (NODE_22's node is in every code sandbox). */
export type RuntimeInterpreters = Partial<Record<ManagedRuntime, SandboxInterpreter>>;

/**
 * Turns a code artifact into the folder a sandbox mounts at /app and the command it runs there:
 * `node <entry>` or `python3 <entry>`, where `python3` is the runtime's own Python; with two
 * entryPoint items the first is a launcher (e.g. `opentelemetry-instrument python3 main.py`).
 */
export async function planCodeLaunch(
  folders: CodeSource,
  version: RuntimeVersionRecord,
  interpreters: RuntimeInterpreters,
): Promise<LaunchPlan> {
  const artifact = version.config.artifact;
  if (artifact.kind !== "code") throw new Error("not a code artifact");
  // A version prepared while its interpreter was there may outlive it (a restart without it).
  requireInterpreter(artifact.runtime, interpreters);
  const codeDir = await folders.folder(artifact);
  if (codeDir === undefined) throw new Error(folders.notFound(artifact));
  const interpreter = interpreters[artifact.runtime];
  const command = artifact.runtime === "NODE_22" ? "node" : "python3";
  const [first = "", second] = artifact.entryPoint;
  return {
    filesystem: {
      kind: "code",
      codeDir,
      ...(interpreter === undefined ? {} : { interpreter }),
    },
    command: second === undefined ? [command, first] : [first, command, second],
    environment: {},
    shell: "/bin/bash",
  };
}

/**
 * Throws ArtifactProblem, saying what to install or set, when a runtime's interpreter is not on
 * this server: a PYTHON_3_13 agent runs on Python 3.13 or not at all, never on another version.
 */
export function requireInterpreter(
  runtime: ManagedRuntime,
  interpreters: RuntimeInterpreters,
): void {
  if (runtime === "NODE_22" || interpreters[runtime] !== undefined) return;
  const version = runtime.replace(/^PYTHON_(\d+)_(\d+)$/, "$1.$2");
  throw new ArtifactProblem(
    `Runtime ${runtime} needs Python ${version}, which this Berth server does not have. Install python${version} on the server (Berth looks on its PATH, in /usr/local/bin, /usr/bin, /opt/*/bin and pyenv's versions) or set pythonInterpreters (e.g. --python-interpreters ${runtime}=/path/to/python${version}), restart Berth, then update the runtime.`,
  );
}

/** Plans code artifacts with `code` and container images with `image`. */
export function launchPlanner(planners: {
  code: (version: RuntimeVersionRecord) => Promise<LaunchPlan>;
  image: (version: RuntimeVersionRecord) => Promise<LaunchPlan>;
}): LaunchPlanner {
  return (version) =>
    version.config.artifact.kind === "code" ? planners.code(version) : planners.image(version);
}
