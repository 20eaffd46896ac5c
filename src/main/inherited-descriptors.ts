import { closeSync, existsSync, readdirSync, readFileSync } from "node:fs";

/** O_CLOEXEC as /proc/self/fdinfo's octal `flags:` line shows it. */
const closeOnExec = 0o2000000;

/**
 * Closes every descriptor above stderr that `berth serve` was started with. Whatever a parent
 * left open (a log file, a socket, a service manager's descriptors) would otherwise pass on to
 * every process Berth starts — berth-listen, slirp4netns (which runs as a sandbox's uid), the
 * reaper. Node's own descriptors are all close-on-exec, so an inheritable one above 2 is
 * inherited: that is how they are told apart. Only for the server's own process: in-process
 * uses (tests) share their descriptors with their host.
 */
export function closeInheritedDescriptors(): number[] {
  const closed: number[] = [];
  // Only Linux tells a descriptor's flags this way; elsewhere (macOS, where only the test-only
  // parts run) there are no sandboxes to keep descriptors from.
  if (!existsSync("/proc/self/fdinfo")) return closed;
  for (const name of readdirSync("/proc/self/fdinfo")) {
    const descriptor = Number(name);
    if (!(descriptor > 2)) continue;
    let flags: number;
    try {
      flags = parseInt(
        /^flags:\s*([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${name}`, "utf8"))?.[1] ?? "",
        8,
      );
    } catch {
      continue; // the directory listing's own descriptor, already closed
    }
    if (Number.isNaN(flags) || (flags & closeOnExec) !== 0) continue;
    closeSync(descriptor);
    closed.push(descriptor);
  }
  return closed;
}
