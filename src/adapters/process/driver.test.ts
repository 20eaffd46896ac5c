// What is particular to the process driver; what every driver does is in
// test/contracts/sandbox-driver.test.ts.
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import type { SandboxSpec } from "../../core/sandbox.ts";
import { ProcessDriver } from "./driver.ts";
import { hostProgramPath, volumeVariableName, volumeVariables } from "./sandbox-environment.ts";

describe("the process driver's environment", () => {
  it("names each volume's variable after its mount path", () => {
    assert.equal(volumeVariableName("/mnt/workspace"), "BERTH_VOLUME_MNT_WORKSPACE");
    assert.equal(volumeVariableName("/mnt/my-data.v2"), "BERTH_VOLUME_MNT_MY_DATA_V2");
  });

  it("refuses volumes it cannot give, and two that would share a variable", () => {
    assert.throws(
      () =>
        volumeVariables([
          {
            mountPath: "/mnt/workspace",
            volume: { kind: "block-image", volumeId: "v", path: "/x.img", filesystem: "ext4" },
          },
        ]),
      /host-directory volumes only, not block-image/,
    );
    const folder = (path: string) => ({ kind: "host-directory" as const, volumeId: path, path });
    assert.throws(
      () =>
        volumeVariables([
          { mountPath: "/mnt/a-b", volume: folder("/one") },
          { mountPath: "/mnt/a_b", volume: folder("/two") },
        ]),
      /both be given as BERTH_VOLUME_MNT_A_B/,
    );
  });

  it("finds an interpreter's program on the host through the bind that shows it", () => {
    const binds = [{ hostPath: "/views/py", sandboxPath: "/opt/python" }];
    assert.equal(hostProgramPath("/opt/python/bin/python3", binds), "/views/py/bin/python3");
    assert.equal(hostProgramPath("/opt/python", binds), "/views/py");
    assert.equal(hostProgramPath("/opt/pythonic/bin/x", binds), "/opt/pythonic/bin/x");
    assert.equal(hostProgramPath("/usr/bin/python3", binds), "/usr/bin/python3");
  });
});

describe("ProcessDriver", () => {
  const root = mkdtempSync(join(tmpdir(), "berth-process-driver-"));
  const driver = new ProcessDriver({
    runRoot: join(root, "run"),
    interpreters: {},
    maxOutputLineBytes: 1024,
  });
  after(async () => {
    await driver.close();
    rmSync(root, { recursive: true, force: true });
  });

  function spec(options: Partial<SandboxSpec>): SandboxSpec {
    return {
      filesystem: { kind: "code", codeDir: root },
      command: ["/bin/sh", "-c", "true"],
      environment: {},
      agentPort: 8080,
      volumes: [],
      onOutput: () => undefined,
      ...options,
    };
  }

  it("refuses a container image, saying why", async () => {
    const image = spec({
      filesystem: {
        kind: "image",
        rootfsDir: root,
        user: { uid: 0, gid: 0 },
        workingDir: "/",
      },
    });
    await assert.rejects(driver.start(image, new AbortController().signal), /runs code only/);
  });

  it("puts an interpreter's commands first on PATH, and gives a HOME of the sandbox's own", async () => {
    const install = join(root, "python-view");
    mkdirSync(join(install, "bin"), { recursive: true });
    writeFileSync(join(install, "bin", "tool"), "#!/bin/sh\necho tool ran\n");
    chmodSync(join(install, "bin", "tool"), 0o755);
    const lines: string[] = [];
    const sandbox = await driver.start(
      spec({
        filesystem: {
          kind: "code",
          codeDir: root,
          interpreter: {
            binds: [{ hostPath: install, sandboxPath: "/opt/python" }],
            commands: { tool: "/opt/python/bin/tool" },
          },
        },
        command: ["/bin/sh", "-c", 'tool; echo "$HOME"'],
        onOutput: (_stream, line) => lines.push(line),
      }),
      new AbortController().signal,
    );
    assert.deepEqual(await sandbox.exited, { code: 0, signal: null });
    assert.equal(lines[0], "tool ran");
    assert.ok(lines[1]?.startsWith(join(root, "run")), `HOME ${String(lines[1])} is the sandbox's`);
  });

  it("rejects a command that cannot start, saying which", async () => {
    await assert.rejects(
      driver.start(spec({ command: ["no-such-program-here"] }), new AbortController().signal),
      /no-such-program-here could not start/,
    );
  });
});
