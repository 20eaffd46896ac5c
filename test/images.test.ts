import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { after, before, describe, it } from "node:test";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  DeleteAgentRuntimeCommand,
  GetAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { berthBin } from "./support/berth-process.ts";
import { agentSources, waitFor } from "./support/agents.ts";
import { hostSuite, quickLifecycleArgs, useTestBerth } from "./support/berth.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { freePort } from "./support/ports.ts";
import {
  htpasswdFile,
  nodeImageConfig,
  nodeImageRoot,
  OciLayout,
  push,
  registryBlobPath,
  startRegistry,
  tarOf,
  tarOfFolder,
  type TestRegistry,
} from "./support/oci-images.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("images (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const workDir = mkdtempSync(join(tmpdir(), "berth-images-test-"));
  const credentialsFile = join(workDir, "registry-credentials.json");
  let registry: TestRegistry;
  let privateRegistry: TestRegistry;
  let layout: OciLayout;
  /** The node image's layer (a tar), reused by the images built on it. */
  let nodeLayer: Buffer;

  const harness = useTestBerth([
    ...quickLifecycleArgs,
    "--sandbox-outbound",
    "none",
    "--session-storage-bytes",
    String(64 * 2 ** 20),
    "--registry-credentials-file",
    credentialsFile,
    "--image-retention-seconds",
    "0",
    // The test registries listen on loopback, which Berth refuses unless told otherwise.
    "--registry-private-hosts",
    "127.0.0.1",
  ]);

  before(async () => {
    writeFileSync(credentialsFile, JSON.stringify({ auths: {} }));
    registry = await startRegistry();
    privateRegistry = await startRegistry({
      htpasswd: htpasswdFile(workDir, "puller", "s3cret-pass"),
    });
    layout = new OciLayout(join(workDir, "layout"));
    const root = nodeImageRoot(agentSources.probe);
    nodeLayer = tarOfFolder(root);
    rmSync(root, { recursive: true, force: true });
    layout.tag(layout.image([nodeLayer], nodeImageConfig), "agent");
    push(layout, "agent", `${registry.address}/agent:1`);
  });

  after(async () => {
    await registry.stop();
    await privateRegistry.stop();
    rmSync(workDir, { recursive: true, force: true });
  });

  function containerRuntime(containerUri: string, expectedStatus = "READY", extra = {}) {
    return createRuntime(
      harness(),
      "image",
      { agentRuntimeArtifact: { containerConfiguration: { containerUri } }, ...extra },
      "main.js",
      expectedStatus,
    );
  }

  describe("container images", () => {
    it("pulls an image anonymously and runs a session on it: the image's user, env, working dir", async () => {
      const { data } = harness();
      const runtime = await containerRuntime(`${registry.address}/agent:1`);
      const session = newSessionId("image");
      const whoami = await invokeProbe(data, runtime.arn, session, { action: "whoami" });
      assert.equal(whoami["uid"], 1234);
      assert.equal(whoami["gid"], 1234);
      assert.equal(whoami["cwd"], "/app");
      const env = whoami["env"] as Record<string, string>;
      assert.equal(env["IMAGE_GREETING"], "hello from the image");
      assert.equal(env["HOME"], "/home/agent");
      assert.equal(env["PORT"], "8080");
      // The root is the image's, not the host's.
      const listed = await invokeProbe(data, runtime.arn, session, {
        action: "list",
        path: "/usr/bin",
      });
      assert.deepEqual(listed, { error: "ENOENT" });
      const command = await runCommand(
        data,
        runtime.arn,
        session,
        "id -u; pwd; echo $IMAGE_GREETING",
      );
      assert.equal(command.stdout, "1234\n/app\nhello from the image\n");
      assert.equal(command.exitCode, 0);
    });

    it("runs invocations, commands and session storage on an image exactly like code sessions", async () => {
      const { data } = harness();
      const runtime = await containerRuntime(`${registry.address}/agent:1`, "READY", {
        filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
      });
      const session = newSessionId("image-storage");
      const written = await runCommand(
        data,
        runtime.arn,
        session,
        "echo kept > /mnt/workspace/note && ls -ln /mnt/workspace && echo scratch > /home/agent/changed && cat /home/agent/changed",
      );
      assert.equal(written.exitCode, 0, written.stderr);
      assert.match(written.stdout, /1234 +1234 .* note/);
      assert.match(written.stdout, /scratch/); // the root is writable, privately
      await data.send(
        new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: session }),
      );
      const again = await invokeProbe(data, runtime.arn, session, {
        action: "read",
        path: "/mnt/workspace/note",
      });
      assert.deepEqual(again, { ok: "kept\n" });
      // The writable layer went with the sandbox; the cached image was never changed.
      const changed = await invokeProbe(data, runtime.arn, session, {
        action: "read",
        path: "/home/agent/changed",
      });
      assert.deepEqual(changed, { error: "ENOENT" });
      const other = await runCommand(
        data,
        runtime.arn,
        newSessionId("image-other"),
        "ls /mnt/workspace | wc -l",
      );
      assert.equal(other.stdout.trim(), "0");
    });

    it("shares one unpacked root between images with the same layers, each with its own config", async () => {
      // A session runs on agent:1's root while an image with the same layers (another Env, and a
      // WorkingDir no layer has) is pulled: the root it runs on must stay as it is.
      const { data } = harness();
      const first = await containerRuntime(`${registry.address}/agent:1`);
      const running = newSessionId("shared-root");
      assert.equal((await runCommand(data, first.arn, running, "true")).exitCode, 0);
      const variant = new OciLayout(join(workDir, "variant"));
      const config = {
        ...nodeImageConfig,
        Env: ["PATH=/usr/local/bin:/bin", "IMAGE_GREETING=from the variant"],
        WorkingDir: "/srv/work",
      };
      variant.tag(variant.image([nodeLayer], config), "v");
      push(variant, "v", `${registry.address}/variant:1`);
      const runtime = await containerRuntime(`${registry.address}/variant:1`);
      const whoami = await invokeProbe(data, runtime.arn, newSessionId("variant"), {
        action: "whoami",
      });
      assert.equal(whoami["cwd"], "/srv/work");
      assert.equal((whoami["env"] as Record<string, string>)["IMAGE_GREETING"], "from the variant");
      // Files the session had not looked at yet, so no cached lookup hides a changed root.
      const still = await runCommand(data, first.arn, running, "cat /etc/group; ls /home");
      assert.equal(still.stdout, "root:x:0:\nagent:x:1234:\nagent\n", still.stderr);
    });

    it("pulls by digest and through a multi-platform index, choosing this host's platform", async () => {
      const multi = new OciLayout(join(workDir, "multi"));
      const amd64 = multi.image([nodeLayer], nodeImageConfig);
      const arm64 = multi.image([tarOf([{ path: "arm-only", content: "x" }])], nodeImageConfig, {
        os: "linux",
        architecture: "arm64",
      });
      multi.tag(multi.index([arm64, amd64]), "multi");
      push(multi, "multi", `${registry.address}/multi:1`);
      const { data } = harness();
      const fromIndex = await containerRuntime(`${registry.address}/multi:1`);
      const whoami = await invokeProbe(data, fromIndex.arn, newSessionId("index"), {
        action: "whoami",
      });
      assert.equal(whoami["uid"], 1234);
      await containerRuntime(`${registry.address}/multi@${amd64.digest}`);
      const armOnly = new OciLayout(join(workDir, "arm"));
      const armImage = armOnly.image(
        [tarOf([{ path: "arm-only", content: "x" }])],
        nodeImageConfig,
        {
          os: "linux",
          architecture: "arm64",
        },
      );
      armOnly.tag(armOnly.index([armImage]), "arm");
      push(armOnly, "arm", `${registry.address}/arm:1`);
      const wrong = await containerRuntime(`${registry.address}/arm:1`, "CREATE_FAILED");
      assert.match(
        wrong.failureReason ?? "",
        /Wrong platform: .* has no image for linux\/amd64 \(it has linux\/arm64\)/,
      );
    });

    it("needs credentials for a private registry and pulls with the configured ones", async () => {
      push(layout, "agent", `${privateRegistry.address}/private:1`, "puller:s3cret-pass");
      const uri = `${privateRegistry.address}/private:1`;
      const refused = await containerRuntime(uri, "CREATE_FAILED");
      assert.match(refused.failureReason ?? "", /Unauthorized: .* needs credentials; add them for/);
      const auths = (entry: Record<string, string>) =>
        JSON.stringify({ auths: { [privateRegistry.address]: entry } });
      writeFileSync(credentialsFile, auths({ username: "puller", password: "wrong" }));
      const wrong = await containerRuntime(uri, "CREATE_FAILED");
      assert.match(wrong.failureReason ?? "", /refused the configured credentials/);
      writeFileSync(
        credentialsFile,
        auths({ auth: Buffer.from("puller:s3cret-pass").toString("base64") }),
      );
      const runtime = await containerRuntime(uri);
      const whoami = await invokeProbe(harness().data, runtime.arn, newSessionId("private"), {
        action: "whoami",
      });
      assert.equal(whoami["cwd"], "/app");
    });

    it("fails a version whose image is missing, unreachable, or does not match its digests", async () => {
      const missing = await containerRuntime(
        `${registry.address}/agent:no-such-tag`,
        "CREATE_FAILED",
      );
      assert.match(missing.failureReason ?? "", /Image not found: .*agent has no no-such-tag/);
      const closedPort = await freePort();
      const unreachable = await containerRuntime(
        `127.0.0.1:${closedPort}/agent:1`,
        "CREATE_FAILED",
      );
      assert.match(
        unreachable.failureReason ?? "",
        new RegExp(`Cannot reach the registry 127.0.0.1:${closedPort}: ECONNREFUSED`),
      );
      // A registry whose copy of a layer was changed: Berth refuses what it sends.
      const tampered = new OciLayout(join(workDir, "tampered"));
      const image = tampered.image(
        [nodeLayer, tarOf([{ path: "file", content: "original" }])],
        nodeImageConfig,
      );
      tampered.tag(image, "t");
      push(tampered, "t", `${registry.address}/tampered:1`);
      const layers = layerDigests(tampered, image.digest);
      writeFileSync(
        registryBlobPath(registry, layers[1] ?? ""),
        gzipSync(tarOf([{ path: "file", content: "evil!!!!" }])),
      );
      const bad = await containerRuntime(`${registry.address}/tampered:1`, "CREATE_FAILED");
      assert.match(
        bad.failureReason ?? "",
        /Digest mismatch: layer sha256:[0-9a-f]+ of .* arrived as sha256:/,
      );
    });

    it("applies whiteouts and opaque folders, and keeps every layer entry inside the image", async () => {
      const marker = `berth-escape-${process.pid}`;
      const lower = tarOf([
        { path: "data/", type: "directory" },
        { path: "data/a", content: "a" },
        { path: "data/b", content: "b" },
        { path: "opq/", type: "directory" },
        { path: "opq/x", content: "x" },
        { path: "up", type: "symlink", linkPath: "../../../../tmp" },
        { path: "device", type: "char" },
      ]);
      const upper = tarOf([
        { path: "data/.wh.a", content: "" },
        { path: "opq/", type: "directory" },
        { path: "opq/.wh..wh..opq", content: "" },
        { path: "opq/y", content: "y" },
        // Through a symlink to "../../../../tmp": lands in the image's /tmp, not the host's.
        { path: `up/${marker}`, content: "inside" },
      ]);
      const layered = new OciLayout(join(workDir, "layered"));
      layered.tag(layered.image([nodeLayer, lower, upper], nodeImageConfig), "l");
      push(layered, "l", `${registry.address}/layered:1`);
      const runtime = await containerRuntime(`${registry.address}/layered:1`);
      const command = await runCommand(
        harness().data,
        runtime.arn,
        newSessionId("layers"),
        `ls /data /opq; cat /tmp/${marker}; ls /device 2>&1`,
      );
      assert.equal(
        command.stdout,
        "/data:\nb\n\n/opq:\ny\ninsidels: /device: No such file or directory\n",
      );
      assert.equal(existsSync(`/tmp/${marker}`), false);

      const climbing = new OciLayout(join(workDir, "climbing"));
      const escape = tarOf([{ path: `../../${marker}`, content: "x" }]);
      climbing.tag(climbing.image([nodeLayer, escape], nodeImageConfig), "c");
      push(climbing, "c", `${registry.address}/climbing:1`);
      const refused = await containerRuntime(`${registry.address}/climbing:1`, "CREATE_FAILED");
      assert.match(
        refused.failureReason ?? "",
        /layer entry \.\.\/\.\.\/berth-escape-\d+ points outside the image/,
      );
      assert.equal(existsSync(`/tmp/${marker}`), false);
    });

    it("reuses cached images, loads images from an OCI archive, and collects unused ones", async () => {
      const { control, berth } = harness();
      const cached = new OciLayout(join(workDir, "cached"));
      const image = cached.image(
        [nodeLayer, tarOf([{ path: "cached-file", content: "c" }])],
        nodeImageConfig,
      );
      cached.tag(image, "c");
      push(cached, "c", `${registry.address}/cached:1`);
      const first = await containerRuntime(`${registry.address}/cached:1`);
      // Break the registry's copy of every layer: pulling again must not need them.
      for (const digest of layerDigests(cached, image.digest))
        writeFileSync(registryBlobPath(registry, digest), "broken");
      const second = await containerRuntime(`${registry.address}/cached:1`);

      // Offline: the first image as an OCI archive, loaded under a name of its own.
      const archive = join(workDir, "agent.tar");
      execFileSync("skopeo", [
        "copy",
        "--quiet",
        `oci:${layout.dir}:agent`,
        `oci-archive:${archive}`,
      ]);
      const loaded = await cli(["images", "load", archive, "--name", "berth.local/offline:1"]);
      assert.equal(loaded.code, 0, loaded.stderr);
      assert.match(loaded.stdout, /^Loaded berth.local\/offline:1 \(sha256:/);
      const offline = await containerRuntime("berth.local/offline:1");
      const whoami = await invokeProbe(harness().data, offline.arn, newSessionId("offline"), {
        action: "whoami",
      });
      assert.equal(whoami["uid"], 1234);
      const listed = await cli(["images", "list", "--json"]);
      const images = (JSON.parse(listed.stdout) as { images: { names: string[] }[] }).images;
      assert.ok(images.some((entry) => entry.names.includes("berth.local/offline:1")));

      // Images no version pins and no name keeps are collected; pinned ones stay.
      await control.send(new DeleteAgentRuntimeCommand({ agentRuntimeId: first.id }));
      await waitFor("the first runtime's deletion", () => gone(first.id));
      assert.deepEqual(await berth.collectImageGarbage(), []);
      await control.send(new DeleteAgentRuntimeCommand({ agentRuntimeId: second.id }));
      await waitFor("the second runtime's deletion", () => gone(second.id));
      assert.deepEqual(await berth.collectImageGarbage(), [image.digest]);
      const after = await cli(["images", "list", "--json"]);
      assert.ok(!after.stdout.includes(image.digest));
      assert.ok(after.stdout.includes("berth.local/offline:1"));
    });
  });

  async function gone(runtimeId: string): Promise<true | undefined> {
    const got = await harness()
      .control.send(new GetAgentRuntimeCommand({ agentRuntimeId: runtimeId }))
      .catch(() => undefined);
    return got === undefined ? true : undefined;
  }

  function layerDigests(layout: OciLayout, manifestDigest: string): string[] {
    const manifest = JSON.parse(
      readFileSync(join(layout.dir, "blobs/sha256", manifestDigest.slice(7)), "utf8"),
    ) as { layers: { digest: string }[] };
    return manifest.layers.map((layer) => layer.digest);
  }

  /** Runs the berth CLI against the test server. */
  async function cli(
    args: string[],
  ): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const { berth, settings } = harness();
    const child = spawn(process.execPath, [berthBin, ...args], {
      env: {
        PATH: process.env["PATH"],
        BERTH_ENDPOINT: berth.url,
        AWS_ACCESS_KEY_ID: berth.credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: berth.credentials.secretAccessKey,
        AWS_REGION: settings.region,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString("utf8")));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
    const [code] = (await once(child, "exit")) as [number | null];
    return { code, stdout, stderr };
  }
});
