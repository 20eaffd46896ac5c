import assert from "node:assert/strict";
import { isUtf8 } from "node:buffer";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { CommandOutputEncoder, OutputEncoder } from "./output-encoder.ts";
import { outputTextToBytes } from "./output-text.ts";

/** The output text of bytes written in these chunks, with the end of the stream. */
function encodeChunks(chunks: readonly Buffer[]): string {
  const encoder = new OutputEncoder();
  const text = [...chunks.flatMap((chunk) => encoder.encode(chunk)), ...encoder.end()];
  const joined = Buffer.concat(text);
  assert.ok(isUtf8(joined), "output text is valid UTF-8");
  return joined.toString("utf8");
}

/** The output text of BYTES cut at every possible point, each cut giving the same text. */
function encodeEveryCut(bytes: Buffer): string {
  const whole = encodeChunks([bytes]);
  for (let cut = 1; cut < bytes.length; cut += 1) {
    const cutText = encodeChunks([bytes.subarray(0, cut), bytes.subarray(cut)]);
    assert.equal(cutText, whole, `${bytes.toString("hex")} cut at ${String(cut)}`);
  }
  return whole;
}

const bytesOf = (...bytes: number[]) => Buffer.from(bytes);

/** A small seeded generator (mulberry32), so a failure can be replayed. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = Math.imul(state ^ (state >>> 15), state | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Bytes that hit the interesting cases often: text, escapes, characters, their pieces, noise. */
function randomOutput(random: () => number, maxLength: number): Buffer {
  const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)] as T;
  const pieces = [
    () => Buffer.from("plain text "),
    () =>
      Buffer.from(pick(['"', "\\", "\n", "\r\n", "\t", "\b", "\f", "\u0000", "\u001f", "\u007f"])),
    () => Buffer.from(pick(["é", "€", "😀", "\u2028", "\u{10ffff}", "\ud7ff", "\ue000"])),
    () => bytesOf(pick([0xc0, 0xc1, 0xc2, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff])), // leads, alone
    () => bytesOf(pick([0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf])), // continuation bytes, stray
    () => bytesOf(Math.floor(random() * 256)),
  ];
  const parts: Buffer[] = [];
  let length = 0;
  const target = Math.floor(random() * maxLength);
  while (length < target) {
    const part = pick(pieces)();
    parts.push(part);
    length += part.length;
  }
  return Buffer.concat(parts);
}

/** BYTES cut at random points into chunks (some of them empty). */
function randomChunks(random: () => number, bytes: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let start = 0; start < bytes.length;) {
    const end = Math.min(bytes.length, start + Math.floor(random() * 8));
    chunks.push(bytes.subarray(start, end));
    start = end;
  }
  return chunks;
}

