import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { OutputTextDecoder, outputTextToBytes } from "./output-text.ts";

/** Decodes the bytes cut into chunks at every given offset, as pipes may deliver them. */
function decodeInChunks(bytes: Buffer, cuts: number[]): string {
  const decoder = new OutputTextDecoder();
  let text = "";
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    text += decoder.decode(bytes.subarray(start, cut));
    start = cut;
  }
  return text + decoder.end();
}

describe("OutputTextDecoder", () => {
  const samples = [
    Buffer.from("plain ascii\n"),
    Buffer.from("€ and 😀 and ü"),
    Buffer.from([0x61, 0xff, 0x62, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80]),
    Buffer.from([0xe2, 0x82]), // cut short for good
    Buffer.from([0xf0, 0x9f, 0x98, 0x80, 0x80, 0xe2, 0x82, 0xac]),
  ];

  it("round-trips any bytes, however they are chunked", () => {
    for (const sample of samples) {
      for (let cut = 0; cut <= sample.length; cut += 1) {
        for (let second = cut; second <= sample.length; second += 1) {
          const text = decodeInChunks(sample, [cut, second]);
          assert.deepEqual(
            outputTextToBytes(text),
            sample,
            `${sample.toString("hex")} @${cut},${second}`,
          );
        }
      }
    }
  });

  it("decodes valid UTF-8 as itself and escapes each invalid byte", () => {
    assert.equal(decodeInChunks(Buffer.from("€😀"), [1, 5]), "€😀");
    assert.equal(decodeInChunks(Buffer.from([0x61, 0xff, 0x62]), []), "a\udcffb");
    // Overlong forms and encoded surrogates are not valid UTF-8: escaped byte by byte.
    assert.equal(decodeInChunks(Buffer.from([0xc0, 0xaf]), []), "\udcc0\udcaf");
    assert.equal(decodeInChunks(Buffer.from([0xed, 0xa0, 0x80]), []), "\udced\udca0\udc80");
  });
});
