// Output text as the native helper makes it (native/output-text.h), checked against a reference
// written from the definition in src/core/output-text.ts, for every way reads can cut the bytes.
import assert from "node:assert/strict";
import { isUtf8 } from "node:buffer";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import { nativeBinary } from "../src/adapters/host/native-binaries.ts";
import { outputTextToBytes } from "../src/core/output-text.ts";

/** berth-exec escape: the helper's output text for BYTES, read at most readSize at a time. */
function escapeNatively(bytes: Buffer, readSize: number): string {
  const result = spawnSync(nativeBinary("berth-exec"), ["escape", String(readSize)], {
    input: bytes,
  });
  assert.equal(result.status, 0, result.stderr.toString());
  assert.ok(isUtf8(result.stdout), "output text is valid UTF-8");
  return result.stdout.toString("utf8");
}

/** The definition, whole-buffer: each longest valid UTF-8 sequence as itself, other bytes as U+DCxx. */
function referenceText(bytes: Buffer): string {
  let text = "";
  for (let index = 0; index < bytes.length;) {
    const length = [4, 3, 2, 1].find(
      (candidate) =>
        index + candidate <= bytes.length && isUtf8(bytes.subarray(index, index + candidate)),
    );
    if (length === undefined) {
      text += String.fromCharCode(0xdc00 + (bytes[index] ?? 0));
      index += 1;
    } else {
      text += bytes.subarray(index, index + length).toString("utf8");
      index += length;
    }
  }
  return text;
}

function assertEscapes(bytes: Buffer, readSizes: number[]): void {
  const expected = JSON.stringify(referenceText(bytes)).slice(1, -1);
  for (const readSize of readSizes) {
    const escaped = escapeNatively(bytes, readSize);
    const label = `${bytes.toString("hex")} read ${String(readSize)} at a time`;
    assert.equal(escaped, expected, label);
    const text = JSON.parse(`"${escaped}"`) as string;
    assert.deepEqual(outputTextToBytes(text), bytes, label);
  }
}

describe("output text (native/output-text.h)", () => {
  it("escapes as JSON.stringify does, every character and control byte", () => {
    const everyAscii = Buffer.from(Array.from({ length: 128 }, (_, byte) => byte));
    assertEscapes(everyAscii, [1, 7, 65_536]);
    assertEscapes(Buffer.from('say "hi"\\ \t\r\n€ 😀 ü \u2028'), [1, 2, 3, 65_536]);
  });

  it("escapes each byte that is not valid UTF-8, wherever reads cut the bytes", () => {
    const samples = [
      [0x61, 0xff, 0x62, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80], // overlong, surrogate, > U+10FFFF
      [0xe2, 0x82], // cut short for good
      [0xf0, 0x9f, 0x98, 0x80, 0x80, 0xe2, 0x82, 0xac], // a stray continuation between two characters
      [0xe0, 0x80, 0x80, 0xf0, 0x8f, 0xbf, 0xbf, 0xc2], // overlong three- and four-byte forms
    ];
    for (const sample of samples) assertEscapes(Buffer.from(sample), [1, 2, 3, 4, 5, 65_536]);
  });

  it("agrees with the definition on random bytes, mostly text", () => {
    for (let round = 0; round < 40; round += 1) {
      const noise = randomBytes(64);
      const text = Buffer.from("plain text, € and 😀\n".repeat(3));
      const bytes = Buffer.concat([text.subarray(0, round), noise, text.subarray(round)]);
      assertEscapes(bytes, [1 + (round % 5), 9, 65_536]);
    }
  });
});
