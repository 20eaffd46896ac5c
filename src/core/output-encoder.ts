import { isUtf8 } from "node:buffer";
import type { OutputText } from "./output-text.ts";
import type { CommandOutput } from "./sandbox.ts";

const noBytes = Buffer.alloc(0);

/**
 * Turns one stream of a program's bytes into output text (output-text.ts), chunk by chunk, as
 * native/output-text.h does where a driver reads them in C:
 *   - valid UTF-8 is escaped exactly as JSON.stringify escapes it inside the quotes;
 *   - each byte that is not part of valid UTF-8 becomes the escape \udcXX (U+DC00 + the byte);
 *   - a character cut by a chunk's end waits (at most 3 bytes) for the next chunk, so no
 *     character or escape is ever split; end() gives what still waits, as escapes.
 * Valid UTF-8, the usual case, goes through the engine's own UTF-8 check and JSON.stringify
 * (native code); output with nothing to escape is passed on as the very buffer it came in.
 */
export class OutputEncoder {
  /** The start of a character the last chunk cut short: a valid prefix, 1 to 3 bytes. */
  private held = noBytes;

  encode(chunk: Buffer): OutputText {
    if (chunk.length === 0) return [];
    const text: Buffer[] = [];
    let rest = chunk;
    if (this.held.length > 0) {
      const completion = this.completeHeld(chunk);
      if (completion === undefined) return [];
      if (completion.text.length > 0) text.push(completion.text);
      rest = chunk.subarray(completion.used);
    }
    const cutLength = cutCharacterLength(rest);
    if (cutLength === 0) {
      const whole = encodeWhole(rest);
      if (whole.length > 0) text.push(whole);
      return text;
    }
    // Copied: holding a view would keep the whole chunk in memory.
    this.held = Buffer.from(rest.subarray(rest.length - cutLength));
    const whole = encodeWhole(rest.subarray(0, rest.length - cutLength));
    if (whole.length > 0) text.push(whole);
    return text;
  }

  /** The stream has ended: a character still waiting will never be completed. */
  end(): OutputText {
    const held = this.held;
    this.held = noBytes;
    return held.length === 0 ? [] : [encodeWhole(held)];
  }

  /**
   * The held character completed by the chunk's first bytes (or its bytes as escapes if the
   * chunk shows it invalid), with how many of the chunk's bytes that used; undefined when the
   * chunk is too short to tell, and is now held too.
   */
  private completeHeld(chunk: Buffer): { text: Buffer; used: number } | undefined {
    const held = this.held;
    const candidate = Buffer.concat([held, chunk.subarray(0, 4 - held.length)]);
    const length = utf8SequenceLength(candidate, 0, candidate.length);
    if (length === cutShort) {
      // Only when the whole chunk fits in candidate (four bytes complete any character).
      this.held = candidate;
      return undefined;
    }
    this.held = noBytes;
    if (length === notAStart) {
      // The held bytes start no character after all: each is escaped, and the chunk is read
      // from its first byte (the one that broke the sequence), as if never held.
      return { text: encodeWhole(held), used: 0 };
    }
    return { text: candidate.subarray(0, length), used: length - held.length };
  }
}

/**
 * One encoder per stream of a command's output, for output pieces of either kind: bytes are
 * encoded, output text a driver already encoded passes through.
 */
export class CommandOutputEncoder {
  private readonly encoders = { stdout: new OutputEncoder(), stderr: new OutputEncoder() };

  /** The piece as output text: empty when all its bytes wait for the next piece. */
  textOf(piece: CommandOutput): OutputText {
    const encoder = this.encoders[piece.stream];
    if ("bytes" in piece) return encoder.encode(piece.bytes);
    // A driver does not mix the two kinds in one stream; if one did, held bytes go first.
    const held = encoder.end();
    return held.length === 0 ? piece.text : [...held, ...piece.text];
  }

  /** The output has ended: what each stream still held, as escapes (stdout's first). */
  end(): { stream: CommandOutput["stream"]; text: OutputText }[] {
    const endings: { stream: CommandOutput["stream"]; text: OutputText }[] = [];
    for (const stream of ["stdout", "stderr"] as const) {
      const text = this.encoders[stream].end();
      if (text.length > 0) endings.push({ stream, text });
    }
    return endings;
  }
}

/** utf8SequenceLength: the bytes so far start a character that the available bytes cut short. */
const cutShort = -1;
/** utf8SequenceLength: the first byte cannot start a valid character here. */
const notAStart = 0;

/**
 * The length of the valid UTF-8 multi-byte sequence at bytes[start], looking no further than
 * `end`: cutShort if it is a valid start that `end` cuts, notAStart if it is not valid. (The
 * same ranges as native/output-text.h: no overlong forms, no surrogates, nothing above U+10FFFF.)
 */
