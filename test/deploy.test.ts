import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { envName, settingDeclarations } from "../src/config/settings.ts";

const root = new URL("../", import.meta.url);
const read = (path: string): string => readFileSync(new URL(path, root), "utf8");
const deployFiles = readdirSync(new URL("deploy/kubernetes/", root)).map(
  (name) => `deploy/kubernetes/${name}`,
);

/** BERTH_* variables that are not settings of `berth serve`: the CLI's. */
const clientVariables = new Set(["BERTH_ENDPOINT"]);

/** A setting's value in configmap.yaml, or its default when the map leaves it empty. */
function configuredSeconds(configMap: string, name: keyof typeof settingDeclarations): number {
  const value = new RegExp(`^\\s*${envName(name)}:\\s*"(\\d*)"`, "m").exec(configMap)?.[1];
  return value === undefined || value === ""
    ? Number(settingDeclarations[name].default)
    : Number(value);
}

describe("the cluster's deployment (deploy/kubernetes, docs/cluster.md) matches the code", () => {
  it("names only variables Berth reads", () => {
    const settings = new Set(Object.keys(settingDeclarations).map(envName));
    for (const path of [...deployFiles, "docs/cluster.md"]) {
      for (const [name] of read(path).matchAll(/\bBERTH_[A-Z0-9_]+/g)) {
        assert.ok(
          settings.has(name) || clientVariables.has(name),
          `${path} names ${name}, which is no setting (docs/configuration.md lists them)`,
        );
      }
    }
  });

  it("gives a stopping node the time Berth's shutdown may take before it is killed", () => {
    const configMap = read("deploy/kubernetes/configmap.yaml");
    const shutdownSeconds =
      configuredSeconds(configMap, "shutdownGraceSeconds") +
      configuredSeconds(configMap, "sessionStorageDurableWaitSeconds");
    const kubernetes = /^\s*terminationGracePeriodSeconds:\s*(\d+)\s*$/m.exec(
      read("deploy/kubernetes/daemonset.yaml"),
    )?.[1];
    const systemd = /^TimeoutStopSec=(\d+)$/m.exec(read("docs/cluster.md"))?.[1];
    for (const [where, seconds] of [
      ["daemonset.yaml terminationGracePeriodSeconds", kubernetes],
      ["docs/cluster.md TimeoutStopSec", systemd],
    ] as const) {
      assert.ok(seconds !== undefined, `${where} is set`);
      assert.ok(
        Number(seconds) > shutdownSeconds,
        `${where} (${seconds} s) exceeds shutdownGraceSeconds + sessionStorageDurableWaitSeconds (${shutdownSeconds} s)`,
      );
    }
  });
});
