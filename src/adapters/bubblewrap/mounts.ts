import { existsSync } from "node:fs";

/** Where things appear inside every sandbox. */
export const sandboxPaths = {
  app: "/app",
  home: "/home/agent",
  run: "/run/berth",
  interpreters: "/opt/berth/bin",
  agentSocket: "/run/berth/agent.sock",
} as const;

export const sandboxUser = { uid: 1000, gid: 1000, name: "agent" } as const;

/** /etc entries an agent needs (TLS roots, DNS, time zone, libc config); nothing secret. */
const etcEntries = [
  "ssl",
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
 * The sandbox's filesystem: the host's /usr read-only (system programs and libraries), a curated
 * /etc, the agent's code read-only at /app, private /tmp and home, and the session's run folder
 * (for the agent socket). The data directory, /root, other sessions and the host's processes
 * are simply not there.
 */
export function mountArgs(options: {
  codeDir: string;
  runDir: string;
  interpreters: Record<string, string>;
  passwdFile: string;
  groupFile: string;
  hostsFile: string;
  resolvConfFile: string;
}): string[] {
  const args = ["--ro-bind", "/usr", "/usr"];
  // Debian has merged /usr: /bin, /lib... are symlinks into /usr on the host too.
  for (const top of ["bin", "sbin", "lib", "lib64", "lib32", "libx32"]) {
    if (existsSync(`/usr/${top}`)) args.push("--symlink", `usr/${top}`, `/${top}`);
  }
  for (const entry of etcEntries) args.push("--ro-bind-try", `/etc/${entry}`, `/etc/${entry}`);
  args.push(
    "--ro-bind",
    options.passwdFile,
    "/etc/passwd",
    "--ro-bind",
    options.groupFile,
    "/etc/group",
    "--ro-bind",
    options.hostsFile,
    "/etc/hosts",
    "--ro-bind",
    options.resolvConfFile,
    "/etc/resolv.conf",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/var/tmp",
    "--tmpfs",
    sandboxPaths.home,
    "--ro-bind",
    options.codeDir,
    sandboxPaths.app,
    "--bind",
    options.runDir,
    sandboxPaths.run,
  );
  for (const [name, hostPath] of Object.entries(options.interpreters)) {
    args.push("--ro-bind", hostPath, `${sandboxPaths.interpreters}/${name}`);
  }
  return args;
}
