import { once } from "node:events";
import { resolve } from "node:path";
import type { SandboxIdentity } from "../../core/sandbox.ts";
import { encodeEntries, encodeFrame, RootHelper } from "./root-helper.ts";

/** An image sandbox's root: see RootMounts.imageRoot. */
export interface ImageRootRequest {
  root: string;
  inside: SandboxIdentity;
  hostId: number;
  scratch: string;
  sizeBytes: number;
  target: string;
}

/**
 * The mounts Berth makes as root, through native/berth-mount (its header comment has the
 * protocol): one server per Berth, one connection per mount, no process to spawn. Every path it
 * is given must lie inside the folder it was started with (Berth's data directory), and none may
 * be reached through a symbolic link: it refuses the rest. In adapters/host so that every adapter
 * that mounts (the bubblewrap driver, loop volumes) uses the same one without borrowing another
 * adapter's.
 */
export class RootMounts {
  private readonly helper: RootHelper;

  private constructor(helper: RootHelper) {
    this.helper = helper;
  }

  /** Starts berth-mount listening on `socketPath`, its mounts confined to `confineTo`. */
  static async start(socketPath: string, confineTo: string): Promise<RootMounts> {
    const folder = resolve(confineTo);
    return new RootMounts(
      await RootHelper.start("berth-mount", ["serve", socketPath, folder], socketPath),
    );
  }

  /** Mounts the ext4 image `image` on `target` through a loop device that detaches itself at
   * unmount. */
  mountImage(image: string, target: string): Promise<void> {
    return this.request("loop-image", { image, target });
  }

  /** Unmounts `target`, lazily if it is busy; one not mounted is done already. */
  unmount(target: string): Promise<void> {
    return this.request("unmount", { target });
  }

  /**
   * Makes `directory` a shared mount point: a sandbox whose mount namespace is copied from the
   * host's after this receives what is mounted below it later (its volumes).
   */
  shareMountPoint(directory: string): Promise<void> {
    return this.request("share", { target: directory });
  }

  /**
   * Mounts a copy of the mount at `source` on `target`, its ids mapped through the user namespace
   * of process `usernsPid` (a sandbox's first process).
   */
  idmapMount(source: string, target: string, usernsPid: number): Promise<void> {
    return this.request("idmap-bind", { source, target, "userns-pid": String(usernsPid) });
  }

  /**
   * Mounts an image sandbox's root on `target`: the unpacked image at `root`, read-only, its
   * `inside` user's files owned by `hostId`, under a writable tmpfs layer of `sizeBytes` at
   * `scratch` (see image_root in native/berth-mount.c).
   */
  imageRoot(request: ImageRootRequest): Promise<void> {
    return this.request("image-root", {
      root: request.root,
      ids: `${request.inside.uid}:${request.inside.gid}:${request.hostId}`,
      scratch: request.scratch,
      size: String(request.sizeBytes),
      target: request.target,
    });
  }

  close(): Promise<void> {
    return this.helper.close();
  }

  /** Sends one operation with its keys; resolves when done, rejects with berth-mount's reason. */
  private async request(op: string, keys: Record<string, string>): Promise<void> {
    const entries = [`op=${op}`, ...Object.entries(keys).map(([key, value]) => `${key}=${value}`)];
    const socket = await this.helper.connect();
    socket.end(encodeFrame("m", encodeEntries(entries)));
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    await once(socket, "close");
    const answer = Buffer.concat(chunks);
    // One frame: 'k' (done) or 'f' and what was refused or failed.
    if (answer.length === 5 && answer.toString("latin1", 0, 1) === "k") return;
    const message = answer.subarray(5).toString("utf8");
    throw new Error(`berth-mount: ${message || "no answer"}`);
  }
}
