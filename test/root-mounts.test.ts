// berth-mount, the root server that makes sessions' mounts, through its client (RootMounts) and
// raw requests: every operation must be named, and no path may lead outside the folder it was
// started with, nor through a symbolic link, such as one a sandbox made in a folder it owns.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { chmodSync, chownSync, mkdirSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { basename, join } from "node:path";
import { after, before, describe, it } from "node:test";
import { isMountPoint } from "../src/adapters/host/mount-table.ts";
import { encodeEntries, encodeFrame } from "../src/adapters/host/root-helper.ts";
import { RootMounts } from "../src/adapters/host/root-mounts.ts";
import { makeDataDir, removeDir } from "./support/berth.ts";

const notRoot =
  process.getuid?.() === 0 ? false : "berth-mount mounts as root: run this file as root (CI does)";

/** A uid no one uses, standing for a sandbox's. */
const sandboxUid = 3_999_999;

/** One raw request to berth-mount's socket; its answer's frame type and message. */
async function rawRequest(socketPath: string, entries: string[]) {
  const socket = connect(socketPath);
  socket.end(encodeFrame("m", encodeEntries(entries)));
  const chunks: Buffer[] = [];
  socket.on("data", (chunk: Buffer) => chunks.push(chunk));
  await once(socket, "close");
  const answer = Buffer.concat(chunks);
  return { type: answer.toString("latin1", 0, 1), message: answer.toString("utf8", 5) };
}

/** An ext4 image of 8 MiB at `path`. */
function makeImage(path: string): string {
  writeFileSync(path, "");
  execFileSync("truncate", ["-s", "8M", path]);
  execFileSync("mkfs.ext4", ["-q", "-F", path]);
  return path;
}

/** Runs `command` as the sandbox's uid, as code inside a session would. */
function asSandbox(command: string[]): void {
  const ids = String(sandboxUid);
  execFileSync("setpriv", ["--reuid", ids, "--regid", ids, "--clear-groups", ...command]);
}

describe("berth-mount", { skip: notRoot }, () => {
  let data = "";
  let outside = "";
  let socketPath = "";
  let mounts: RootMounts | undefined;
  const helper = (): RootMounts => {
    assert.ok(mounts);
    return mounts;
  };

  before(async () => {
    data = makeDataDir();
    outside = makeDataDir();
    // As Berth's data directory: root's, others may pass through to folders of their own.
    chmodSync(data, 0o711);
    socketPath = join(data, "mount-helper.sock");
    mounts = await RootMounts.start(socketPath, data);
  });
  after(async () => {
    await mounts?.close();
    removeDir(data);
    removeDir(outside);
  });

  it("makes and removes mounts inside its folder", async () => {
    const shared = join(data, "shared");
    const volume = join(data, "volume");
    mkdirSync(shared);
    mkdirSync(volume);
    await helper().shareMountPoint(shared);
    assert.ok(isMountPoint(shared));
    await helper().mountImage(makeImage(join(data, "volume.img")), volume);
    assert.ok(isMountPoint(volume));
    for (const target of [volume, shared]) await helper().unmount(target);
    assert.ok(!isMountPoint(shared) && !isMountPoint(volume));
  });

  it("refuses a request that names no operation, an unknown one, or other keys than its own", async () => {
    const target = join(data, "named");
    mkdirSync(target);
    const answers = await Promise.all(
      [
        [`target=${target}`],
        ["op=mount-anything", `target=${target}`],
        ["op=share", `target=${target}`, `image=${join(data, "volume.img")}`],
        ["op=share", `target=${target}`, `target=${target}`],
        ["op=loop-image", `target=${target}`],
      ].map((entries) => rawRequest(socketPath, entries)),
    );
    assert.deepEqual(answers, [
      {
        type: "f",
        message:
          "bad request: no op named (want op=loop-image, share, idmap-bind, image-root or unmount)",
      },
      {
        type: "f",
        message:
          "bad request: unknown op 'mount-anything' (want loop-image, share, idmap-bind, image-root or unmount)",
      },
      { type: "f", message: "bad request: op=share takes target, not 'image'" },
      { type: "f", message: "bad request: target is given twice" },
      { type: "f", message: "bad request: op=loop-image needs image and target; image is missing" },
    ]);
    assert.ok(!isMountPoint(target), "nothing was mounted");
  });

  it("refuses targets and images outside its folder", async () => {
    const elsewhere = join(outside, "elsewhere");
    mkdirSync(elsewhere);
    const image = makeImage(join(outside, "elsewhere.img"));
    const target = join(data, "for-outside-image");
    mkdirSync(target);
    await assert.rejects(helper().shareMountPoint(elsewhere), {
      message: `berth-mount: target ${elsewhere} is outside ${data}, the folder mounts are confined to`,
    });
    await assert.rejects(helper().mountImage(image, target), {
      message: `berth-mount: image ${image} is outside ${data}, the folder mounts are confined to`,
    });
    const climbing = `${data}/../${basename(outside)}/elsewhere`;
    await assert.rejects(helper().shareMountPoint(climbing), {
      message: `berth-mount: bad request: target ${climbing} has a '..' component`,
    });
    assert.ok(!isMountPoint(elsewhere) && !isMountPoint(target), "nothing was mounted");
  });

  it("refuses paths through a symbolic link a sandbox made in a folder it owns", async () => {
    // The folder outside, with something mounted on it that must stay.
    const elsewhere = join(outside, "mounted");
    mkdirSync(elsewhere);
    execFileSync("mount", ["-t", "tmpfs", "kept", elsewhere]);
    const inside = join(data, "inside");
    mkdirSync(inside);
    const image = makeImage(join(data, "linked.img"));
    // A folder of the sandbox's own, inside the data directory, as its storage is.
    const owned = join(data, "owned");
    mkdirSync(owned);
    chownSync(owned, sandboxUid, sandboxUid);
    asSandbox(["ln", "-s", elsewhere, join(owned, "escape")]);
    asSandbox(["ln", "-s", "../inside", join(owned, "inside")]);
    asSandbox(["ln", "-s", image, join(owned, "image")]);

    const escape = join(owned, "escape");
    const throughLink = (op: string, key: string, path: string) => ({
      message: `berth-mount: op=${op}: ${key} ${path} is reached through a symbolic link, which root does not follow`,
    });
    // A link to a folder inside is refused too: root follows no link, wherever it leads.
    const linkInside = join(owned, "inside");
    await assert.rejects(
      helper().shareMountPoint(linkInside),
      throughLink("share", "target", linkInside),
    );
    await assert.rejects(helper().shareMountPoint(escape), throughLink("share", "target", escape));
    const deeper = join(escape, "deeper");
    await assert.rejects(helper().shareMountPoint(deeper), throughLink("share", "target", deeper));
    const linkedImage = join(owned, "image");
    await assert.rejects(
      helper().mountImage(linkedImage, inside),
      throughLink("loop-image", "image", linkedImage),
    );
    await assert.rejects(
      helper().mountImage(image, escape),
      throughLink("loop-image", "target", escape),
    );
    await assert.rejects(
      helper().idmapMount(escape, inside, process.pid),
      throughLink("idmap-bind", "source", escape),
    );
    await assert.rejects(helper().unmount(escape), {
      message: `berth-mount: op=unmount: target ${escape} is a symbolic link, which root does not follow`,
    });
    assert.ok(isMountPoint(elsewhere), "the mount outside is still there");
    assert.ok(!isMountPoint(inside), "nothing was mounted inside");
    execFileSync("umount", [elsewhere]);
  });
});
