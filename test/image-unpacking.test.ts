import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { bigImageLayers } from "./support/big-image.ts";
import { OciLayout, push, startRegistry, type TestRegistry } from "./support/oci-images.ts";

describe("image unpacking (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const workDir = mkdtempSync(join(tmpdir(), "berth-image-unpacking-"));
  let registry: TestRegistry;
  let imageUri = "";

  const harness = useTestBerth(["--registry-private-hosts", "127.0.0.1"]);

  before(async () => {
    registry = await startRegistry();
    const layout = new OciLayout(join(workDir, "layout"));
    layout.tag(layout.image(bigImageLayers(), { Entrypoint: ["/bin/agent"] }), "big");
    imageUri = `${registry.address}/big:1`;
    push(layout, "big", imageUri);
  });

  after(async () => {
    await registry.stop();
    rmSync(workDir, { recursive: true, force: true });
  });

  // How long control-plane requests wait meanwhile is measured by bench/image-unpacking.ts.
  describe("a large image unpacking", () => {
    it("unpacks off the event loop: the control plane answers all the while, and the image is whole", async () => {
      const { control, dataDir } = harness();
      const created = await control.send(
        new CreateAgentRuntimeCommand({
          agentRuntimeName: `big_image_${process.pid}`,
          agentRuntimeArtifact: { containerConfiguration: { containerUri: imageUri } },
          roleArn: undefined,
        }),
      );
      let answered = 0;
      let status = created.status;
      while (status === "CREATING") {
        const runtime = await control.send(
          new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
        );
        answered += 1;
        status = runtime.status;
      }
      assert.equal(status, "READY");
      assert.ok(answered >= 10, `requests were answered while it unpacked: ${answered}`);
      // The last layer emptied the big folder again (an opaque whiteout), keeping one file.
      const roots = readdirSync(join(dataDir, "images", "roots"), { withFileTypes: true });
      const root = roots.find((entry) => entry.isDirectory());
      assert.ok(root !== undefined, "the image's root is in the cache");
      assert.deepEqual(readdirSync(join(dataDir, "images", "roots", root.name, "data")), ["kept"]);
    });
  });
});
