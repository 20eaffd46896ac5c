import assert from "node:assert/strict";
import { mkdtempSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { LoopDeviceTable, type BackingFiles } from "./loop-devices.ts";

/** Scans answered by the test, in order, so it decides when each ends. */
function controlledScans(): {
  scan: () => Promise<BackingFiles>;
  started: () => number;
  finish: (table: BackingFiles) => void;
} {
  const pending: ((table: BackingFiles) => void)[] = [];
  let started = 0;
  return {
    scan: () => {
      started += 1;
      return new Promise((resolve) => pending.push(resolve));
    },
    started: () => started,
    finish: (table) => {
      const next = pending.shift() ?? assert.fail("no scan is under way");
      next(table);
    },
  };
}

/** Resolves once every pending promise callback has run (the scans are started from them). */
const settle = () => new Promise((resolve) => setImmediate(resolve));

describe("LoopDeviceTable", () => {
  const folder = mkdtempSync(join(tmpdir(), "berth-loop-devices-"));
  const image = join(folder, "volume.img");
  writeFileSync(image, "");
  const real = realpathSync(image);
  after(() => {
    rmSync(folder, { recursive: true, force: true });
  });

  it("answers everyone who asked while a scan was under way with one more scan", async () => {
    const scans = controlledScans();
    const table = new LoopDeviceTable(scans.scan);
    const answers = Promise.all(Array.from({ length: 50 }, () => table.backing(image)));
    scans.finish(new Map([[real, ["/dev/loop7"]]])); // the first caller's
    await settle();
    scans.finish(new Map([[real, ["/dev/loop7"]]])); // the 49 others'
    assert.deepEqual(await answers, Array<string[]>(50).fill(["/dev/loop7"]));
    assert.equal(scans.started(), 2);
  });

  it("never answers with a scan that started before the question", async () => {
    const scans = controlledScans();
    const table = new LoopDeviceTable(scans.scan);
    const early = table.backing(image);
    const late = [table.backing(image), table.backing(image)];
    await settle();
    assert.equal(scans.started(), 1, "the late callers wait for the scan under way to end");
    scans.finish(new Map([[real, ["/dev/loop3"]]])); // read before the device let go
    assert.deepEqual(await early, ["/dev/loop3"]);
    await settle();
    assert.equal(scans.started(), 2, "then share one new scan");
    scans.finish(new Map());
    assert.deepEqual(await Promise.all(late), [[], []]);
  });

  it("finds nothing holding an image that does not exist", async () => {
    const scans = controlledScans();
    const table = new LoopDeviceTable(scans.scan);
    const answer = table.backing(join(folder, "gone.img"));
    scans.finish(new Map([[join(folder, "gone.img"), ["/dev/loop1"]]]));
    assert.deepEqual(await answer, []);
  });
});
