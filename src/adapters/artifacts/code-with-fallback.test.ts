import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { CodeLocation, CodeSource } from "./code-source.ts";
import { CodeWithFallback } from "./code-with-fallback.ts";

/**
 * A code source holding the artifacts of `folders` (by bucket/prefix), recording what it is
 * asked. Like the local artifact store, "local" refuses a location that leaves it.
 */
class FakeCodeSource implements CodeSource {
  readonly asked: string[] = [];
  private readonly name: string;
  private readonly folders: Map<string, string | Error>;

  constructor(name: string, folders: Record<string, string | Error> = {}) {
    this.name = name;
    this.folders = new Map(Object.entries(folders));
  }

  location(artifact: CodeLocation): string {
    if (this.name === "local" && artifact.prefix.startsWith("../"))
      throw new Error(`${artifact.prefix} leaves the store`);
    return `${this.name}:${artifact.bucket}/${artifact.prefix}`;
  }

  notFound(artifact: CodeLocation): string {
    return `${this.location(artifact)} not found in ${this.name}`;
  }

  folder(artifact: CodeLocation): Promise<string | undefined> {
    const place = `${artifact.bucket}/${artifact.prefix}`;
    this.asked.push(place);
    const found = this.folders.get(place);
    return found instanceof Error ? Promise.reject(found) : Promise.resolve(found);
  }
}

describe("CodeWithFallback", () => {
  const agents = { bucket: "agents", prefix: "probe.zip" };

  it("uses the local artifact store's code without asking the object store", async () => {
    const local = new FakeCodeSource("local", { "agents/probe.zip": "/cache/local-tree" });
    // "agents" on AWS may be a stranger's bucket: it must not be asked at all.
    const objectStore = new FakeCodeSource("s3", { "agents/probe.zip": "/cache/stranger-tree" });
    const code = new CodeWithFallback(local, objectStore);
    assert.equal(await code.folder(agents), "/cache/local-tree");
    assert.deepEqual(objectStore.asked, []);
  });

  it("reads the object store for code the local store does not hold", async () => {
    const local = new FakeCodeSource("local");
    const objectStore = new FakeCodeSource("s3", { "agents/probe.zip": "/cache/s3-tree" });
    const code = new CodeWithFallback(local, objectStore);
    assert.equal(await code.folder(agents), "/cache/s3-tree");
    assert.deepEqual(local.asked, ["agents/probe.zip"]);
  });

  it("reports a local artifact that cannot be used instead of looking for it in the object store", async () => {
    const local = new FakeCodeSource("local", {
      "agents/probe.zip": new Error("probe.zip is neither a folder nor a .zip"),
    });
    const objectStore = new FakeCodeSource("s3", { "agents/probe.zip": "/cache/stranger-tree" });
    const code = new CodeWithFallback(local, objectStore);
    await assert.rejects(code.folder(agents), /neither a folder nor a \.zip/);
    assert.deepEqual(objectStore.asked, []);
  });

  it("goes straight to the object store for a key the local store cannot hold", async () => {
    const outside = { bucket: "code", prefix: "../elsewhere.zip" };
    const local = new FakeCodeSource("local");
    const objectStore = new FakeCodeSource("s3", { "code/../elsewhere.zip": "/cache/s3-tree" });
    const code = new CodeWithFallback(local, objectStore);
    assert.equal(await code.folder(outside), "/cache/s3-tree");
    assert.deepEqual(local.asked, []);
    assert.equal(code.notFound(outside), "s3:code/../elsewhere.zip not found in s3");
  });

  it("passes on the object store's failure when the local store does not hold the code", async () => {
    const objectStore = new FakeCodeSource("s3", {
      "agents/probe.zip": new Error("the object store refused reading (HTTP 403 AccessDenied)"),
    });
    const code = new CodeWithFallback(new FakeCodeSource("local"), objectStore);
    await assert.rejects(code.folder(agents), /HTTP 403 AccessDenied/);
  });

  it("names both places, the local one first, when neither holds the code", async () => {
    const code = new CodeWithFallback(new FakeCodeSource("local"), new FakeCodeSource("s3"));
    assert.equal(await code.folder(agents), undefined);
    assert.equal(code.location(agents), "s3:agents/probe.zip");
    assert.equal(
      code.notFound(agents),
      "Code artifact s3:agents/probe.zip not found in the local artifact store (local:agents/probe.zip), looked in first, nor in the object store: put the code's .zip in the object store (or name the object and version that hold it)",
    );
  });
});
