import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { loadSettings, SettingsError } from "./settings.ts";

describe("loadSettings", () => {
  it("uses the documented defaults", () => {
    const settings = loadSettings([], {});
    assert.equal(settings.host, "127.0.0.1");
    assert.equal(settings.port, 8787);
    assert.equal(settings.region, "us-east-1");
    assert.equal(settings.insecureNoAuth, false);
  });

  it("takes flags over environment over config file over defaults", () => {
    const folder = mkdtempSync(join(tmpdir(), "berth-settings-"));
    try {
      const file = join(folder, "berth.json");
      writeFileSync(
        file,
        JSON.stringify({ port: 1000, region: "eu-west-1", accountId: "111111111111" }),
      );
      const settings = loadSettings(["--config", file, "--port=3000"], {
        BERTH_PORT: "2000",
        BERTH_REGION: "eu-central-1",
      });
      assert.equal(settings.port, 3000);
      assert.equal(settings.region, "eu-central-1");
      assert.equal(settings.accountId, "111111111111");
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it("reports every problem at once", () => {
    assert.throws(
      () =>
        loadSettings(
          ["--port", "-1", "--mystery", "x", "--access-key-id", "AKIA0000000000000000"],
          { BERTH_REGION: "mars" },
        ),
      (error: unknown) => {
        assert.ok(error instanceof SettingsError);
        assert.equal(error.problems.length, 4, error.problems.join("\n"));
        assert.match(error.message, /--port must be a whole number from 0 to 65535/);
        assert.match(error.message, /BERTH_REGION must be a region name/);
        assert.match(error.message, /unknown flag --mystery/);
        assert.match(error.message, /accessKeyId and secretAccessKey must be set together/);
        return true;
      },
    );
  });

  it("never takes a secret from a flag, where other users could read it in the process list", () => {
    assert.throws(
      () => loadSettings(["--secret-access-key", "abcdefghijklmnopqrstu"], {}),
      /secret: pass it as BERTH_SECRET_ACCESS_KEY/,
    );
  });

  it("reads a boolean flag without a value", () => {
    assert.equal(loadSettings(["--insecure-no-auth"], {}).insecureNoAuth, true);
    assert.equal(loadSettings([], { BERTH_INSECURE_NO_AUTH: "false" }).insecureNoAuth, false);
  });
});
