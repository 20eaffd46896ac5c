import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import { waitFor } from "./agents.ts";
import { freePort } from "./ports.ts";

/** One member of a hand-made layer: anything a real tar can hold, including what should be refused. */
export interface LayerEntry {
  path: string;
  type?: "file" | "directory" | "symlink" | "hardlink" | "char";
  content?: string | Buffer;
  mode?: number;
  uid?: number;
  gid?: number;
  linkPath?: string;
}

/** A ustar archive of `entries`, written byte by byte (so tests can make hostile ones). */
export function tarOf(entries: LayerEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const entry of entries) {
    const content = Buffer.from(entry.content ?? "");
    const type = entry.type ?? "file";
    const header = Buffer.alloc(512);
    header.write(entry.path, 0, 100, "utf8");
    const octal = (value: number, offset: number, length: number) => {
      header.write(`${value.toString(8).padStart(length - 1, "0")}\0`, offset, length, "latin1");
    };
    octal(entry.mode ?? (type === "directory" ? 0o755 : 0o644), 100, 8);
    octal(entry.uid ?? 0, 108, 8);
    octal(entry.gid ?? 0, 116, 8);
    octal(type === "file" ? content.length : 0, 124, 12);
    octal(1_700_000_000, 136, 12);
    header.write(
      { file: "0", directory: "5", symlink: "2", hardlink: "1", char: "3" }[type],
      156,
      1,
      "latin1",
    );
    header.write(entry.linkPath ?? "", 157, 100, "utf8");
    header.write("ustar\u000000", 257, 8, "latin1");
    header.fill(0x20, 148, 156);
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
    blocks.push(header);
    if (type === "file") {
      blocks.push(content, Buffer.alloc((512 - (content.length % 512)) % 512));
    }
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

/** A layer tar of a folder, made by GNU tar (numeric owners, as image builders do). */
export function tarOfFolder(folder: string): Buffer {
  return execFileSync("tar", ["-C", folder, "--numeric-owner", "-cf", "-", "."], {
    maxBuffer: 1 << 30,
  });
}

export interface ImageConfig {
  Entrypoint?: string[];
  Cmd?: string[];
  Env?: string[];
  WorkingDir?: string;
  User?: string;
}

const sha256 = (bytes: Buffer) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** An OCI image layout folder, written blob by blob, that skopeo can push. */
export class OciLayout {
  readonly dir: string;
  private readonly manifests: Record<string, unknown>[] = [];

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(join(dir, "blobs", "sha256"), { recursive: true });
    writeFileSync(join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  }

  blob(bytes: Buffer, mediaType: string): { mediaType: string; digest: string; size: number } {
    const digest = sha256(bytes);
    writeFileSync(join(this.dir, "blobs", "sha256", digest.slice(7)), bytes);
    return { mediaType, digest, size: bytes.length };
  }

  /** Adds an image of `layers` (uncompressed tars, gzipped here) and returns its manifest. */
  image(
    layers: Buffer[],
    config: ImageConfig,
    platform = { os: "linux", architecture: "amd64" },
  ): { mediaType: string; digest: string; size: number; platform: typeof platform } {
    const layerDescriptors = layers.map((tar) =>
      this.blob(gzipSync(tar, { level: 1 }), "application/vnd.oci.image.layer.v1.tar+gzip"),
    );
    const configBlob = this.blob(
      Buffer.from(
        JSON.stringify({
          ...platform,
          config,
          rootfs: { type: "layers", diff_ids: layers.map(sha256) },
        }),
      ),
      "application/vnd.oci.image.config.v1+json",
    );
    const manifest = this.blob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: configBlob,
          layers: layerDescriptors,
        }),
      ),
      "application/vnd.oci.image.manifest.v1+json",
    );
    return { ...manifest, platform };
  }

  /** Adds an index of several platforms' manifests. */
  index(manifests: { mediaType: string; digest: string; size: number; platform: unknown }[]) {
    return this.blob(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: "application/vnd.oci.image.index.v1+json",
          manifests,
        }),
      ),
      "application/vnd.oci.image.index.v1+json",
    );
  }

  /** Names a manifest or index `tag` in the layout's index.json. */
  tag(descriptor: { mediaType: string; digest: string; size: number }, tag: string): void {
    this.manifests.push({
      mediaType: descriptor.mediaType,
      digest: descriptor.digest,
      size: descriptor.size,
      annotations: { "org.opencontainers.image.ref.name": tag },
    });
    writeFileSync(
      join(this.dir, "index.json"),
      JSON.stringify({ schemaVersion: 2, manifests: this.manifests }),
    );
  }
}

