import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/** Berth's native helpers (native/*.c, built by scripts/build-native.sh). */
export type NativeBinary =
  "berth-exec" | "berth-mount" | "berth-bridge" | "berth-listen" | "berth-snapshot";

/**
 * The path of one of Berth's native helpers, with an error that says how to build it when it is
 * missing. In adapters/host: the bubblewrap driver and the root mount helper both need them.
 */
export function nativeBinary(name: NativeBinary): string {
  const path = fileURLToPath(new URL(`../../../native/bin/${name}`, import.meta.url));
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: build it with \`bash scripts/build-native.sh\` (scripts/setup.sh does)`,
    );
  }
  return path;
}
