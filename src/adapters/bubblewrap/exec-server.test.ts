import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReceivedBytes } from "./exec-server.ts";

/** Frames as the helper sends them: type byte, u32 length, payload. */
function frame(type: string, payload: string): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, "latin1");
  header.writeUInt32BE(Buffer.byteLength(payload), 1);
  return Buffer.concat([header, Buffer.from(payload)]);
}

/** Reads whole frames the way FrameReader does, from bytes delivered in the given cuts. */
function readFrames(bytes: Buffer, cuts: number[]): string[] {
  const received = new ReceivedBytes();
  const frames: string[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    received.push(bytes.subarray(start, cut));
    start = cut;
    while (received.length >= 5) {
      const header = received.peek(5);
      const length = header.readUInt32BE(1);
      if (received.length < 5 + length) break;
      received.take(5);
      frames.push(
        `${String.fromCharCode(header[0] ?? 0)}:${Buffer.concat(received.take(length)).toString()}`,
      );
    }
  }
  return frames;
}

describe("ReceivedBytes", () => {
  it("yields the same frames wherever reads cut them, headers included", () => {
    const bytes = Buffer.concat([
      frame("o", "hello"),
      frame("e", ""),
      frame("o", "world!"),
      frame("x", "exit 0"),
    ]);
    const expected = ["o:hello", "e:", "o:world!", "x:exit 0"];
    for (let first = 0; first <= bytes.length; first += 1) {
      for (let second = first; second <= bytes.length; second += 1) {
        assert.deepEqual(
          readFrames(bytes, [first, second]),
          expected,
          `cut at ${first}, ${second}`,
        );
      }
    }
  });
});
