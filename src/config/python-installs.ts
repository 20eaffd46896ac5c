import { existsSync, lstatSync, readdirSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join } from "node:path";

/** The Python runtimes AgentCore names, and the version each one means. */
export const pythonRuntimeVersions = {
  PYTHON_3_10: "3.10",
  PYTHON_3_11: "3.11",
  PYTHON_3_12: "3.12",
  PYTHON_3_13: "3.13",
  PYTHON_3_14: "3.14",
} as const;
export type PythonRuntime = keyof typeof pythonRuntimeVersions;
const pythonRuntimes = Object.keys(pythonRuntimeVersions) as PythonRuntime[];

/**
 * A Python installed on the host: an interpreter inside its prefix (the folder holding bin/ and
 * lib/, Python's sys.prefix), and the files of that prefix that belong to this version.
 */
export interface PythonInstall {
  version: string;
  prefix: string;
  /** The interpreter's real path, e.g. /root/.pyenv/versions/3.12.1/bin/python3.12. */
  executable: string;
  /** `bin/pip3.X` of the same prefix, when the install has pip. */
  pip: string | undefined;
  /**
   * The version's own files and folders under the prefix, relative to it: the interpreter, pip,
   * the standard library (with site-packages), the shared library and the headers. A prefix
   * shared with other software (/usr/local) holds much more; none of that is listed.
   */
  ownPaths: string[];
}

export type PythonInstalls = Partial<Record<PythonRuntime, PythonInstall>>;

/** pythonInterpreters' default: none named, every one looked for (see findPythonInstalls). */
export const noPythonsNamed: PythonInstalls = {};

/**
 * Checks that `path` runs Python `version` from a complete install: the interpreter resolves to
 * `<prefix>/bin/python<version>` and `<prefix>/lib/python<version>/os.py` exists (the landmark
 * Python itself looks for). Wrappers such as pyenv's shims have no such prefix and are refused.
 * Nothing is executed: Berth runs as root and never runs the interpreters it finds.
 */
export function inspectPythonInstall(
  path: string,
  version: string,
): PythonInstall | { problem: string } {
  let executable: string;
  try {
    executable = realpathSync(path);
  } catch {
    return { problem: `${path} does not exist` };
  }
  const stats = statSync(executable);
  if (!stats.isFile() || (stats.mode & 0o005) !== 0o005) {
    return { problem: `${path} is not a program every user may run (mode must include o+rx)` };
  }
  const name = `python${version}`;
  const prefix = dirname(dirname(executable));
  if (basename(executable) !== name || basename(dirname(executable)) !== "bin") {
    return {
      problem: `${path} is not an installed ${name}: it resolves to ${executable}, not <prefix>/bin/${name} (wrappers such as pyenv's shims will not do: name the install's own bin/${name})`,
    };
  }
  const standardLibrary = join(prefix, "lib", name);
  if (!existsSync(join(standardLibrary, "os.py"))) {
    return { problem: `${path} has no standard library at ${standardLibrary}` };
  }
  const changeable = [executable, standardLibrary].find(changeableByOthersThanRoot);
  if (changeable !== undefined) {
    return {
      problem: `${changeable} may be changed by users other than root, and every session of the runtime would run what they put there`,
    };
  }
  const pip = join("bin", `pip${version}`);
  const hasPip = existsSync(join(prefix, pip));
  const ownPaths = [join("bin", name), ...(hasPip ? [pip] : []), ...libraryPaths(prefix, version)];
  // Berth binds these as root: each must be inside the install, not reached through a link.
  const outside = ownPaths.find((ownPath) => !staysInside(prefix, ownPath));
  if (outside !== undefined) {
    return { problem: `${join(prefix, outside)} leads outside ${prefix}` };
  }
  // The rest of what sessions load (libpython, pip) and every folder above the install: whoever
  // could change one of those could swap what the sessions run.
  const writable =
    ownPaths.map((ownPath) => join(prefix, ownPath)).find(changeableByOthersThanRoot) ??
    foldersAbove(prefix).find(entriesChangeableByOthersThanRoot);
  if (writable !== undefined) {
    return {
      problem: `${writable} may be changed by users other than root, and every session of the runtime would run what they put there`,
    };
  }
  return { version, prefix, executable, pip: hasPip ? join(prefix, pip) : undefined, ownPaths };
}

/** /root/.pyenv/versions/3.12.1 -> /root/.pyenv/versions, /root/.pyenv, /root, / */
function foldersAbove(prefix: string): string[] {
  const folders: string[] = [];
  for (let folder = dirname(prefix); ; folder = dirname(folder)) {
    folders.push(folder);
    if (folder === dirname(folder)) return folders;
  }
}

function changeableByOthersThanRoot(path: string): boolean {
  const stats = statSync(path);
  return stats.uid !== 0 || (stats.mode & 0o022) !== 0;
}