/** Pushes `tag` of a layout to a registry with skopeo (all platforms of an index). */
export function push(
  layout: OciLayout,
  tag: string,
  destination: string,
  credentials?: string,
): void {
  execFileSync(
    "skopeo",
    [
      "copy",
      "--all",
      "--quiet",
      "--dest-tls-verify=false",
      ...(credentials === undefined ? [] : ["--dest-creds", credentials]),
      `oci:${layout.dir}:${tag}`,
      `docker://${destination}`,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
}

export interface TestRegistry {
  /** host:port, as containerUris name it. */
  address: string;
  storageDir: string;
  stop(): Promise<void>;
}

/**
 * A real registry (Debian's docker-registry) on a free loopback port with its own storage;
 * `htpasswd` turns on basic auth with that file.
 */
export async function startRegistry(options: { htpasswd?: string } = {}): Promise<TestRegistry> {
  const dir = mkdtempSync(join(tmpdir(), "berth-registry-"));
  const port = await freePort();
  const auth =
    options.htpasswd === undefined
      ? ""
      : `auth:\n  htpasswd:\n    realm: berth-test\n    path: ${options.htpasswd}\n`;
  writeFileSync(
    join(dir, "config.yml"),
    `version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: ${dir}/data\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:${port}\n${auth}`,
  );
  const registry = spawn("docker-registry", ["serve", join(dir, "config.yml")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const errors: string[] = [];
  registry.stderr.on("data", (chunk: Buffer) => errors.push(chunk.toString("utf8")));
  const exited = once(registry, "exit");
  await waitFor(`the registry on port ${port}`, async () => {
    if (registry.exitCode !== null) throw new Error(`docker-registry exited: ${errors.join("")}`);
    const answer = await fetch(`http://127.0.0.1:${port}/v2/`).catch(() => undefined);
    return answer === undefined ? undefined : true;
  });
  return {
    address: `127.0.0.1:${port}`,
    storageDir: join(dir, "data"),
    stop: async () => {
      registry.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An htpasswd file (bcrypt, as the registry requires) for one user. */
export function htpasswdFile(dir: string, user: string, password: string): string {
  const path = join(dir, "htpasswd");
  execFileSync("htpasswd", ["-Bbc", path, user, password], { stdio: "ignore" });
  return path;
}

/** The registry's own copy of a blob, to corrupt in tests. */
export function registryBlobPath(registry: TestRegistry, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return join(registry.storageDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
}

/**
 * A root folder with Node (this process's binary and the libraries it links), busybox as
 * /bin/sh, an /etc/passwd with `agent` (uid 1234), and the probe agent at /app/main.js.
 */
export function nodeImageRoot(probeSource: string): string {
  const root = mkdtempSync(join(tmpdir(), "berth-image-root-"));
  chmodSync(root, 0o755); // the tar's "./" entry is the image's root folder
  const add = (source: string, target: string) => {
    mkdirSync(dirname(join(root, target)), { recursive: true });
    copyFileSync(source, join(root, target));
  };
  add(process.execPath, "usr/local/bin/node");
  for (const line of execFileSync("ldd", [process.execPath], { encoding: "utf8" }).split("\n")) {
    const library = /(\/\S+) \(0x/.exec(line)?.[1];
    if (library !== undefined) add(library, library.slice(1));
  }
  add("/usr/bin/busybox", "bin/busybox");
  for (const applet of ["sh", "echo", "cat", "id", "ls", "pwd", "sleep", "env", "touch"]) {
    symlinkSync("busybox", join(root, "bin", applet));
  }
  mkdirSync(join(root, "etc"));
  writeFileSync(
    join(root, "etc/passwd"),
    "root:x:0:0:root:/root:/bin/sh\nagent:x:1234:1234:agent:/home/agent:/bin/sh\n",
  );
  writeFileSync(join(root, "etc/group"), "root:x:0:\nagent:x:1234:\n");
  mkdirSync(join(root, "home/agent"), { recursive: true });
  execFileSync("chown", ["1234:1234", join(root, "home/agent")]);
  add(join(probeSource, "main.js"), "app/main.js");
  return root;
}

export const nodeImageConfig: ImageConfig = {
  Entrypoint: ["/usr/local/bin/node"],
  Cmd: ["/app/main.js"],
  Env: ["PATH=/usr/local/bin:/bin", "IMAGE_GREETING=hello from the image"],
  WorkingDir: "/app",
  User: "agent",
};
