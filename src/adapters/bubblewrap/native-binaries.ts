import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * The path of one of Berth's native helpers (native/*.c, built by scripts/build-native.sh),
 * with an error that says how to build it when it is missing.
 */
export function nativeBinary(name: "berth-exec" | "berth-bridge" | "berth-listen"): string {
  const path = fileURLToPath(new URL(`../../../native/bin/${name}`, import.meta.url));
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: build it with \`bash scripts/build-native.sh\` (scripts/setup.sh does)`,
    );
  }
  return path;
}
