import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname, join } from "node:path";
import type { PythonInstall, PythonInstalls, PythonRuntime } from "../config/python-installs.ts";
import type { SandboxInterpreter } from "../core/sandbox.ts";
import { seenByCodeSandboxes, unmountAllUnder } from "../adapters/bubblewrap/mounts.ts";

/** The Python of each runtime that has one, as code sandboxes get it. */
export interface ExposedPythons {
  interpreters: Partial<Record<PythonRuntime, SandboxInterpreter>>;
  /** Unmounts the views (at shutdown); a crashed server's are removed at the next start. */
  release(): void;
}

/**
 * Makes each Python install visible to sandboxes. Sandbox users cannot reach most installs (pyenv
 * keeps them under /root, mode 0700), and a prefix such as /usr/local holds much more than one
 * Python. So each install outside /usr gets a view: a root-owned folder under `viewsDir` holding
 * read-only bind mounts of the install's own files and nothing else, which sandboxes bind at the
 * install's prefix. Inside, every path is the host's, as such builds need (libpython found
 * through an absolute RUNPATH, pip's #! line, sysconfig). See docs/decisions/0005.
 */
export function exposePythonInstalls(installs: PythonInstalls, viewsDir: string): ExposedPythons {
  releaseViews(viewsDir);
  makeFolder(viewsDir);
  const interpreters: Partial<Record<PythonRuntime, SandboxInterpreter>> = {};
  try {
    for (const [runtime, install] of Object.entries(installs) as [PythonRuntime, PythonInstall][]) {
      interpreters[runtime] = {
        binds: seenByCodeSandboxes(install.prefix)
          ? []
          : [{ hostPath: makeView(install, join(viewsDir, runtime)), sandboxPath: install.prefix }],
        commands: commandsOf(install),
      };
    }
  } catch (error) {
    releaseViews(viewsDir);
    throw error;
  }
  return {
    interpreters,
    release: () => {
      releaseViews(viewsDir);
    },
  };
}

/**
 * The installs as they are, for sandboxes that see the host's own files (the process driver):
 * nothing to bind, nothing to release.
 */
export function pythonsAsInstalled(installs: PythonInstalls): ExposedPythons {
  const interpreters: Partial<Record<PythonRuntime, SandboxInterpreter>> = {};
  for (const [runtime, install] of Object.entries(installs) as [PythonRuntime, PythonInstall][])
    interpreters[runtime] = { binds: [], commands: commandsOf(install) };
  return { interpreters, release: () => undefined };
}

/** `python`, `python3` and `python3.X` run the install's interpreter; pip likewise, if it has one. */
function commandsOf(install: PythonInstall): Record<string, string> {
  const commands: Record<string, string> = {};
  for (const name of ["python", "python3", `python${install.version}`])
    commands[name] = install.executable;
  if (install.pip !== undefined) {
    for (const name of ["pip", "pip3", `pip${install.version}`]) commands[name] = install.pip;
  }
  return commands;
}

/** Mirrors the install's own paths in `view`, each a read-only bind of the original. */
function makeView(install: PythonInstall, view: string): string {
  makeFolder(view);
  for (const ownPath of install.ownPaths) {
    const source = join(install.prefix, ownPath);
    const target = join(view, ownPath);
    makeFolder(dirname(target));
    const stats = lstatSync(source);
    if (stats.isSymbolicLink()) {
      // e.g. libpython3.12.so -> libpython3.12.so.1.0: a name, not content; copied as it is.
      symlinkSync(readlinkSync(source), target);
      continue;
    }
    if (stats.isDirectory()) makeFolder(target);
    else writeFileSync(target, "", { mode: 0o644 });
    execFileSync("mount", ["--bind", "-o", "ro,nosuid,nodev", source, target], {
      stdio: ["ignore", "ignore", "pipe"],
    });
  }
  return view;
}

/** Makes a folder and its missing parents 0755, whatever the umask: sandbox users pass through. */
function makeFolder(folder: string): void {
  if (existsSync(folder)) return;
  makeFolder(dirname(folder));
  mkdirSync(folder);
  chmodSync(folder, 0o755);
}

/** Unmounts every view, then removes the folders (never while something is still mounted). */
function releaseViews(viewsDir: string): void {
  if (!existsSync(viewsDir)) return;
  unmountAllUnder(viewsDir);
  rmSync(viewsDir, { recursive: true, force: true });
}
