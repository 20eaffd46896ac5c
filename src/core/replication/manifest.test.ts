// A generation's manifest as stored: written and read back whole, and refused when what the store
// gives back does not describe chunks within the volume and its packs.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import { chunkBytes, decodeManifest, encodeManifest, type Manifest } from "./manifest.ts";

const hash = (letter: string) => letter.repeat(64);
const [packA, packB] = [randomUUID(), randomUUID()];

function sampleManifest(): Manifest {
  return {
    format: 2,
    volumeId: "vol-1",
    generation: 7,
    fence: 3,
    sizeBytes: 10 * chunkBytes + 5,
    chunkBytes,
    chunks: new Map([
      [10, { hash: hash("c"), pack: packB, offset: 0, length: 17 }],
      [0, { hash: hash("a"), pack: packA, offset: 0, length: 65_600 }],
      [3, { hash: hash("b"), pack: packA, offset: 65_600, length: 1200 }],
      // A chunk with the same bytes as chunk 0: the same place in the same pack.
      [4, { hash: hash("a"), pack: packA, offset: 0, length: 65_600 }],
    ]),
    createdAt: "2025-01-02T03:04:05.000Z",
  };
}

/** A stored manifest of one volume of two chunks, in one pack, listing `chunks`. */
function storedWith(chunks: unknown, packs: unknown = [packA]): Buffer {
  return gzipSync(
    JSON.stringify({
      format: 2,
      volumeId: "vol-1",
      generation: 1,
      fence: 1,
      sizeBytes: 2 * chunkBytes,
      chunkBytes,
      packs,
      chunks,
      createdAt: "2025-01-02T03:04:05.000Z",
    }),
  );
}

describe("a volume generation's manifest", () => {
  it("reads back exactly what was written", () => {
    const manifest = sampleManifest();
    assert.deepEqual(decodeManifest(encodeManifest(manifest), "m"), manifest);
    const empty = { ...manifest, chunks: new Map() };
    assert.deepEqual(decodeManifest(encodeManifest(empty), "m"), empty);
  });

  it("names each pack once, however many chunks it holds", () => {
    const stored = JSON.parse(gunzipSync(encodeManifest(sampleManifest())).toString("utf8")) as {
      packs: string[];
      chunks: unknown[][];
    };
    assert.deepEqual(stored.packs.sort(), [packA, packB].sort());
    assert.deepEqual(
      stored.chunks.map((entry) => entry[0]),
      [0, 3, 4, 10],
    );
  });

  it("accepts a chunk within the volume and its pack list", () => {
    const decoded = decodeManifest(storedWith([[1, hash("a"), 0, 10, 20]]), "m");
    assert.deepEqual(decoded.chunks.get(1), {
      hash: hash("a"),
      pack: packA,
      offset: 10,
      length: 20,
    });
  });

  it("refuses a chunk outside the volume, or whose hash, pack, offset or length is not valid", () => {
    const refused: [string, unknown[]][] = [
      ["index past the volume's end", [2, hash("a"), 0, 0, 20]],
      ["negative index", [-1, hash("a"), 0, 0, 20]],
      ["index not a number", ["0", hash("a"), 0, 0, 20]],
      ["hash not a sha256", [0, "not-a-hash", 0, 0, 20]],
      ["pack number past the pack list", [0, hash("a"), 1, 0, 20]],
      ["negative pack number", [0, hash("a"), -1, 0, 20]],
      ["fractional pack number", [0, hash("a"), 0.5, 0, 20]],
      ["pack named, not numbered", [0, hash("a"), packA, 0, 20]],
      ["negative offset", [0, hash("a"), 0, -1, 20]],
      ["fractional offset", [0, hash("a"), 0, 1.5, 20]],
      ["offset past the safe integers", [0, hash("a"), 0, 2 ** 53, 20]],
      ["zero length", [0, hash("a"), 0, 0, 0]],
      ["negative length", [0, hash("a"), 0, 0, -20]],
      ["length missing", [0, hash("a"), 0, 0]],
    ];
    for (const [what, entry] of refused) {
      assert.throws(
        () => decodeManifest(storedWith([entry]), "m"),
        /manifest m lists a chunk that is not \(index, sha256, pack, offset, length\) within the volume/,
        what,
      );
    }
    assert.throws(() => decodeManifest(storedWith({}), "m"), /manifest m has no chunk list/);
  });

  it("refuses a pack list that is missing or names a pack that is not a pack id", () => {
    for (const packs of [null, {}, ["../../other-volume/packs/x"], [42]]) {
      assert.throws(
        () => decodeManifest(storedWith([], packs), "m"),
        /manifest m has no valid pack list/,
        JSON.stringify(packs),
      );
    }
  });

  it("refuses what is not gzipped JSON, and sizes that are not counts", () => {
    assert.throws(() => decodeManifest(Buffer.from("not gzip"), "m"), /m is not gzipped JSON/);
    const body = (fields: Record<string, unknown>) =>
      gzipSync(JSON.stringify({ ...fields, packs: [], chunks: [] }));
    const valid = { format: 2, generation: 1, fence: 1, sizeBytes: chunkBytes, chunkBytes };
    assert.doesNotThrow(() => decodeManifest(body(valid), "m"));
    for (const [name, value] of [
      ["chunkBytes", 0],
      ["sizeBytes", -1],
      ["generation", "1"],
      ["fence", 1.5],
    ] as const) {
      assert.throws(
        () => decodeManifest(body({ ...valid, [name]: value }), "m"),
        new RegExp(`manifest m has no valid ${name}`),
      );
    }
  });
});
