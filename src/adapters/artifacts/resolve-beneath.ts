import { lstat, readlink } from "node:fs/promises";
import type { Stats } from "node:fs";
import { isAbsolute, join } from "node:path";

/** What a path names under a root, looked at without ever leaving that root. */
export type Beneath =
  | { kind: "found"; path: string; stats: Stats }
  | { kind: "missing" }
  /** The path climbs out with `..`, or a symbolic link on the way points out (`via`). */
  | { kind: "leaves"; via: string | undefined }
  | { kind: "loop" };

/** As many symbolic links as Linux follows for one path before ELOOP. */
const maxLinks = 40;

/**
 * Resolves `relative` under `root` (trusted as given) one component at a time: a symbolic link
 * is followed only while its target stays under root (a relative target whose `..` never climbs
 * above it), never if it is absolute. Nothing outside root is ever looked at, so no answer
 * depends on, or tells, what exists elsewhere on the host. The found path has no symbolic link
 * below root. Callers rely on no one but root writing under root (the artifact store is root's).
 */
export async function resolveBeneath(root: string, relative: string): Promise<Beneath> {
  if (isAbsolute(relative)) return { kind: "leaves", via: undefined };
  const resolved: string[] = [];
  let pending = relative.split("/");
  let via: string | undefined;
  let links = 0;
  while (pending.length > 0) {
    const [part = "", ...rest] = pending;
    pending = rest;
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (resolved.length === 0) return { kind: "leaves", via };
      resolved.pop();
      continue;
    }
    const path = join(root, ...resolved, part);
    const stats = await lstatIfAny(path);
    if (stats === undefined) return { kind: "missing" };
    if (stats.isSymbolicLink()) {
      links += 1;
      if (links > maxLinks) return { kind: "loop" };
      const target = await readlink(path);
      via = `${[...resolved, part].join("/")} -> ${target}`;
      if (isAbsolute(target)) return { kind: "leaves", via };
      pending = [...target.split("/"), ...pending];
      continue;
    }
    const more = pending.some((next) => next !== "" && next !== ".");
    if (more && !stats.isDirectory()) return { kind: "missing" };
    resolved.push(part);
  }
  const path = join(root, ...resolved);
  return { kind: "found", path, stats: await lstat(path) };
}

async function lstatIfAny(path: string): Promise<Stats | undefined> {
  try {
    return await lstat(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw error;
  }
}
