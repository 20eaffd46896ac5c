import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { after, describe, it } from "node:test";
import { tarOf, type LayerEntry } from "../../../test/support/oci-images.ts";
import type { ImageRootNeeds } from "../../core/sandbox.ts";
import { ImageStore, type BlobSource } from "./image-store.ts";
import { hostPlatform, sha256Digest, type ImageManifest } from "./manifests.ts";

const workDir = mkdtempSync(join(tmpdir(), "berth-image-store-"));
after(() => {
  rmSync(workDir, { recursive: true, force: true });
});

/** Owned by whoever runs the test, so it passes without root too. */
const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
const ownEntries = (entries: LayerEntry[]) => entries.map((entry) => ({ ...owner, ...entry }));

/** An image built in memory: its manifest, and a blob source that serves its blobs. */
function imageOf(layers: LayerEntry[][], command: string[]) {
  const tars = layers.map((entries) => tarOf(ownEntries(entries)));
  const config = Buffer.from(
    JSON.stringify({
      ...hostPlatform(),
      config: { Entrypoint: command },
      rootfs: { type: "layers", diff_ids: tars.map(sha256Digest) },
    }),
  );
  const blobs = new Map([config, ...tars].map((bytes) => [sha256Digest(bytes), bytes]));
  const descriptor = (mediaType: string, bytes: Buffer) => ({
    mediaType,
    digest: sha256Digest(bytes),
    size: bytes.length,
  });
  const manifest: ImageManifest = {
    config: descriptor("application/vnd.oci.image.config.v1+json", config),
    layers: tars.map((tar) => descriptor("application/vnd.oci.image.layer.v1.tar", tar)),
  };
  const source: BlobSource = {
    shown: `test image ${command.join(" ")}`,
    open: (wanted) => Promise.resolve(Readable.from([blobs.get(wanted.digest) ?? Buffer.alloc(0)])),
  };
  return { digest: sha256Digest(Buffer.from(JSON.stringify(manifest))), manifest, source };
}

function storeIn(name: string, rootNeeds: ImageRootNeeds = { folders: [], files: [] }) {
  return new ImageStore(join(workDir, name), {
    maxImageBytes: 2 ** 30,
    maxImageMetadataBytes: 2 ** 20,
    rootNeeds,
  });
}

const signal = new AbortController().signal;

describe("image store", () => {
  it("makes exactly what the sandbox driver needs in each root, replacing links and wrong types", async () => {
    const store = storeIn("needs", {
      folders: ["proc", "run/driver"],
      files: ["etc/hosts", "etc/resolv.conf"],
    });
    const image = imageOf(
      [
        [
          { path: "etc/", type: "directory" },
          // As in many images: a link to a file the sandbox will not have.
          { path: "etc/resolv.conf", type: "symlink", linkPath: "../run/resolve/stub.conf" },
          { path: "etc/hosts", type: "directory" },
          { path: "proc", content: "a file where a folder must be" },
          { path: "agent", content: "#!/bin/sh\n", mode: 0o755 },
        ],
      ],
      ["/agent"],
    );
    const record = await store.install(image.digest, image.manifest, image.source, signal);
    const root = store.rootPath(record);
    const kind = (path: string) => {
      const found = lstatSync(join(root, path), { throwIfNoEntry: false });
      if (found === undefined) return "missing";
      return found.isDirectory() ? "folder" : found.isFile() ? "file" : "other";
    };
    assert.equal(kind("proc"), "folder");
    assert.equal(kind("run/driver"), "folder");
    assert.equal(kind("etc/hosts"), "file");
    assert.equal(kind("etc/resolv.conf"), "file");
    assert.equal(readFileSync(join(root, "etc/resolv.conf"), "utf8"), "");
    // Every root gets a /tmp, world-writable and sticky when the image has none.
    assert.equal(lstatSync(join(root, "tmp")).mode & 0o7777, 0o1777);
    // Nothing another driver would need: bubblewrap's mount points are not this driver's.
    for (const absent of ["dev", "mnt", "run/berth"]) assert.equal(kind(absent), "missing");
  });

  it("never removes a root that an install is using, and removes unused roots out of sight at once", async () => {
    const store = storeIn("collect");
    // Enough files that removing the root takes a while.
    const files = Array.from({ length: 1000 }, (_, index) => ({
      path: `data/file-${index}`,
      content: `file ${index}`,
    }));
    const layers = [[{ path: "data/", type: "directory" as const }, ...files]];
    for (const order of ["collect first", "install first", "collect first", "install first"]) {
      const first = imageOf(layers, ["/first", order]);
      const firstRecord = await store.install(first.digest, first.manifest, first.source, signal);
      // The same layers under another config: it shares the first image's root.
      const second = imageOf(layers, ["/second", order]);
      let installing: Promise<unknown> | undefined;
      if (order === "install first") {
        installing = store.install(second.digest, second.manifest, second.source, signal);
        await new Promise((resolve) => setImmediate(resolve));
      }
      // Only the first image is unwanted; the second, once recorded, keeps the shared root.
      const collecting = store.collectGarbage(new Set([second.digest]), 0, Date.now() + 1000);
      if (order === "collect first") {
        // Decided and moved out of roots/ before collectGarbage returned: none finds it half gone.
        assert.equal(existsSync(store.rootPath(firstRecord)), false);
      }
      installing ??= store.install(second.digest, second.manifest, second.source, signal);
      const [removed] = await Promise.all([collecting, installing]);
      assert.deepEqual(removed, [first.digest]);
      const record = store.record(second.digest);
      assert.ok(record !== undefined, `${order}: the second image is installed`);
      assert.equal(readdirSync(join(store.rootPath(record), "data")).length, files.length, order);
      assert.deepEqual(await store.collectGarbage(new Set(), 0, Date.now() + 1000), [
        second.digest,
      ]);
      assert.equal(existsSync(store.rootPath(record)), false);
    }
    // What collection set aside is gone once it resolves, not left in staging.
    assert.deepEqual(readdirSync(join(workDir, "collect", "staging")), []);
    assert.deepEqual(readdirSync(join(workDir, "collect", "roots")), []);
  });
});
