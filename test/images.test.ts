import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  DeleteAgentRuntimeCommand,
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, waitFor } from "./support/agents.ts";
import { quickLifecycleArgs, useTestBerth } from "./support/berth.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
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
]);

before(async () => {
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
});
