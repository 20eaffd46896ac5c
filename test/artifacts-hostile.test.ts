import assert from "node:assert/strict";
import { existsSync, lstatSync, readdirSync, readFileSync, renameSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  CreateAgentRuntimeCommand,
  GetAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, waitFor } from "./support/agents.ts";
import { hostSuite, useTestBerth } from "./support/berth.ts";
import { invokeProbe } from "./support/commands.ts";
import { tarGzBomb, tarGzOf, uploadArchive, zipOf } from "./support/hostile-archives.ts";
import type { LayerEntry } from "./support/oci-images.ts";
import { newSessionId } from "./support/runtimes.ts";

describe("artifacts hostile (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const maxUnpackedBytes = 16 * 2 ** 20;
  const maxEntries = 1000;
  const harness = useTestBerth([
    "--max-artifact-unpacked-bytes",
    String(maxUnpackedBytes),
    "--max-artifact-entries",
    String(maxEntries),
    "--sandbox-outbound",
    "none",
  ]);

  const bucket = "berth-uploads";
  const probeSource = readFileSync(join(agentSources.probe, "main.js"), "utf8");
  const probe: LayerEntry = { path: "main.js", content: probeSource };
  const hostRootLink: LayerEntry = { path: "hostroot", type: "symlink", linkPath: "/" };
  let uploads = 0;

  /** Uploads `archive` as a new prefix through the real API; the prefix. */
  async function upload(archive: Buffer): Promise<string> {
    const prefix = `up-${process.pid}-${(uploads += 1)}`;
    const answer = await uploadArchive(harness(), bucket, prefix, archive);
    assert.equal(answer.status, 200, JSON.stringify(answer.json));
    return prefix;
  }

  /** Creates a runtime from s3://berth-uploads/<prefix> and waits until its version settled. */
  async function createFrom(prefix: string, entryPoint: string) {
    const { control } = harness();
    const created = await control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `hostile_${process.pid}_${(uploads += 1)}`,
        agentRuntimeArtifact: {
          codeConfiguration: {
            code: { s3: { bucket, prefix } },
            runtime: "NODE_22",
            entryPoint: [entryPoint],
          },
        },
        roleArn: undefined,
      }),
    );
    const runtime = await waitFor("the version to settle", async () => {
      const got = await control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: created.agentRuntimeId }),
      );
      return got.status === "CREATING" ? undefined : got;
    });
    return {
      id: runtime.agentRuntimeId ?? "",
      arn: runtime.agentRuntimeArn ?? "",
      status: runtime.status,
      failureReason: runtime.failureReason ?? "",
    };
  }

  /** Every path under `folder` (itself included), without following symbolic links. */
  function walk(folder: string): string[] {
    const found = [folder];
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const path = join(folder, entry.name);
      if (entry.isDirectory()) found.push(...walk(path));
      else found.push(path);
    }
    return found;
  }

  /** What an unpack may have left behind: the private unpacking areas must be empty. */
  function leftovers(): string[] {
    const { dataDir } = harness();
    return [join(dataDir, "artifacts", ".unpacking"), join(dataDir, "artifact-cache", ".unpacking")]
      .filter((area) => existsSync(area))
      .flatMap((area) => readdirSync(area).map((name) => join(area, name)));
  }

  describe("code artifacts: symbolic links out of the store", () => {
    it("refuses a code prefix through an uploaded `hostroot -> /`, so the host is never bound at /app", async () => {
      const prefix = await upload(tarGzOf([probe, hostRootLink]));
      // The attack: /app becomes the host's root, and the agent's own upload is its entry point.
      const ownEntry = join(harness().dataDir, "artifacts", bucket, prefix, "main.js").slice(1);
      const attempts = [
        { codePrefix: `${prefix}/hostroot`, entry: ownEntry },
        {
          codePrefix: `${prefix}/hostroot/${join(harness().dataDir, "artifacts").slice(1)}`,
          entry: `${bucket}/${prefix}/main.js`,
        },
      ];
      for (const { codePrefix, entry } of attempts) {
        const runtime = await createFrom(codePrefix, entry);
        assert.equal(runtime.status, "CREATE_FAILED", `s3://${bucket}/${codePrefix} was accepted`);
        assert.match(
          runtime.failureReason,
          new RegExp(
            `agentRuntimeArtifact\\.codeConfiguration\\.code\\.s3\\.prefix goes through a symbolic link out of its bucket \\(${prefix}/hostroot -> /\\)`,
          ),
        );
        await assert.rejects(
          invokeProbe(harness().data, runtime.arn, newSessionId(), {
            action: "list",
            path: "/app",
          }),
          { name: "ConflictException" },
        );
        assert.deepEqual(await harness().berth.sessions.list(runtime.id), []);
      }
    });

    it("refuses at session start a code folder that became a link out after its version was READY (a version recorded by an older Berth)", async () => {
      const prefix = await upload(tarGzOf([probe]));
      const runtime = await createFrom(prefix, "main.js");
      assert.equal(runtime.status, "READY", runtime.failureReason);
      const folder = join(harness().dataDir, "artifacts", bucket, prefix);
      renameSync(folder, `${folder}.moved`);
      symlinkSync(`${folder}.moved`, folder);
      await assert.rejects(
        invokeProbe(harness().data, runtime.arn, newSessionId(), { action: "list", path: "/app" }),
        (error: Error) => {
          assert.equal(error.name, "ValidationException");
          assert.match(
            error.message,
            /agentRuntimeArtifact\.codeConfiguration\.code\.s3\.prefix goes through a symbolic link out of its bucket/,
          );
          return true;
        },
      );
      assert.deepEqual(await harness().berth.sessions.list(runtime.id), []);
    });

    it("answers the same for an entry point through a link out, whether the host file exists or not", async () => {
      const prefix = await upload(tarGzOf([probe, hostRootLink]));
      const pairs = [
        ["hostroot/etc/passwd", `hostroot/etc/no-such-file-${process.pid}`],
        [
          "../../../../../../../../etc/passwd",
          `../../../../../../../../etc/no-such-file-${process.pid}`,
        ],
      ];
      for (const [existing = "", missing = ""] of pairs) {
        const onExisting = await createFrom(prefix, existing);
        const onMissing = await createFrom(prefix, missing);
        assert.equal(onExisting.status, "CREATE_FAILED", `entry point ${existing} was accepted`);
        assert.equal(onMissing.status, "CREATE_FAILED");
        assert.match(
          onExisting.failureReason,
          /agentRuntimeArtifact\.codeConfiguration\.entryPoint/,
        );
        assert.equal(
          onExisting.failureReason.replace(existing, "ENTRY"),
          onMissing.failureReason.replace(missing, "ENTRY"),
        );
      }
    });
  });

  describe("code artifacts: decompression bombs", () => {
    it("refuses a ~1 MB .tar.gz that unpacks to 1 GiB, naming the setting, and leaves nothing", async () => {
      const bomb = tarGzBomb(1, [probe]);
      assert.ok(bomb.length < 2 * 2 ** 20, `the bomb is ${bomb.length} bytes`);
      const prefix = `bomb-${process.pid}`;
      const answer = await uploadArchive(harness(), bucket, prefix, bomb);
      assert.equal(answer.status, 400, JSON.stringify(answer.json));
      assert.equal(answer.errorType, "ValidationException");
      assert.match(
        String(answer.json["message"]),
        /unpacks to more than 16777216 bytes \(maxArtifactUnpackedBytes\)/,
      );
      assert.equal(existsSync(join(harness().dataDir, "artifacts", bucket, prefix)), false);
      assert.deepEqual(leftovers(), []);
    });

    it("refuses a .tar.gz of more entries than maxArtifactEntries, and leaves nothing", async () => {
      const many = Array.from({ length: 3 * maxEntries }, (_, index) => ({ path: `f${index}` }));
      const prefix = `many-${process.pid}`;
      const answer = await uploadArchive(harness(), bucket, prefix, tarGzOf([probe, ...many]));
      assert.equal(answer.status, 400, JSON.stringify(answer.json));
      assert.equal(answer.errorType, "ValidationException");
      assert.match(
        String(answer.json["message"]),
        /more than 1000 files, folders and links \(maxArtifactEntries\)/,
      );
      assert.equal(existsSync(join(harness().dataDir, "artifacts", bucket, prefix)), false);
      assert.deepEqual(leftovers(), []);
    });

    it("refuses a ~1 MB .zip that unpacks to 1 GiB when the runtime is created, and leaves nothing", async () => {
      const bomb = zipOf([
        { path: "main.js", content: probeSource },
        { path: "zeros", zeros: 2 ** 30 },
      ]);
      assert.ok(bomb.length < 2 * 2 ** 20, `the bomb is ${bomb.length} bytes`);
      const prefix = await upload(tarGzOf([{ path: "bomb.zip", content: bomb }]));
      const runtime = await createFrom(`${prefix}/bomb.zip`, "main.js");
      assert.equal(runtime.status, "CREATE_FAILED");
      assert.match(
        runtime.failureReason,
        /unpacks to more than 16777216 bytes \(maxArtifactUnpackedBytes\)/,
      );
      assert.deepEqual(readdirSync(join(harness().dataDir, "artifact-cache")), [".unpacking"]);
      assert.deepEqual(leftovers(), []);
    });

    it("refuses a .zip of more entries than maxArtifactEntries", async () => {
      const many = Array.from({ length: 3 * maxEntries }, (_, index) => ({
        path: `f${index}`,
        content: "",
      }));
      const zip = zipOf([{ path: "main.js", content: probeSource }, ...many]);
      const prefix = await upload(tarGzOf([{ path: "many.zip", content: zip }]));
      const runtime = await createFrom(`${prefix}/many.zip`, "main.js");
      assert.equal(runtime.status, "CREATE_FAILED");
      assert.match(
        runtime.failureReason,
        /more than 1000 files, folders and links \(maxArtifactEntries\)/,
      );
      assert.deepEqual(leftovers(), []);
    });
  });

  describe("code artifacts: stored code belongs to root", () => {
    it("stores uploaded code as root's, read-only for others, and the agent still runs from it", async () => {
      const entries: LayerEntry[] = [
        { ...probe, mode: 0o600 },
        { path: "tool", content: "#!/bin/sh\n", mode: 0o4775 },
        { path: "shared", type: "directory", mode: 0o777 },
        { path: "shared/notes", content: "x", mode: 0o666 },
        { path: "link", type: "symlink", linkPath: "shared/notes" },
      ];
      const zip = zipOf([{ path: "main.js", content: probeSource, mode: 0o600 }]);
      const prefix = await upload(tarGzOf([...entries, { path: "agent.zip", content: zip }]));
      const stored = join(harness().dataDir, "artifacts", bucket, prefix);
      const runtime = await createFrom(prefix, "main.js");
      assert.equal(runtime.status, "READY", runtime.failureReason);
      const zipped = await createFrom(`${prefix}/agent.zip`, "main.js");
      assert.equal(zipped.status, "READY", zipped.failureReason);
      const cache = join(harness().dataDir, "artifact-cache");
      const unpackedZips = readdirSync(cache).filter((name) => name !== ".unpacking");
      for (const path of [stored, ...unpackedZips.map((name) => join(cache, name))].flatMap(walk)) {
        const stats = lstatSync(path);
        assert.deepEqual([stats.uid, stats.gid], [0, 0], `${path} belongs to root`);
        if (stats.isSymbolicLink()) continue;
        const expected = stats.isDirectory() || (stats.mode & 0o111) !== 0 ? 0o755 : 0o644;
        assert.equal((stats.mode & 0o7777).toString(8), expected.toString(8), path);
      }
      for (const arn of [runtime.arn, zipped.arn]) {
        const session = newSessionId();
        const who = await invokeProbe(harness().data, arn, session, { action: "whoami" });
        assert.equal(who["cwd"], "/app");
        const wrote = await invokeProbe(harness().data, arn, session, {
          action: "write",
          path: "/app/main.js",
          content: "overwritten",
        });
        assert.ok("error" in wrote, "the session cannot change its code");
      }
    });
  });
});
