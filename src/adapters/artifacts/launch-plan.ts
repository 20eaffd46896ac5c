import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { RuntimeVersionRecord } from "../../core/model.ts";
import type { LaunchPlanner } from "../../core/sessions.ts";
import { artifactLocation } from "./local-artifact-store.ts";

const run = promisify(execFile);

/**
 * Turns a code artifact into the folder a sandbox mounts at /app and the command it runs there:
 * `node <entry>` or `python3 <entry>`; with two entryPoint items the first is a launcher
 * (e.g. `opentelemetry-instrument python3 main.py`). A .zip is unpacked once into a cache keyed
 * by its SHA-256.
 */
export function codeLaunchPlanner(artifactsDir: string, cacheDir: string): LaunchPlanner {
  return async (version: RuntimeVersionRecord) => {
    const artifact = version.config.artifact;
    if (artifact.kind !== "code")
      throw new Error("container images are not supported by this server yet");
    const location = artifactLocation(artifactsDir, artifact);
    const codeDir = (await stat(location)).isFile()
      ? await unpackZip(location, cacheDir)
      : location;
    const interpreter = artifact.runtime === "NODE_22" ? "node" : "python3";
    const [first = "", second] = artifact.entryPoint;
    const command = second === undefined ? [interpreter, first] : [first, interpreter, second];
    return { codeDir, command };
  };
}

async function unpackZip(zipPath: string, cacheDir: string): Promise<string> {
  const digest = await sha256File(zipPath);
  const target = join(cacheDir, digest);
  if (await stat(target).catch(() => undefined)) return target;
  const staging = `${target}.${process.pid}.partial`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  // unzip refuses entries that would land outside the target folder ("../" and absolute paths).
  await run("unzip", ["-q", "-o", zipPath, "-d", staging]);
  await run("chmod", ["-R", "a+rX", staging]);
  await rename(staging, target);
  return target;
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path)
      .on("data", (chunk) => hash.update(chunk))
      .on("end", () => {
        resolve(hash.digest("hex"));
      })
      .on("error", reject);
  });
}
