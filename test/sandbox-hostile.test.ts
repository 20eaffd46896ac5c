// Attacks from inside a session on what the sandbox shares with the host and with other
// sessions: the agent's socket, the host's disk, host files, command lines. Each test tries the
// attack the way code inside a session would, and checks it fails.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { agentSources, installAgent } from "./support/agents.ts";
import { StopRuntimeSessionCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  hostSuite,
  makeDataDir,
  removeDir,
  startTestBerth,
  useTestBerth,
} from "./support/berth.ts";
import { invokeProbe, runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("sandbox hostile (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const secret = `s3cr3t-${process.pid}-value-that-must-stay-private`;
  const harness = useTestBerth(["--sandbox-outbound", "none"], (berth) => {
    installAgent(berth.dataDir, agentSources.probe, "probe");
  });

  let probe: { arn: string } | undefined;
  async function probeRuntime() {
    probe ??= await createRuntime(harness(), "probe", {
      environmentVariables: { API_TOKEN: secret },
      filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
    });
    return probe;
  }

  async function shell(sessionId: string, command: string) {
    const runtime = await probeRuntime();
    return runCommand(harness().data, runtime.arn, sessionId, command);
  }

  interface Mount {
    mountPoint: string;
    writable: boolean;
    fsType: string;
    root: string;
  }

  /** /proc/self/mountinfo as the sandbox sees it. */
  function parseMountInfo(text: string): Mount[] {
    return text
      .trim()
      .split("\n")
      .map((line) => {
        const [before = "", after = ""] = line.split(" - ");
        const fields = before.split(" ");
        return {
          root: fields[3] ?? "",
          mountPoint: fields[4] ?? "",
          writable: (fields[5] ?? "").split(",").includes("rw"),
          fsType: after.split(" ")[0] ?? "",
        };
      });
  }

  describe("a hostile session", () => {
    it("cannot point Berth at another session's agent by replacing its agent socket", async () => {
      const { data } = harness();
      const runtime = await probeRuntime();
      const victim = newSessionId("victim");
      await invokeProbe(data, runtime.arn, victim, {
        action: "remember",
        value: "victim's memory",
      });
      // The victim's run folder on the host, as any session can read it from its mount table.
      const victimMounts = await shell(victim, "cat /proc/self/mountinfo");
      const victimVolumes = parseMountInfo(victimMounts.stdout).find(
        (m) => m.mountPoint === "/mnt",
      );
      assert.ok(victimVolumes !== undefined, "the victim's /mnt is in its mount table");
      const victimRunDir = victimVolumes.root.replace(/\/mnt$/, "");

      const attacker = newSessionId("attacker");
      const attempt = await shell(
        attacker,
        [
          `for target in ${victimRunDir}/agent.sock ${victimRunDir}/host/agent.sock; do`,
          "  for own in /run/berth/agent.sock /run/berth/host/agent.sock; do",
          '    rm -f "$own" 2>/dev/null; ln -s "$target" "$own" 2>/dev/null && echo "linked $own"',
          "  done",
          "done",
          "echo done",
        ].join("\n"),
      );
      assert.doesNotMatch(attempt.stdout, /linked/, "nothing the sandbox sees leads to the socket");
      // Berth opens new connections to the attacker's agent: it must reach the attacker's own.
      const recalled = await invokeProbe(data, runtime.arn, attacker, { action: "recall" });
      assert.deepEqual(recalled, { memory: [] });
    });

    it("can write to the host's disk only through its bounded session storage", async () => {
      const sessionId = newSessionId("disk");
      const table = await shell(sessionId, "cat /proc/self/mountinfo");
      // Memory-backed filesystems are charged to the session's memory limit; devices are nodes.
      const inMemory = new Set(["tmpfs", "proc", "mqueue", "devpts", "devtmpfs"]);
      const onDisk = parseMountInfo(table.stdout).filter((m) => !inMemory.has(m.fsType));
      // Try each on-disk mount as the attacker would: fill it with a file.
      const attempt = await shell(
        sessionId,
        onDisk
          .map(
            (m) =>
              `dd if=/dev/zero of=${m.mountPoint}/fill bs=1M count=4 2>/dev/null && echo "wrote ${m.mountPoint}"`,
          )
          .join("; "),
      );
      assert.deepEqual(
        attempt.stdout.trim().split("\n"),
        ["wrote /mnt/workspace"],
        JSON.stringify({ onDisk, attempt }),
      );
      for (const folder of readdirSync(`${harness().dataDir}/sessions`)) {
        assert.throws(() => readFileSync(`${harness().dataDir}/sessions/${folder}/fill`));
      }
    });

    it("sees no host TLS private keys, and still has the public certificates", async () => {
      const result = await shell(
        newSessionId("tls"),
        "ls -d /etc/ssl/private 2>&1; test -s /etc/ssl/certs/ca-certificates.crt && echo roots",
      );
      assert.match(result.stdout, /No such file or directory/);
      assert.match(result.stdout, /roots/);
    });

    it("sees nothing of the host's /usr/local", async () => {
      const result = await shell(newSessionId("local"), "ls -A /usr/local | wc -l");
      assert.equal(result.stdout.trim(), "0");
    });

    it("keeps its environment off every command line other local users can read", async () => {
      const sessionId = newSessionId("env");
      const inside = await shell(sessionId, 'printf %s "$API_TOKEN"');
      assert.equal(inside.stdout, secret, "the agent's environment still reaches commands");
      // What any unprivileged local user sees with ps while the session runs.
      const seen = execFileSync("setpriv", [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "ps",
        "-eo",
        "args",
      ]).toString("utf8");
      assert.doesNotMatch(seen, new RegExp(secret));
    });
  });

  describe("a hostile environment", () => {
    it("never reaches a process Berth runs as root: LD_PRELOAD in a runtime's environment", async () => {
      // A library that, wherever it is loaded, records who loaded it in a host folder no sandbox
      // can reach: an environment variable that reached the dynamic loader of a root process would
      // run the caller's code as root.
      const workDir = mkdtempSync(join(tmpdir(), "berth-preload-"));
      const marker = join(workDir, "loaded-by");
      const source = join(workDir, "preload.c");
      writeFileSync(
        source,
        `#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void loaded(void) { FILE *f = fopen("${marker}", "a"); if (f) { fprintf(f, "%d\\n", (int)getuid()); fclose(f); } }\n`,
      );
      execFileSync("cc", ["-shared", "-fPIC", "-o", join(workDir, "preload.so"), source]);
      chmodSync(workDir, 0o755);
      try {
        const runtime = await createRuntime(harness(), "probe", {
          environmentVariables: { LD_PRELOAD: join(workDir, "preload.so") },
        });
        const seen = await invokeProbe(harness().data, runtime.arn, newSessionId("preload"), {
          action: "whoami",
        });
        assert.equal(
          (seen["env"] as Record<string, string>)["LD_PRELOAD"],
          join(workDir, "preload.so"),
        );
        assert.equal(
          existsSync(marker) ? readFileSync(marker, "utf8") : "",
          "",
          "nothing loaded it",
        );
      } finally {
        rmSync(workDir, { recursive: true, force: true });
      }
    });
  });

  describe("a hostile environment value", () => {
    it("cannot smuggle options to bwrap with a NUL: refused as the runtime is created", async () => {
      await assert.rejects(
        createRuntime(harness(), "probe", {
          environmentVariables: { INNOCENT: "x\u0000--bind\u0000/\u0000/host" },
        }),
        (error: Error) => {
          assert.equal(error.name, "ValidationException");
          assert.match(error.message, /without NUL/);
          return true;
        },
      );
    });
  });

  describe("all sessions together", () => {
    it("are held to the host-wide memory bound, whatever one session's own limit allows", async () => {
      const berth = await startTestBerth([
        "--sandbox-outbound",
        "none",
        "--sandboxes-memory-bytes",
        String(256 * 1024 * 1024),
      ]);
      try {
        installAgent(berth.dataDir, agentSources.probe, "probe");
        const runtime = await createRuntime(berth, "probe");
        // sessionMemoryBytes (2 GiB by default) would allow it; the parent's bound must not.
        const hog = await invokeProbe(berth.data, runtime.arn, newSessionId("hog"), {
          action: "hog",
          megabytes: 400,
        });
        assert.equal(hog["signal"], "SIGKILL", JSON.stringify(hog));
      } finally {
        await berth.close();
        removeDir(berth.dataDir);
      }
    });
  });

  describe("session storage on a disk another session fills", () => {
    it("never loses a session's acknowledged writes: volumes are reserved, or refused up front", async () => {
      const dataDir = makeDataDir();
      const storageDir = join(dataDir, "storage");
      mkdirSync(storageDir);
      // A small disk of the test's own: room for one 16 MiB volume, not two.
      execFileSync("mount", [
        "-t",
        "tmpfs",
        "-o",
        "size=24m,mode=0700",
        "berth-test-disk",
        storageDir,
      ]);
      const berth = await startTestBerth(
        ["--sandbox-outbound", "none", "--session-storage-bytes", String(16 * 1024 * 1024)],
        dataDir,
      );
      try {
        installAgent(dataDir, agentSources.probe, "probe");
        const runtime = await createRuntime(berth, "probe", {
          filesystemConfigurations: [{ sessionStorage: { mountPath: "/mnt/workspace" } }],
        });
        const inSession = (sessionId: string, command: string) =>
          runCommand(berth.data, runtime.arn, sessionId, command);
        const victim = newSessionId("victim");
        await inSession(victim, "echo first > /mnt/workspace/notes");
        // The attacker fills its own volume, all within its own size limit.
        const attacker = newSessionId("attacker");
        const filled = await inSession(
          attacker,
          "head -c 15M /dev/urandom > /mnt/workspace/fill; sync; echo filled",
        ).catch((error: unknown) => error as Error);
        if (filled instanceof Error) {
          assert.equal(filled.name, "ServiceQuotaExceededException");
          assert.match(filled.message, /no room to reserve/);
        }
        // The victim goes on writing, is told its data is safe, and stops.
        const written = await inSession(
          victim,
          "head -c 12M /dev/urandom > /mnt/workspace/data && sync && sha256sum /mnt/workspace/data",
        );
        assert.equal(written.exitCode, 0, written.stderr);
        await berth.data.send(
          new StopRuntimeSessionCommand({ agentRuntimeArn: runtime.arn, runtimeSessionId: victim }),
        );
        const reread = await inSession(victim, "sha256sum /mnt/workspace/data");
        assert.equal(reread.stdout, written.stdout);
      } finally {
        await berth.close();
        execFileSync("umount", ["--lazy", storageDir]);
        removeDir(dataDir);
      }
    });
  });
});
