import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  BedrockAgentCoreControlClient,
  ListAgentRuntimesCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { clientsOf, spawnBerth, type BerthProcess } from "./support/berth-process.ts";
import { hostSuite, makeDataDir, removeDir } from "./support/berth.ts";
import {
  layerOf,
  member,
  membersOf,
  openDescriptors,
  paxMember,
  peakResidentBytes,
  startHttpServer,
  ustarHeader,
  type LocalHttpServer,
} from "./support/hostile-images.ts";
import { OciLayout, push, startRegistry, tarOf, type TestRegistry } from "./support/oci-images.ts";
import { createRuntime } from "./support/runtimes.ts";

describe("images hostile (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // Hostile images, pulled by a Berth of its own (a process, so its descriptors and memory are
  // its own to measure) from a real registry on loopback, which the settings allow explicitly.

  const workDir = mkdtempSync(join(tmpdir(), "berth-hostile-images-"));
  const dataDir = makeDataDir();
  const imagesDir = join(dataDir, "images");
  const secret = `local-secret-${process.pid}`;
  const maxImageBytes = 16 * 2 ** 20;
  let registry: TestRegistry;
  /** A local service that is not a registry: it answers any GET with a secret. */
  let secretService: LocalHttpServer;
  /** A "registry" the settings allow, whose answers send Berth elsewhere. */
  let misdirecting: LocalHttpServer;
  let berth: BerthProcess;
  let control: BedrockAgentCoreControlClient;
  let images = 0;
  /** An image that pulls fine (pushed first). */
  let goodImage = "";

  /** An image with a program to run (the version must get READY), plus `layers` above it. */
  const baseLayer = tarOf([
    { path: "bin/", type: "directory" },
    { path: "bin/agent", content: "#!/bin/sh\n", mode: 0o755 },
  ]);

  before(async () => {
    registry = await startRegistry();
    secretService = await startHttpServer((_request, response) => {
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ mediaType: secret, token: secret }));
    });
    misdirecting = await startHttpServer((request, response) => {
      const secretUrl = `http://127.0.0.1:${secretService.port}`;
      const path = request.url ?? "";
      if (path.startsWith("/v2/redirect/")) {
        response.writeHead(307, { location: `${secretUrl}/v2/whatever/manifests/1` });
      } else if (path.startsWith("/v2/realm/")) {
        response.writeHead(401, {
          "www-authenticate": `Bearer realm="${secretUrl}/token",service="local"`,
        });
      } else {
        response.writeHead(302, { location: path }); // a loop
      }
      response.end();
    });
    berth = await spawnBerth([
      "--data-dir",
      dataDir,
      "--max-image-bytes",
      String(maxImageBytes),
      "--registry-private-hosts",
      `${registry.address},localhost:${registry.address.split(":")[1]},127.0.0.1:${misdirecting.port}`,
    ]);
    control = clientsOf(berth.url, dataDir).control;
    // One good pull first: what later tests measure starts from a Berth that has pulled.
    goodImage = pushImage([]);
    await containerRuntime(goodImage);
  });

  after(async () => {
    control.destroy();
    if (berth.child.exitCode === null) berth.child.kill("SIGTERM");
    await berth.exit;
    await registry.stop();
    await secretService.stop();
    await misdirecting.stop();
    rmSync(workDir, { recursive: true, force: true });
    removeDir(dataDir);
  });

  /** Pushes an image of the base layer and `layers` (tars) to the registry; returns its URI. */
  function pushImage(layers: Buffer[]): string {
    images += 1;
    const layout = new OciLayout(join(workDir, `image-${images}`));
    layout.tag(layout.image([baseLayer, ...layers], { Entrypoint: ["/bin/agent"] }), "t");
    const uri = `${registry.address}/hostile-${images}:1`;
    push(layout, "t", uri);
    return uri;
  }

  async function containerRuntime(containerUri: string, expectedStatus = "READY") {
    const runtime = await createRuntime(
      { control },
      "image",
      { agentRuntimeArtifact: { containerConfiguration: { containerUri } } },
      "main.js",
      expectedStatus,
    );
    return runtime.failureReason ?? "";
  }

  /** Berth's descriptors open on anything in its image cache (staging included). */
  function descriptorsIntoImages(): string[] {
    return openDescriptors(berth.child.pid ?? 0).filter((target) => target.startsWith(imagesDir));
  }

  describe("hostile container images", () => {
    it("refuses a PAX header whose size is not a number, leaking no descriptor (finding 10)", async (t) => {
      const pid = berth.child.pid ?? 0;
      const members: Buffer[] = [];
      for (let index = 0; index < 2000; index++) {
        members.push(paxMember({ size: "NaN" }), member(`file-${index}`, "0", Buffer.alloc(0)));
      }
      const descriptorsBefore = openDescriptors(pid).length;
      const reason = await containerRuntime(pushImage([layerOf(...members)]), "CREATE_FAILED");
      assert.match(reason, /could not be unpacked: a PAX header has size "NaN", not a number/);
      assert.deepEqual(descriptorsIntoImages(), []);
      const grown = openDescriptors(pid).length - descriptorsBefore;
      t.diagnostic(`descriptors after the pull: ${grown} more than before`);
      assert.ok(grown < 50, `Berth holds ${grown} more descriptors than before the pull`);
      // The same for each numeric field, in PAX and in the ustar header itself.
      for (const [records, field] of [
        [{ uid: "-1" }, "uid"],
        [{ gid: "1e3" }, "gid"],
        [{ mtime: "Infinity" }, "mtime"],
        [{ size: "12abc" }, "size"],
      ] as const) {
        const bad = pushImage([layerOf(paxMember(records), member("f", "0", Buffer.alloc(0)))]);
        assert.match(await containerRuntime(bad, "CREATE_FAILED"), new RegExp(`PAX .*${field}`));
      }
      const badUstar = layerOf(ustarHeader({ path: "f", typeflag: "0", size: "0000000000x" }));
      assert.match(
        await containerRuntime(pushImage([badUstar]), "CREATE_FAILED"),
        /a header's size field .* is not a number/,
      );
      // Berth still answers, and still pulls.
      await containerRuntime(pushImage([tarOf([{ path: "after", content: "ok" }])]));
    });

    it("closes a member's file when its layer ends in the middle of it (finding 10)", async () => {
      const cut = Buffer.concat([
        ustarHeader({ path: "big", typeflag: "0", size: 1_000_000 }),
        Buffer.alloc(4096, 1),
      ]);
      const reason = await containerRuntime(pushImage([cut]), "CREATE_FAILED");
      assert.match(reason, /the archive ends in the middle of a member/);
      assert.deepEqual(descriptorsIntoImages(), []);
    });

    it("bounds PAX and long-name headers by maxImageMetadataBytes, holding none whole (finding 11)", async (t) => {
      const pid = berth.child.pid ?? 0;
      // 128 MiB of header in a gzip layer of about 128 KiB.
      const huge = layerOf(
        paxMember({ comment: "a".repeat(128 * 2 ** 20) }),
        member("f", "0", Buffer.alloc(0)),
      );
      const peakBefore = peakResidentBytes(pid);
      const reason = await containerRuntime(pushImage([huge]), "CREATE_FAILED");
      assert.match(
        reason,
        /a PAX header of 134217\d{3} bytes is larger than the setting maxImageMetadataBytes \(4194304\)/,
      );
      const grownMiB = (peakResidentBytes(pid) - peakBefore) / 2 ** 20;
      t.diagnostic(
        `peak memory grew by ${grownMiB.toFixed(1)} MiB from ${(peakBefore / 2 ** 20).toFixed(0)} MiB`,
      );
      assert.ok(grownMiB < 64, `Berth's peak memory grew by ${grownMiB.toFixed(0)} MiB`);
      for (const typeflag of ["g", "L", "K"]) {
        const long = member("././@LongLink", typeflag, Buffer.alloc(5 * 2 ** 20, 0x61));
        const refused = await containerRuntime(
          pushImage([layerOf(long, member("f", "0", Buffer.alloc(0)))]),
          "CREATE_FAILED",
        );
        assert.match(refused, /larger than the setting maxImageMetadataBytes/);
      }
    });

    it("counts tar metadata toward maxImageBytes (finding 11)", async () => {
      // Global headers Berth ignores, each under the metadata bound, together over the image's.
      const header = paxMember({ comment: "b".repeat(2 ** 20) }, "g");
      const members = Array.from({ length: (maxImageBytes / 2 ** 20) * 1.5 }, () => header);
      const reason = await containerRuntime(
        pushImage([layerOf(...members, member("f", "0", Buffer.alloc(0)))]),
        "CREATE_FAILED",
      );
      assert.match(reason, /more than 16777216 bytes \(the setting maxImageBytes\)/);
    });

    it("refuses whiteouts of '..', '.' and '', keeping the staging folder and cached images (finding 17)", async () => {
      // Another image being unpacked meanwhile, as Berth's staging folder would hold it.
      const elsewhere = join(imagesDir, "staging", "unpacking-elsewhere");
      mkdirSync(elsewhere);
      writeFileSync(join(elsewhere, "file"), "in progress");
      const rootsBefore = readdirSync(join(imagesDir, "roots")).sort();
      const lower = tarOf([
        { path: "sub/", type: "directory" },
        { path: "sub/file", content: "x" },
        { path: "up", type: "symlink", linkPath: "../../.." },
      ]);
      for (const whiteout of [".wh...", ".wh..", ".wh.", "sub/.wh...", "up/.wh...", "up/.wh."]) {
        const upper = layerOf(membersOf([{ path: whiteout, content: "" }]));
        const reason = await containerRuntime(pushImage([lower, upper]), "CREATE_FAILED");
        assert.ok(existsSync(join(elsewhere, "file")), `${whiteout} deleted the staging folder`);
        assert.match(
          reason,
          new RegExp(`layer entry ${whiteout.replaceAll(".", "\\.")} is a whiteout of "\\.{0,2}"`),
        );
      }
      assert.deepEqual(readdirSync(join(imagesDir, "roots")).sort(), rootsBefore);
      // Whiteouts through a symlink delete inside the image, as the image sees its files.
      const through = layerOf(membersOf([{ path: "up/sub/.wh.file", content: "" }]));
      await containerRuntime(pushImage([lower, through]));
      rmSync(elsewhere, { recursive: true });
      assert.ok(existsSync(join(imagesDir, "staging")));
    });

    it("refuses registries on loopback addresses the settings do not list, echoing nothing (finding 19)", async () => {
      for (const host of [
        `127.0.0.1:${secretService.port}`,
        `localhost:${secretService.port}`,
        `127.0.0.2:${secretService.port}`,
        `[::1]:${secretService.port}`,
      ]) {
        const reason = await containerRuntime(`${host}/probe:1`, "CREATE_FAILED");
        assert.match(
          reason,
          /resolves to .*(loopback).*; Berth reaches such addresses only for registries listed in the setting registryPrivateHosts/,
        );
        assert.ok(!reason.includes(secret), reason);
      }
      assert.deepEqual(secretService.requests, []);
      // A name is checked by the addresses it resolves to: listed, it is reached.
      await containerRuntime(goodImage.replace("127.0.0.1:", "localhost:"));
    });

    it("follows redirects and token realms only to allowed addresses, and only so far (finding 19)", async () => {
      const allowed = `127.0.0.1:${misdirecting.port}`;
      const redirected = await containerRuntime(`${allowed}/redirect:1`, "CREATE_FAILED");
      assert.match(
        redirected,
        /The registry .* redirected to http:\/\/127\.0\.0\.1:\d+\/\S*, which resolves to 127\.0\.0\.1 \(loopback\).*registryPrivateHosts/,
      );
      const realm = await containerRuntime(`${allowed}/realm:1`, "CREATE_FAILED");
      assert.match(
        realm,
        /The token realm of .*, http:\/\/127\.0\.0\.1:\d+\/token, resolves to 127\.0\.0\.1 \(loopback\).*registryPrivateHosts/,
      );
      for (const reason of [redirected, realm]) assert.ok(!reason.includes(secret), reason);
      assert.deepEqual(secretService.requests, []);
      const looping = await containerRuntime(`${allowed}/loop:1`, "CREATE_FAILED");
      assert.match(looping, /redirected more than 10 times/);
    });

    it("still answers, and shuts down cleanly, after all of them", async () => {
      const listed = await control.send(new ListAgentRuntimesCommand({}));
      assert.ok((listed.agentRuntimes ?? []).length > 0);
      assert.deepEqual(descriptorsIntoImages(), []);
      berth.child.kill("SIGTERM");
      assert.equal((await berth.exit).code, 0);
    });
  });
});