describe("OutputEncoder", () => {
  it("escapes as JSON.stringify does inside the quotes: quotes, backslash, control characters", () => {
    const everyAscii = Buffer.from(Array.from({ length: 128 }, (_, byte) => byte));
    assert.equal(encodeChunks([everyAscii]), JSON.stringify(everyAscii.toString()).slice(1, -1));
    assert.equal(encodeEveryCut(Buffer.from('say "hi"\\')), 'say \\"hi\\"\\\\');
    assert.equal(encodeEveryCut(bytesOf(0x00, 0x1f, 0x7f)), "\\u0000\\u001f\u007f");
    assert.equal(encodeEveryCut(Buffer.from("\b\f\n\r\t")), "\\b\\f\\n\\r\\t");
  });

  it("passes valid UTF-8 through as it is, U+2028 and U+10FFFF included", () => {
    const text = "€ 😀 ü \u2028 \u2029 \u{10ffff}";
    assert.equal(encodeEveryCut(Buffer.from(text)), text);
  });

  it("passes text with nothing to escape on as the very buffer it came in", () => {
    const chunk = Buffer.from("nothing to escape here, € 😀");
    const [piece, ...others] = new OutputEncoder().encode(chunk);
    assert.deepEqual(others, []);
    assert.ok(piece !== undefined);
    assert.equal(piece.buffer, chunk.buffer, "the same memory, not a copy");
    assert.equal(piece.byteOffset, chunk.byteOffset);
    assert.equal(piece.length, chunk.length);
  });

  it("holds a character cut by a chunk's end until the next chunk, at every cut", () => {
    for (const character of ["é", "€", "😀"]) {
      const bytes = Buffer.from(character);
      for (let cut = 1; cut < bytes.length; cut += 1) {
        const encoder = new OutputEncoder();
        assert.deepEqual(encoder.encode(bytes.subarray(0, cut)), [], `${character} cut at ${cut}`);
        assert.equal(Buffer.concat(encoder.encode(bytes.subarray(cut))).toString(), character);
        assert.deepEqual(encoder.end(), []);
      }
      // One byte at a time: nothing until the character is whole.
      assert.equal(encodeChunks([...bytes].map((byte) => bytesOf(byte))), character);
    }
  });

  it("escapes each byte that is not valid UTF-8 as \\udcXX, wherever chunks cut it", () => {
    const cases: [number[], string][] = [
      [[0xc0, 0xaf], "\\udcc0\\udcaf"], // overlong '/'
      [[0xe0, 0x80, 0x80], "\\udce0\\udc80\\udc80"], // overlong three-byte NUL
      [[0xf0, 0x8f, 0xbf, 0xbf], "\\udcf0\\udc8f\\udcbf\\udcbf"], // overlong four-byte
      [[0xed, 0xa0, 0x80], "\\udced\\udca0\\udc80"], // a UTF-16 surrogate, encoded in UTF-8
      [[0xf4, 0x90, 0x80, 0x80], "\\udcf4\\udc90\\udc80\\udc80"], // beyond U+10FFFF
      [[0xf5, 0xff], "\\udcf5\\udcff"],
      [[0x61, 0x80, 0x62], "a\\udc80b"], // a stray continuation byte
      [[0xf0, 0x9f, 0x98, 0x80, 0x80], "😀\\udc80"],
      [[0xe2, 0x82, 0x41], "\\udce2\\udc82A"], // cut short by an ASCII byte
      [[0xe2, 0x82], "\\udce2\\udc82"], // cut short for good by the end of the stream
      [[0xf0, 0x9f, 0xe2, 0x82, 0xac], "\\udcf0\\udc9f€"], // a character after a broken one
      // Escapes among invalid bytes (not valid UTF-8 as a whole: the byte-by-byte path).
      [[0xff, 0x22, 0x5c, 0x0a, 0x01, 0x7f, 0xc3, 0xa9], '\\udcff\\"\\\\\\n\\u0001\u007fé'],
    ];
    for (const [bytes, expected] of cases) {
      assert.equal(
        encodeEveryCut(Buffer.from(bytes)),
        expected,
        Buffer.from(bytes).toString("hex"),
      );
    }
  });

  it("maps back to the exact bytes on random output cut at random points (seeded)", () => {
    const random = seededRandom(15);
    for (let round = 0; round < 2000; round += 1) {
      const bytes = randomOutput(random, 64);
      const text = encodeChunks(randomChunks(random, bytes));
      const label = `round ${String(round)}: ${bytes.toString("hex")}`;
      assert.equal(text, encodeChunks([bytes]), label);
      assert.deepEqual(outputTextToBytes(JSON.parse(`"${text}"`) as string), bytes, label);
    }
  });
});

describe("CommandOutputEncoder", () => {
  it("encodes each stream's bytes apart, passes output text through, and flushes at the end", () => {
    const encoder = new CommandOutputEncoder();
    const text = (piece: Parameters<CommandOutputEncoder["textOf"]>[0]) =>
      Buffer.concat(encoder.textOf(piece)).toString();
    assert.equal(text({ stream: "stdout", bytes: bytesOf(0x61, 0xe2, 0x82) }), "a");
    assert.equal(text({ stream: "stderr", bytes: bytesOf(0xf0, 0x9f) }), "");
    assert.equal(text({ stream: "stdout", bytes: bytesOf(0xac, 0x0a) }), "€\\n");
    assert.equal(text({ stream: "stdout", text: [Buffer.from("\\u0000")] }), "\\u0000");
    assert.deepEqual(
      encoder.end().map(({ stream, text: ending }) => [stream, Buffer.concat(ending).toString()]),
      [["stderr", "\\udcf0\\udc9f"]],
    );
  });
});

/**
 * A tiny program around native/output-text.h that encodes framed inputs from stdin. Each input
 * is a count of chunks, then each chunk as its length and bytes (lengths as 4 bytes, little
 * endian); each answer is the length of its output text, then the text.
 */
