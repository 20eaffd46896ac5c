import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type { SandboxInterpreter } from "../../core/sandbox.ts";
import { mountPointsUnder } from "../host/mount-table.ts";

/** Where things appear inside every sandbox. */
export const sandboxPaths = {
  app: "/app",
  home: "/home/agent",
  run: "/run/berth",
  interpreters: "/opt/berth/bin",
  bridge: "/run/berth/bridge",
  volumes: "/mnt",
} as const;

export const sandboxUser = { uid: 1000, gid: 1000, name: "agent" } as const;

/**
 * /etc entries an agent needs (TLS roots, time zone, libc config); nothing secret: of /etc/ssl
 * only the public certificates and OpenSSL's configuration, never `private/` (host TLS keys).
 */
const hostEtcEntries = [
  "ssl/certs",
  "ssl/openssl.cnf",
  "ca-certificates",
  "ca-certificates.conf",
  "nsswitch.conf",
  "localtime",
  "ld.so.cache",
  "ld.so.conf",
  "ld.so.conf.d",
  "alternatives",
  "mime.types",
  "protocols",
  "services",
];

/**
 * Builds the /etc every sandbox sees, once per server: copies of the harmless host entries plus
 * Berth's own passwd, group, hosts and resolv.conf. One bind mount instead of a dozen keeps
 * sandbox start-up short.
 */
export function prepareSandboxEtc(etcDir: string): void {
  rmSync(etcDir, { recursive: true, force: true });
  mkdirSync(etcDir, { recursive: true, mode: 0o755 });
  for (const entry of hostEtcEntries) {
    if (!existsSync(`/etc/${entry}`)) continue;
    mkdirSync(dirname(join(etcDir, entry)), { recursive: true, mode: 0o755 });
    cpSync(`/etc/${entry}`, join(etcDir, entry), { recursive: true, verbatimSymlinks: true });
  }
  const files: Record<string, string> = {
    passwd: `root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n${sandboxUser.name}:x:${sandboxUser.uid}:${sandboxUser.gid}:agent:${sandboxPaths.home}:/bin/sh\n`,
    group: `root:x:0:\n${sandboxUser.name}:x:${sandboxUser.gid}:\n`,
    hosts: "127.0.0.1 localhost sandbox\n::1 localhost\n",
    // slirp4netns answers DNS at 10.0.2.3 and forwards it to the host's resolvers.
    "resolv.conf": "nameserver 10.0.2.3\n",
  };
  for (const [name, content] of Object.entries(files))
    writeFileSync(join(etcDir, name), content, { mode: 0o644 });
  execFileSync("chmod", ["-R", "a+rX", etcDir]);
}

/**
 * The sandbox's filesystem: the host's /usr read-only (the distribution's programs and
 * libraries) without /usr/local (what was installed on this host by hand: its tools, their
 * configuration, anything an operator put there), Berth's prepared /etc, the agent's code
 * read-only at /app, private /tmp and home, and the runtime's interpreter: its own files only,
 * read-only at their host paths (see docs/decisions/0005-python-runtimes.md). The data
 * directory, the rest of /root, other sessions and the host's processes are simply not there.
 */
export function codeMountArgs(options: {
  codeDir: string;
  runDir: string;
  etcDir: string;
  interpreters: Record<string, string>;
  /** The runtime's own interpreter (a Python runtime's Python), if it has one. */
  interpreter?: SandboxInterpreter | undefined;
}): string[] {
  const args = [
    "--ro-bind",
    "/usr",
    "/usr",
    "--tmpfs",
    "/usr/local",
    // Before the remount: an interpreter installed under /usr/local needs its mount point there.
    ...interpreterBindArgs(options.interpreter),
    "--remount-ro",
    "/usr/local",
  ];
  // Debian has merged /usr: /bin, /lib... are symlinks into /usr on the host too.
  for (const top of ["bin", "sbin", "lib", "lib64", "lib32", "libx32"]) {
    if (existsSync(`/usr/${top}`)) args.push("--symlink", `usr/${top}`, `/${top}`);
  }
  args.push(
    "--ro-bind",
    options.etcDir,
    "/etc",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/var/tmp",
    "--tmpfs",
    sandboxPaths.home,
    "--ro-bind",
    options.codeDir,
    sandboxPaths.app,
    ...sessionMountArgs(options.runDir),
  );
  for (const [name, hostPath] of Object.entries(options.interpreters)) {
    args.push("--ro-bind", hostPath, `${sandboxPaths.interpreters}/${name}`);
  }
  for (const [name, program] of Object.entries(options.interpreter?.commands ?? {})) {
    args.push("--symlink", program, `${sandboxPaths.interpreters}/${name}`);
  }
  return args;
}

function interpreterBindArgs(interpreter: SandboxInterpreter | undefined): string[] {
  return (interpreter?.binds ?? []).flatMap(({ hostPath, sandboxPath }) => [
    "--ro-bind",
    hostPath,
    sandboxPath,
  ]);
}

/** Whether code sandboxes see the host's own `path` already: /usr is there, /usr/local is not. */
export function seenByCodeSandboxes(path: string): boolean {
  const within = (folder: string) => path === folder || path.startsWith(`${folder}/`);
  return within("/usr") && !within("/usr/local");
}

/**
 * An image sandbox's filesystem: the image's root (already mounted at rootDir as an overlay,
 * see RootMounts.imageRoot), fresh /proc and /dev, Berth's hosts and resolv.conf, the run folder
 * and the session's volumes. The mount points exist in every unpacked image (see
 * prepareForSandboxes), so bwrap never has to create one in a root the sandbox may not own.
 */
export function imageMountArgs(options: {
  rootDir: string;
  runDir: string;
  etcDir: string;
}): string[] {
  return [
    "--bind",
    options.rootDir,
    "/",
    "--ro-bind",
    join(options.etcDir, "hosts"),
    "/etc/hosts",
    "--ro-bind",
    join(options.etcDir, "resolv.conf"),
    "/etc/resolv.conf",
    ...sessionMountArgs(options.runDir),
  ];
}

/**
 * What every sandbox gets whatever its root: fresh /proc and /dev and the session's volumes.
 * Session storage is mounted in the run folder's `mnt` on the host before the sandbox starts;
 * the recursive bind brings it in. That folder belongs to root: the agent cannot add to /mnt.
 * Nothing else of the run folder is visible (the agent's socket arrives as a descriptor).
 */
function sessionMountArgs(runDir: string): string[] {
  return ["--proc", "/proc", "--dev", "/dev", "--bind", join(runDir, "mnt"), sandboxPaths.volumes];
}

/**
 * Unmounts everything at or below `directory` (deepest first, lazily: a sandbox still holding a
 * copy keeps its own), so that removing the folder afterwards can never reach into a mounted
 * volume and delete a session's data. For the server's start and shutdown only: it runs the
 * umount program and waits for it (sandboxes' own folders go through the helper).
 */
export function unmountAllUnder(directory: string): void {
  let failure: Error | undefined;
  for (const point of mountPointsUnder(directory)) {
    if (point === directory) continue;
    try {
      execFileSync("umount", ["--lazy", point], { stdio: ["ignore", "ignore", "pipe"] });
    } catch (error) {
      failure ??= error as Error;
    }
  }
  // A sandbox's own clean-up may have unmounted a point first: failing matters only if
  // something is still mounted.
  const left = mountPointsUnder(directory).filter((point) => point !== directory);
  if (failure !== undefined && left.length > 0) throw failure;
}
