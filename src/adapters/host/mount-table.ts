import { readFileSync } from "node:fs";

/**
 * The kernel's mount table, read where an adapter needs it (removing folders safely, finding
 * what a crashed server left mounted). Shared by adapters; it holds no state.
 */

/** Mount points at or below `directory`, deepest first. */
export function mountPointsUnder(directory: string): string[] {
  return readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((line) => unescapeMountPath(line.split(" ")[4] ?? ""))
    .filter((point) => point === directory || point.startsWith(`${directory}/`))
    .sort((a, b) => b.length - a.length);
}

export function isMountPoint(directory: string): boolean {
  return mountPointsUnder(directory).includes(directory);
}

/** mountinfo escapes space, tab, newline and backslash as octal (\040...). */
function unescapeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_match, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}
