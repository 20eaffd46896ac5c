import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  loadSettings,
  loadSettingsWithWarnings,
  settingDeclarations,
  SettingsError,
} from "./settings.ts";

describe("loadSettings", () => {
  it("never repeats a secret, or a URL holding a password, in the error about it", () => {
    assert.throws(
      () =>
        loadSettings(["--database-url", "postgres://berth:hunter2 oops@db/berth"], {
          BERTH_CLUSTER_SECRET: "hunter3",
        }),
      (error: unknown) => {
        assert.ok(error instanceof SettingsError);
        assert.doesNotMatch(error.message, /hunter/);
        assert.match(error.message, /--database-url must be a PostgreSQL URL/);
        assert.match(error.message, /BERTH_CLUSTER_SECRET must be 32 to 1024 characters/);
        return true;
      },
    );
  });

  it("needs an object store and a cluster secret beside a database URL", () => {
    assert.throws(
      () => loadSettings(["--database-url", "postgres://berth@db/berth"], {}),
      /databaseUrl set without objectStoreUrl[\s\S]*databaseUrl set without clusterSecret/,
    );
  });

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

  it("still takes a renamed setting under its former flag, variable and config key, with a warning", () => {
    const folder = mkdtempSync(join(tmpdir(), "berth-settings-"));
    try {
      const file = join(folder, "berth.json");
      writeFileSync(file, JSON.stringify({ sandboxPrestart: 3 }));
      const fromFlag = loadSettingsWithWarnings(["--sandbox-uid-base", "20000"], {});
      assert.equal(fromFlag.settings.bubblewrapUidBase, 20_000);
      assert.deepEqual(fromFlag.warnings, [
        "--sandbox-uid-base is a former name of bubblewrapUidBase; it still works, but use --bubblewrap-uid-base, BERTH_BUBBLEWRAP_UID_BASE or config key bubblewrapUidBase (the former names will go in a future release)",
      ]);
      const fromEnvironment = loadSettingsWithWarnings([], { BERTH_CGROUP_PARENT: "old-parent" });
      assert.equal(fromEnvironment.settings.bubblewrapCgroupParent, "old-parent");
      assert.match(fromEnvironment.warnings[0] ?? "", /^BERTH_CGROUP_PARENT is a former name/);
      const fromFile = loadSettingsWithWarnings(["--config", file], {});
      assert.equal(fromFile.settings.bubblewrapPrestart, 3);
      assert.match(fromFile.warnings[0] ?? "", /^config file key sandboxPrestart is a former name/);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it("prefers a setting's current name to its former one, in whichever order they come", () => {
    for (const args of [
      ["--sandbox-seccomp", "true", "--bubblewrap-seccomp", "false"],
      ["--bubblewrap-seccomp", "false", "--sandbox-seccomp", "true"],
    ]) {
      const { settings, warnings } = loadSettingsWithWarnings(args, {});
      assert.equal(settings.bubblewrapSeccomp, false, args.join(" "));
      // Overridden, the former name still gets its warning: it is still in someone's set-up.
      assert.equal(warnings.length, 1, args.join(" "));
      assert.match(warnings[0] ?? "", /^--sandbox-seccomp is a former name of bubblewrapSeccomp/);
    }
    const { settings } = loadSettingsWithWarnings([], {
      BERTH_BUBBLEWRAP_PRESTART: "1",
      BERTH_SANDBOX_PRESTART: "5",
    });
    assert.equal(settings.bubblewrapPrestart, 1);
  });

  it("names a bad value under the name it was given", () => {
    assert.throws(
      () => loadSettings(["--sandbox-uid-base", "x"], {}),
      /--sandbox-uid-base must be a whole number/,
    );
  });

  it("chooses each part by a setting, with the embedded defaults", () => {
    const settings = loadSettings([], {});
    assert.equal(settings.metadataStore, "sqlite");
    assert.equal(settings.sandboxDriver, "bubblewrap");
    assert.equal(settings.sessionStorage, "local");
    assert.throws(
      () => loadSettings(["--sandbox-driver", "docker"], {}),
      /--sandbox-driver must be one of bubblewrap, process \(got "docker"\)/,
    );
  });

  it("declares no setting that nothing reads", () => {
    const sourceRoot = new URL("../", import.meta.url);
    const sources = readdirSync(sourceRoot, { recursive: true, encoding: "utf8" })
      .filter((file) => file.endsWith(".ts") && !file.endsWith(".test.ts"))
      .filter((file) => !file.startsWith("config/settings"))
      .map((file) => readFileSync(new URL(file, sourceRoot), "utf8"))
      .join("\n");
    const unread = Object.keys(settingDeclarations).filter(
      (name) => !new RegExp(`\\bsettings\\.${name}\\b`).test(sources),
    );
    assert.deepEqual(unread, [], "settings declared but never read (as settings.NAME) in src/");
  });
});
