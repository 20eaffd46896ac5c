import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Puts a code artifact folder with an entry point into Berth's local artifact store. */
export function placeCodeArtifact(
  dataDir: string,
  bucket: string,
  prefix: string,
  entryPoint = "main.js",
): void {
  const folder = join(dataDir, "artifacts", bucket, prefix);
  mkdirSync(folder, { recursive: true });
  writeFileSync(join(folder, entryPoint), "// agent\n");
}

export function codeArtifact(bucket = "agents", prefix = "hello", entryPoint = "main.js") {
  return {
    codeConfiguration: {
      code: { s3: { bucket, prefix } },
      runtime: "NODE_22" as const,
      entryPoint: [entryPoint],
    },
  };
}
