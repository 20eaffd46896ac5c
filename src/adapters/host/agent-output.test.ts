import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { LineSplitter } from "./agent-output.ts";

function split(maxLineBytes: number, chunks: (string | Buffer)[]): [string, boolean][] {
  const lines: [string, boolean][] = [];
  const splitter = new LineSplitter(maxLineBytes, (line, cut) => lines.push([line, cut]));
  for (const chunk of chunks) splitter.push(Buffer.from(chunk));
  splitter.end();
  return lines;
}

describe("LineSplitter", () => {
  it("splits on newlines across chunks, drops a CR before the newline, keeps a last unended line", () => {
    assert.deepEqual(split(64, ["one\ntw", "o\r\n", "\nthree"]), [
      ["one", false],
      ["two", false],
      ["", false],
      ["three", false],
    ]);
  });

  it("passes a line of exactly the bound whole, and cuts a longer one there, dropping its rest", () => {
    assert.deepEqual(split(4, ["abcd\nabcde", "fgh", "ij\nnext\n"]), [
      ["abcd", false],
      ["abcd", true],
      ["next", false],
    ]);
  });

  it("cuts before a character the bound would split, at every split point", () => {
    // "é" is 2 bytes, "€" 3 and "😀" 4: each cut at every byte inside it.
    for (const character of ["é", "€", "😀"]) {
      const size = Buffer.byteLength(character);
      for (let inside = 1; inside < size; inside += 1) {
        const line = `${"a".repeat(10 - inside)}${character}tail`;
        assert.deepEqual(split(10, [`${line}\n`]), [["a".repeat(10 - inside), true]]);
      }
    }
  });
});