function utf8SequenceLength(bytes: Buffer, start: number, end: number): number {
  const lead = bytes[start] ?? 0;
  let length: number;
  if (lead >= 0xc2 && lead <= 0xdf) length = 2;
  else if (lead >= 0xe0 && lead <= 0xef) length = 3;
  else if (lead >= 0xf0 && lead <= 0xf4) length = 4;
  else return notAStart;
  // The second byte's range; later bytes are any continuation byte.
  let low = 0x80;
  let high = 0xbf;
  if (lead === 0xe0)
    low = 0xa0; // overlong
  else if (lead === 0xed)
    high = 0x9f; // UTF-16 surrogates
  else if (lead === 0xf0)
    low = 0x90; // overlong
  else if (lead === 0xf4) high = 0x8f; // above U+10FFFF
  for (let index = 1; index < length; index += 1) {
    if (start + index >= end) return cutShort;
    const next = bytes[start + index] ?? 0;
    const valid = index === 1 ? next >= low && next <= high : (next & 0xc0) === 0x80;
    if (!valid) return notAStart;
  }
  return length;
}

/**
 * How many bytes at the end of `bytes` are a character cut short (0 to 3). Only one position
 * among the last three can be one (the bytes after a cut-short start are all continuation
 * bytes, which start nothing), and a scan from the front always reaches it, since a lead byte is
 * never part of an earlier character: so holding it back is exactly what a scan would do.
 */
function cutCharacterLength(bytes: Buffer): number {
  for (let start = Math.max(0, bytes.length - 3); start < bytes.length; start += 1) {
    if (utf8SequenceLength(bytes, start, bytes.length) === cutShort) return bytes.length - start;
  }
  return 0;
}

/** Bytes with no character cut at the end, as output text in one buffer. */
function encodeWhole(bytes: Buffer): Buffer {
  if (bytes.length === 0) return bytes;
  if (!isUtf8(bytes)) return encodeWithInvalidBytes(bytes);
  const decoded = bytes.toString("utf8");
  const quoted = JSON.stringify(decoded);
  // Nothing was escaped: the bytes are their own output text.
  if (quoted.length === decoded.length + 2) return bytes;
  return Buffer.from(quoted.slice(1, -1), "utf8");
}

const hexDigits = Buffer.from("0123456789abcdef");
const backslash = 0x5c;
/** For each ASCII byte JSON.stringify writes as \X: the X (0 for the others). */
const shortEscapes = new Uint8Array(128);
for (const [byte, letter] of Object.entries({ 8: "b", 9: "t", 10: "n", 12: "f", 13: "r" }))
  shortEscapes[Number(byte)] = letter.charCodeAt(0);
shortEscapes[0x22] = 0x22; // \"
shortEscapes[backslash] = backslash; // \\

/** The longest escape (\u00XX, \udcXX) is six bytes for one. */
const maxExpansion = 6;

/**
 * The slow path, for bytes that are not all valid UTF-8: byte by byte as the C helper does,
 * each escape written in place (no call per byte: binary output is all escapes).
 */
function encodeWithInvalidBytes(bytes: Buffer): Buffer {
  const text = Buffer.allocUnsafe(bytes.length * maxExpansion);
  let written = 0;
  const writeUnitEscape = (high: number, byte: number): void => {
    // \u00XX or \udcXX: the code unit's high byte as two letters, then the byte in hex.
    text[written++] = backslash;
    text[written++] = 0x75; // u
    text[written++] = hexDigits[high >> 4] ?? 0;
    text[written++] = hexDigits[high & 15] ?? 0;
    text[written++] = hexDigits[byte >> 4] ?? 0;
    text[written++] = hexDigits[byte & 15] ?? 0;
  };
  for (let index = 0; index < bytes.length;) {
    const byte = bytes[index] ?? 0;
    if (byte >= 0x20 && byte < 0x80 && byte !== 0x22 && byte !== backslash) {
      text[written++] = byte;
      index += 1;
      continue;
    }
    if (byte < 0x80) {
      const letter = shortEscapes[byte] ?? 0;
      if (letter === 0) writeUnitEscape(0x00, byte);
      else {
        text[written++] = backslash;
        text[written++] = letter;
      }
      index += 1;
      continue;
    }
    const length = utf8SequenceLength(bytes, index, bytes.length);
    if (length > 0) {
      for (const end = index + length; index < end; index += 1) text[written++] = bytes[index] ?? 0;
    } else {
      writeUnitEscape(0xdc, byte);
      index += 1;
    }
  }
  // Copied to its size: the buffer was sized for the worst case.
  return Buffer.from(text.subarray(0, written));
}
