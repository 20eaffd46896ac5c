import { isUtf8 } from "node:buffer";

/** Longest UTF-8 sequence: a split one is held back at most this many bytes minus one. */
const maxSequenceLength = 4;

/**
 * Turns a program's output bytes into text for JSON events without losing any: valid UTF-8 is
 * decoded as usual, and each byte that is not part of valid UTF-8 becomes the lone surrogate
 * U+DC80..U+DCFF ("surrogateescape", as Python's PEP 383 defines it), which JSON carries as
 * "\udcXX". A reader that needs the exact bytes maps those back; one that does not sees U+FFFD
 * when printing. A character split across two chunks is held until the next chunk.
 */
export class OutputTextDecoder {
  private carry: Buffer = Buffer.alloc(0);

  decode(chunk: Buffer): string {
    const data = this.carry.length === 0 ? chunk : Buffer.concat([this.carry, chunk]);
    const cut = data.length - incompleteTailLength(data);
    this.carry = Buffer.from(data.subarray(cut));
    return decodeComplete(data.subarray(0, cut));
  }

  /** What is still held back can no longer be completed: it is escaped byte by byte. */
  end(): string {
    const rest = this.carry;
    this.carry = Buffer.alloc(0);
    return escapeBytes(rest);
  }
}

/** Maps decoded text back to the exact bytes the program wrote. */
export function outputTextToBytes(text: string): Buffer {
  const parts: Buffer[] = [];
  let plain = "";
  for (const character of text) {
    const code = character.charCodeAt(0);
    if (character.length === 1 && code >= 0xdc80 && code <= 0xdcff) {
      parts.push(Buffer.from(plain, "utf8"), Buffer.from([code - 0xdc00]));
      plain = "";
    } else {
      plain += character;
    }
  }
  parts.push(Buffer.from(plain, "utf8"));
  return Buffer.concat(parts);
}

function decodeComplete(bytes: Buffer): string {
  if (isUtf8(bytes)) return bytes.toString("utf8");
  let text = "";
  let start = 0; // start of the current run of valid sequences
  let index = 0;
  while (index < bytes.length) {
    const length = sequenceLength(bytes[index] ?? 0);
    if (
      length > 0 &&
      index + length <= bytes.length &&
      isUtf8(bytes.subarray(index, index + length))
    ) {
      index += length;
      continue;
    }
    text +=
      bytes.subarray(start, index).toString("utf8") + escapeBytes(bytes.subarray(index, index + 1));
    index += 1;
    start = index;
  }
  return text + bytes.subarray(start).toString("utf8");
}

function escapeBytes(bytes: Buffer): string {
  return String.fromCharCode(...[...bytes].map((byte) => 0xdc00 + byte));
}

/** How many bytes a sequence starting with this byte has; 0 for a byte that cannot start one. */
function sequenceLength(lead: number): number {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

/** Bytes at the end that start a sequence the chunk cut short (0 when none). */
function incompleteTailLength(data: Buffer): number {
  for (let back = 1; back < maxSequenceLength && back <= data.length; back += 1) {
    const byte = data[data.length - back] ?? 0;
    if ((byte & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const length = sequenceLength(byte);
    return length > back ? back : 0;
  }
  return 0;
}
