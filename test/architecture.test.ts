import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const sourceRoot = join(root, "src");

/** Every module under src/ with the relative modules it imports (type-only imports included). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  const files = readdirSync(sourceRoot, { recursive: true, encoding: "utf8" }).filter(
    (file) => file.endsWith(".ts") && !file.endsWith(".test.ts"),
  );
  for (const file of files) {
    const path = join(sourceRoot, file);
    const text = readFileSync(path, "utf8");
    const imports = [...text.matchAll(/^(?:import|export)[^;]*?from\s+"(\.[^"]+)"/gms)].map(
      (match) => relative(sourceRoot, resolve(dirname(path), match[1] ?? "")),
    );
    graph.set(file, imports);
  }
  return graph;
}

const layerOf = (file: string): string =>
  file
    .split("/")
    .slice(0, file.startsWith("adapters/") ? 2 : 1)
    .join("/");

describe("architecture", () => {
  const graph = importGraph();

  it("has no import cycles", () => {
    const state = new Map<string, "visiting" | "done">();
    const visit = (file: string, path: string[]): void => {
      if (state.get(file) === "done") return;
      assert.notEqual(state.get(file), "visiting", `import cycle: ${[...path, file].join(" -> ")}`);
      state.set(file, "visiting");
      for (const next of graph.get(file) ?? []) visit(next, [...path, file]);
      state.set(file, "done");
    };
    for (const file of graph.keys()) visit(file, []);
  });

  it("keeps each layer to what it may depend on", () => {
    // core: no I/O details; wire: core only; adapters: core (and adapters/host), never each
    // other; cli: core only; main: anything.
    const allowed: Record<string, (target: string) => boolean> = {
      core: (target) => target === "core",
      config: (target) => target === "config",
      wire: (target) => target === "wire" || target === "core",
      // The CLI is a client: the official SDK, and core's pure helpers at most.
      cli: (target) => target === "cli" || target === "core",
    };
    for (const [file, imports] of graph) {
      const layer = layerOf(file);
      for (const target of imports) {
        const targetLayer = layerOf(target);
        if (layer.startsWith("adapters/")) {
          // adapters/host holds stateless helpers on the host's own tables, for every adapter.
          assert.ok(
            targetLayer === layer || targetLayer === "core" || targetLayer === "adapters/host",
            `${file} imports ${target}`,
          );
        } else if (allowed[layer] !== undefined) {
          assert.ok(
            allowed[layer](targetLayer),
            `${file} (${layer}) imports ${target} (${targetLayer})`,
          );
        }
      }
    }
  });
});