/** A folder others may write lets them rename root's entries in it, unless it is sticky (/tmp). */
function entriesChangeableByOthersThanRoot(folder: string): boolean {
  const stats = statSync(folder);
  return stats.uid !== 0 || ((stats.mode & 0o022) !== 0 && (stats.mode & 0o1000) === 0);
}

/** A link itself is copied as a name (see makeView); anything else must resolve within prefix. */
function staysInside(prefix: string, ownPath: string): boolean {
  const path = join(prefix, ownPath);
  return lstatSync(path).isSymbolicLink() || realpathSync(path).startsWith(join(prefix, "/"));
}

/** lib/python3.X, lib/libpython3.X.so*, include/python3.X (and lib64/ twins) that exist. */
function libraryPaths(prefix: string, version: string): string[] {
  return ["lib", "lib64", "include"].flatMap((folder) =>
    namesIn(join(prefix, folder))
      .filter((name) => name === `python${version}` || name.startsWith(`libpython${version}.so`))
      .map((name) => join(folder, name)),
  );
}

function namesIn(folder: string): string[] {
  try {
    return readdirSync(folder).sort();
  } catch {
    return [];
  }
}

/**
 * Parses the pythonInterpreters setting, `PYTHON_3_12=/path/to/python3.12,...`, checking each
 * interpreter at once so that a wrong path stops the server before it starts.
 */
export function parsePythonInterpreters(text: string): PythonInstalls | { problem: string } {
  const installs: PythonInstalls = {};
  for (const entry of text.split(",").map((part) => part.trim())) {
    if (entry === "") continue;
    const separator = entry.indexOf("=");
    const runtime = entry.slice(0, Math.max(separator, 0)).trim();
    const path = entry.slice(separator + 1).trim();
    if (separator < 0 || !isPythonRuntime(runtime) || !isAbsolute(path)) {
      return {
        problem: `must be RUNTIME=/absolute/path/to/python3.X entries separated by commas, RUNTIME one of ${pythonRuntimes.join(", ")} (got "${entry}")`,
      };
    }
    if (installs[runtime] !== undefined) return { problem: `names ${runtime} twice` };
    const install = inspectPythonInstall(path, pythonRuntimeVersions[runtime]);
    if ("problem" in install) return { problem: `entry ${runtime}: ${install.problem}` };
    installs[runtime] = install;
  }
  return installs;
}

function isPythonRuntime(name: string): name is PythonRuntime {
  return name in pythonRuntimeVersions;
}

/** Where Berth looks for `python3.X` when pythonInterpreters does not name one. */
export interface PythonSearch {
  /** Berth's own PATH, searched first. */
  path: string | undefined;
  /** pyenv's root when set ($PYENV_ROOT); /root/.pyenv is searched too. */
  pyenvRoot: string | undefined;
}

/**
 * Picks an interpreter for each Python runtime: the configured one, else the first complete
 * install of that version found on PATH, in /usr/local/bin, /usr/bin, /opt/<name>/bin, then in
 * pyenv's versions (newest patch release first). Runtimes with none are left out.
 */
export function findPythonInstalls(
  configured: PythonInstalls,
  search: PythonSearch,
): PythonInstalls {
  const folders = searchFolders(search);
  const installs: PythonInstalls = {};
  for (const runtime of pythonRuntimes) {
    const version = pythonRuntimeVersions[runtime];
    const install = configured[runtime] ?? firstInstall(folders, version);
    if (install !== undefined) installs[runtime] = install;
  }
  return installs;
}

/** The first folder holding a complete python<version>; the rest are not looked at. */
function firstInstall(folders: string[], version: string): PythonInstall | undefined {
  for (const folder of folders) {
    const found = inspectPythonInstall(join(folder, `python${version}`), version);
    if (!("problem" in found)) return found;
  }
  return undefined;
}

function searchFolders(search: PythonSearch): string[] {
  const onPath = (search.path ?? "").split(":").filter((folder) => isAbsolute(folder));
  const pyenvRoots = [search.pyenvRoot, "/root/.pyenv"].filter(
    (root): root is string => root !== undefined && isAbsolute(root),
  );
  const folders = [
    ...onPath,
    "/usr/local/bin",
    "/usr/bin",
    ...subfolders("/opt").map((folder) => join(folder, "bin")),
    ...pyenvRoots.flatMap((root) =>
      subfolders(join(root, "versions"))
        .sort(byVersionDescending)
        .map((folder) => join(folder, "bin")),
    ),
  ];
  return [...new Set(folders)];
}

function subfolders(folder: string): string[] {
  return namesIn(folder).map((name) => join(folder, name));
}

/** 3.12.10 before 3.12.9: pyenv names its folders by full version. */
function byVersionDescending(left: string, right: string): number {
  return basename(right).localeCompare(basename(left), "en", { numeric: true });
}