const harnessSource = `
#include "output-text.h"
#include <stdio.h>
#include <stdlib.h>

static int read_length(uint32_t *value) {
  unsigned char bytes[4];
  if (fread(bytes, 1, 4, stdin) != 4) return 0;
  *value = bytes[0] | bytes[1] << 8 | bytes[2] << 16 | (uint32_t)bytes[3] << 24;
  return 1;
}

static void write_length(size_t value) {
  unsigned char bytes[4] = {value & 255, value >> 8 & 255, value >> 16 & 255, value >> 24 & 255};
  fwrite(bytes, 1, 4, stdout);
}

int main(void) {
  uint32_t chunks;
  while (read_length(&chunks)) {
    struct output_text state = {0};
    char *text = NULL;
    size_t text_length = 0;
    for (uint32_t chunk = 0; chunk <= chunks; chunk++) {
      int final = chunk == chunks;
      uint32_t length = 0;
      if (!final && !read_length(&length)) return 1;
      unsigned char *in = malloc(OUTPUT_TEXT_CARRY + length + 1);
      if (fread(in + OUTPUT_TEXT_CARRY, 1, length, stdin) != length) return 1;
      text = realloc(text, text_length + OUTPUT_TEXT_EXPANSION * (length + OUTPUT_TEXT_CARRY));
      text_length += output_text_escape(&state, in + OUTPUT_TEXT_CARRY, length, final, text + text_length);
      free(in);
    }
    write_length(text_length);
    fwrite(text, 1, text_length, stdout);
    free(text);
  }
  return 0;
}
`;

interface NativeHarness {
  /** Why the comparison cannot run here, if it cannot. */
  skipReason: string | undefined;
  encode(inputs: Buffer[][]): string[];
  cleanUp(): void;
}

function buildNativeHarness(): NativeHarness {
  const folder = mkdtempSync(join(tmpdir(), "berth-output-encoder-"));
  const cleanUp = () => {
    rmSync(folder, { recursive: true, force: true });
  };
  const nativeDir = fileURLToPath(new URL("../../native", import.meta.url));
  const program = join(folder, "encode");
  writeFileSync(join(folder, "harness.c"), harnessSource);
  const compilers = ["cc", "gcc", "clang"];
  const failures: string[] = [];
  for (const compiler of compilers) {
    const build = spawnSync(compiler, ["-O1", "-I", nativeDir, "-o", program, "harness.c"], {
      cwd: folder,
      encoding: "utf8",
    });
    if (build.error === undefined && build.status === 0) {
      return {
        skipReason: undefined,
        encode: (inputs) => encodeNatively(program, inputs),
        cleanUp,
      };
    }
    failures.push(`${compiler}: ${build.error?.message ?? build.stderr.trim()}`);
  }
  return {
    skipReason: `no C compiler could build the harness around native/output-text.h (install gcc or clang to compare the two encoders): ${failures.join("; ")}`,
    encode: () => [],
    cleanUp,
  };
}

function encodeNatively(program: string, inputs: Buffer[][]): string[] {
  const length = (value: number) => {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32LE(value);
    return bytes;
  };
  const framed = inputs.flatMap((chunks) => [
    length(chunks.length),
    ...chunks.flatMap((chunk) => [length(chunk.length), chunk]),
  ]);
  const result = spawnSync(program, { input: Buffer.concat(framed), maxBuffer: 1 << 28 });
  assert.equal(result.status, 0, `the harness failed: ${result.stderr.toString()}`);
  const texts: string[] = [];
  for (let offset = 0; offset < result.stdout.length;) {
    const textLength = result.stdout.readUInt32LE(offset);
    texts.push(result.stdout.toString("utf8", offset + 4, offset + 4 + textLength));
    offset += 4 + textLength;
  }
  assert.equal(texts.length, inputs.length);
  return texts;
}

describe("OutputEncoder and the C helper's encoder (native/output-text.h)", () => {
  const harness = buildNativeHarness();
  after(() => {
    harness.cleanUp();
  });

  it(
    "give the same output text for the same chunks, on seeded random output",
    { skip: harness.skipReason ?? false },
    () => {
      const random = seededRandom(383);
      const inputs = Array.from({ length: 3000 }, () => {
        const bytes = randomOutput(random, 200);
        return random() < 0.5 ? [bytes] : randomChunks(random, bytes);
      });
      const nativeTexts = harness.encode(inputs);
      inputs.forEach((chunks, index) => {
        const label = `input ${String(index)}: ${Buffer.concat(chunks).toString("hex")}`;
        assert.equal(encodeChunks(chunks), nativeTexts[index], label);
      });
    },
  );
});
