import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { changedChunks, type Extent } from "./block-snapshots.ts";

const chunk = 64 * 1024;
const size = 16 * chunk;

function written(logical: number, physical: number, length: number): Extent {
  return { logical, physical, length, unwritten: false };
}

function unwritten(logical: number, physical: number, length: number): Extent {
  return { logical, physical, length, unwritten: true };
}

/** One contiguous written extent over the whole image, at physical 1 MiB. */
const whole = [written(0, 1 << 20, size)];

describe("changedChunks", () => {
  it("finds nothing changed between equal maps", () => {
    assert.deepEqual(changedChunks(whole, whole, chunk, size), []);
  });

  it("ignores how the extents are split or ordered when the mapping is the same", () => {
    const split = [
      written(5 * chunk + 4096, (1 << 20) + 5 * chunk + 4096, size - 5 * chunk - 4096),
      written(0, 1 << 20, 3 * chunk),
      written(3 * chunk, (1 << 20) + 3 * chunk, 2 * chunk + 4096),
    ];
    assert.deepEqual(changedChunks(whole, split, chunk, size), []);
    assert.deepEqual(changedChunks(split, whole, chunk, size), []);
  });

  it("finds the chunk of one block moved elsewhere (a copy-on-write)", () => {
    const rewritten = [
      written(0, 1 << 20, 7 * chunk + 8192),
      written(7 * chunk + 8192, 900 << 20, 4096),
      written(7 * chunk + 12288, (1 << 20) + 7 * chunk + 12288, size - 7 * chunk - 12288),
    ];
    assert.deepEqual(changedChunks(whole, rewritten, chunk, size), [7]);
  });

  it("finds every chunk a moved range touches, once each", () => {
    const rewritten = [
      written(0, 1 << 20, 2 * chunk - 4096),
      written(2 * chunk - 4096, 900 << 20, chunk + 8192),
      written(3 * chunk + 4096, (1 << 20) + 3 * chunk + 4096, size - 3 * chunk - 4096),
    ];
    assert.deepEqual(changedChunks(whole, rewritten, chunk, size), [1, 2, 3]);
  });

  it("finds a range mapped with the same length elsewhere, even when contiguous", () => {
    // The same extent boundaries, but the whole second half shifted by one block on disk.
    const shifted = [
      written(0, 1 << 20, 8 * chunk),
      written(8 * chunk, (1 << 20) + 8 * chunk + 4096, 8 * chunk),
    ];
    assert.deepEqual(changedChunks(whole, shifted, chunk, size), [8, 9, 10, 11, 12, 13, 14, 15]);
  });

  it("treats a hole that gained blocks, or lost them, as changed", () => {
    const withHole = [
      written(0, 1 << 20, 4 * chunk),
      written(6 * chunk, (1 << 20) + 6 * chunk, 10 * chunk),
    ];
    assert.deepEqual(changedChunks(withHole, whole, chunk, size), [4, 5]);
    assert.deepEqual(changedChunks(whole, withHole, chunk, size), [4, 5]);
  });

  it("treats holes on both sides as unchanged", () => {
    const sparse = [written(2 * chunk, 5 << 20, chunk)];
    assert.deepEqual(changedChunks(sparse, sparse, chunk, size), []);
    assert.deepEqual(changedChunks([], [], chunk, size), []);
  });

  it("treats the same blocks turned from unwritten to written as changed", () => {
    const allocated = [unwritten(0, 1 << 20, size)];
    const partly = [
      unwritten(0, 1 << 20, 3 * chunk),
      written(3 * chunk, (1 << 20) + 3 * chunk, 4096),
      unwritten(3 * chunk + 4096, (1 << 20) + 3 * chunk + 4096, size - 3 * chunk - 4096),
    ];
    assert.deepEqual(changedChunks(allocated, partly, chunk, size), [3]);
    assert.deepEqual(changedChunks(allocated, allocated, chunk, size), []);
  });

  it("treats an unwritten extent and a hole as different mappings", () => {
    assert.deepEqual(changedChunks([], [unwritten(chunk, 1 << 20, chunk)], chunk, size), [1]);
  });

  it("ignores whatever is mapped past the image's size", () => {
    const beyond = [...whole, written(size, 700 << 20, 4 * chunk)];
    assert.deepEqual(changedChunks(whole, beyond, chunk, size), []);
  });

  it("counts a last chunk shorter than the others", () => {
    const oddSize = 2 * chunk + 4096;
    const before = [written(0, 1 << 20, oddSize)];
    const after = [written(0, 1 << 20, 2 * chunk), written(2 * chunk, 3 << 20, 4096)];
    assert.deepEqual(changedChunks(before, after, chunk, oddSize), [2]);
  });

  describe("with no previous snapshot", () => {
    it("gives every chunk holding written data, and no other", () => {
      const first = [
        written(0, 1 << 20, 4096),
        unwritten(4096, (1 << 20) + 4096, 5 * chunk),
        written(9 * chunk + 100, 9 << 20, 2 * chunk),
      ];
      assert.deepEqual(changedChunks(undefined, first, chunk, size), [0, 9, 10, 11]);
    });

    it("gives nothing for an image that is all holes and unwritten extents", () => {
      assert.deepEqual(changedChunks(undefined, [unwritten(0, 1 << 20, size)], chunk, size), []);
    });
  });

  it("refuses a chunk size that is not a positive integer", () => {
    assert.throws(() => changedChunks(undefined, whole, 0, size), RangeError);
    assert.throws(() => changedChunks(undefined, whole, 1.5, size), RangeError);
  });
});

