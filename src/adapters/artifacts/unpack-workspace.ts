import { lstatSync, mkdirSync, rmSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, rm } from "node:fs/promises";
import { join } from "node:path";

/** The unprivileged user that unpacks archives: it cannot create device nodes or set owners. */
export const unpackUid = 65534;

/**
 * Whether Berth runs as root, as it does in production: only then can it unpack as another user
 * and seal trees as root's. Unprivileged (the unit suite, on test-only parts), it has no one to
 * protect its files from but itself, and unpacks and keeps them as its own user.
 */
export const berthIsRoot = process.getuid?.() === 0;

/**
 * A private place to unpack one archive: `<parent>/.unpacking/<random>/`, root's and 0711 (the
 * unpacking user may pass through but not list), holding `tree/`, the one folder the unpacking
 * user may write. Other users cannot write there, and other processes that happen to run as
 * the same uid cannot find it. The finished tree is sealed (see sealTree) and renamed out.
 */
export class UnpackWorkspace {
  /** Root's own folder for what only root writes (a copy of the archive). */
  readonly dir: string;
  /** Where the unpacking user unpacks. */
  readonly tree: string;

  private constructor(dir: string) {
    this.dir = dir;
    this.tree = join(dir, "tree");
  }

  static async create(parent: string): Promise<UnpackWorkspace> {
    const area = unpackingArea(parent);
    await mkdir(area, { recursive: true, mode: 0o711 });
    requireRootsFolder(area);
    await chmod(area, 0o711);
    const workspace = new UnpackWorkspace(await mkdtemp(join(area, "u-")));
    await chmod(workspace.dir, 0o711);
    await mkdir(workspace.tree, { mode: 0o700 });
    if (berthIsRoot) await chown(workspace.tree, unpackUid, unpackUid);
    return workspace;
  }

  /** Removes the leftovers of unpacks a crash cut short; only at start, when none runs. */
  static clearLeftovers(parent: string): void {
    mkdirSync(parent, { recursive: true, mode: 0o755 });
    rmSync(unpackingArea(parent), { recursive: true, force: true });
    mkdirSync(unpackingArea(parent), { mode: 0o711 });
  }

  /** Removes the workspace and whatever is still in it (everything, after a failure). */
  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }
}

function unpackingArea(parent: string): string {
  // A leading dot: no bucket name can start with one, so the area is never an artifact.
  return join(parent, ".unpacking");
}

function requireRootsFolder(path: string): void {
  const stats = lstatSync(path);
  if (!stats.isDirectory() || stats.uid !== (process.getuid?.() ?? 0)) {
    throw new Error(`${path} must be a folder of root's (it is where archives are unpacked)`);
  }
}
