import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { once } from "node:events";
import { describe, it } from "node:test";
import { Writable } from "node:stream";
import { loadSettings } from "../src/config/settings.ts";
import { startBerth } from "../src/main/berth.ts";
import { jsonLogger } from "../src/main/json-logger.ts";
import { TestPartsRefusedError } from "../src/main/parts.ts";
import { berthBin, spawnBerth } from "./support/berth-process.ts";
import { isolationArgs, makeDataDir, onTestParts, removeDir } from "./support/berth.ts";

const discard = () =>
  new Writable({
    write(_chunk, _encoding, done) {
      done();
    },
  });

describe("parts chosen by settings", () => {
  it("berth serve refuses the test-only parts in one line and exit code 2", async () => {
    const dataDir = makeDataDir();
    try {
      const child = spawn(
        process.execPath,
        [berthBin, "serve", "--port", "0", "--data-dir", dataDir, "--sandbox-driver", "process"],
        { env: { PATH: process.env["PATH"], HOME: process.env["HOME"] }, stdio: "pipe" },
      );
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      const [code] = (await once(child, "close")) as [number | null];
      assert.equal(code, 2);
      assert.equal(stderr.trim().split("\n").length, 1, stderr);
      assert.match(stderr, /^berth serve: sandboxDriver=process exists for Berth's own tests/);
    } finally {
      removeDir(dataDir);
    }
  });

  it("refuses the test-only parts to anyone who starts a server without allowing them", async () => {
    const dataDir = makeDataDir();
    try {
      const settings = loadSettings(
        ["--port", "0", "--data-dir", dataDir, "--metadata-store", "memory"],
        {},
      );
      await assert.rejects(
        startBerth(settings, { log: jsonLogger(discard()), console: discard() }),
        (error: unknown) =>
          error instanceof TestPartsRefusedError && /metadataStore=memory/.test(error.message),
      );
      assert.deepEqual(readdirSync(dataDir), [], "refused before anything was written");
    } finally {
      removeDir(dataDir);
    }
  });

  it("still takes a setting under its former name, and logs a warning naming the new one", async () => {
    const dataDir = makeDataDir();
    const berth = await spawnBerth(["--data-dir", dataDir, "--sandbox-prestart", "0"]);
    try {
      const warning = berth.lines.find((line) => /former name/.test(String(line["msg"])));
      assert.equal(warning?.["level"], "warn");
      assert.match(
        String(warning["msg"]),
        /^--sandbox-prestart is a former name of bubblewrapPrestart/,
      );
    } finally {
      berth.child.kill("SIGTERM");
      await berth.exit;
      removeDir(dataDir);
    }
  });

  it("leaves nothing running when a start fails half-way (its port taken)", async () => {
    const dataDir = makeDataDir();
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const address = taken.address();
    const port = typeof address === "object" && address !== null ? address.port : 0;
    try {
      const settings = loadSettings(
        ["--port", String(port), "--data-dir", dataDir, ...isolationArgs()],
        {},
      );
      await assert.rejects(
        startBerth(settings, {
          log: jsonLogger(discard()),
          console: discard(),
          allowTestParts: onTestParts,
        }),
        /EADDRINUSE/,
      );
      assert.deepEqual(childrenNaming(dataDir), [], "no helper of the failed start still runs");
    } finally {
      taken.close();
      removeDir(dataDir);
    }
  });
});

/** This process's children whose command line names `text` (Berth's helpers name its data dir). */
function childrenNaming(text: string): string[] {
  if (process.platform !== "linux") return [];
  return readdirSync("/proc")
    .filter((name) => /^\d+$/.test(name))
    .flatMap((pid) => {
      try {
        const parent = /^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
        const command = readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ");
        return Number(parent) === process.pid && command.includes(text) ? [command] : [];
      } catch {
        return []; // gone meanwhile
      }
    });
}