describe("changedChunks against a block-by-block comparison", () => {
  const blockBytes = 4096;
  const blocks = 64;
  const chunkBytes = 4 * blockBytes;

  /** A small deterministic generator (mulberry32), so a failure replays. */
  function randomNumbers(seed: number): () => number {
    let state = seed;
    return () => {
      state = (state + 0x6d2b79f5) | 0;
      let value = Math.imul(state ^ (state >>> 15), 1 | state);
      value = (value + Math.imul(value ^ (value >>> 7), 61 | value)) ^ value;
      return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
    };
  }

  /** Per block: its physical block number and state, or undefined for a hole. */
  type BlockMap = ({ physical: number; unwritten: boolean } | undefined)[];

  function randomMap(random: () => number): BlockMap {
    let physical = 1000;
    return Array.from({ length: blocks }, () => {
      if (random() < 0.2) return undefined;
      // Mostly contiguous, sometimes a jump: runs that extents must join or split.
      physical = random() < 0.3 ? Math.floor(random() * 200) : physical + 1;
      return { physical, unwritten: random() < 0.15 };
    });
  }

  /** A map with some blocks changed: moved, holes filled or punched, written. */
  function edited(map: BlockMap, random: () => number): BlockMap {
    return map.map((block) => {
      const roll = random();
      if (roll < 0.05) return { physical: 5000 + Math.floor(random() * 100), unwritten: false };
      if (roll < 0.08) return undefined;
      if (roll < 0.1 && block !== undefined) return { ...block, unwritten: false };
      return block;
    });
  }

  /** Extents for the map, cut at random places even where the mapping continues. */
  function toExtents(map: BlockMap, random: () => number): Extent[] {
    const extents: Extent[] = [];
    map.forEach((block, index) => {
      if (block === undefined) return;
      const last = extents.at(-1);
      const continues =
        last !== undefined &&
        last.logical + last.length === index * blockBytes &&
        last.physical + last.length === block.physical * blockBytes &&
        last.unwritten === block.unwritten;
      if (continues && random() < 0.7) last.length += blockBytes;
      else
        extents.push({
          logical: index * blockBytes,
          physical: block.physical * blockBytes,
          length: blockBytes,
          unwritten: block.unwritten,
        });
    });
    // The kernel lists them in order; the function must not rely on it.
    return extents.sort(() => random() - 0.5);
  }

  function expected(before: BlockMap, after: BlockMap): number[] {
    const chunks = new Set<number>();
    before.forEach((block, index) => {
      const other = after[index];
      const same =
        block === undefined || other === undefined
          ? block === other
          : block.physical === other.physical && block.unwritten === other.unwritten;
      if (!same) chunks.add(Math.floor((index * blockBytes) / chunkBytes));
    });
    return [...chunks].sort((a, b) => a - b);
  }

  it("agrees on 500 random pairs of maps", () => {
    const random = randomNumbers(16);
    for (let round = 0; round < 500; round += 1) {
      const before = randomMap(random);
      const after = edited(before, random);
      assert.deepEqual(
        changedChunks(
          toExtents(before, random),
          toExtents(after, random),
          chunkBytes,
          blocks * blockBytes,
        ),
        expected(before, after),
        `round ${round}`,
      );
    }
  });
});
