/**
 * Command output travels as "output text": the content of a JSON string (what goes between the
 * quotes), so that no byte a program writes is lost, whatever it is:
 * - valid UTF-8 is the text it encodes, escaped as JSON.stringify escapes it;
 * - each byte that is not part of valid UTF-8 is the lone surrogate U+DC80..U+DCFF
 *   ("surrogateescape", as Python's PEP 383 defines it), which JSON carries as "\udcXX".
 * A reader that needs the exact bytes maps those back (outputTextToBytes); one that does not
 * sees U+FFFD when printing. Sandboxes produce it from a program's bytes where they read them
 * (for bubblewrap, native/output-text.h), never splitting a character or an escape.
 *
 * It stays in the pieces it was read in, joined only by the write that sends it: copying the
 * pieces together would cost more than anything else Berth does per byte of output.
 */
export type OutputText = readonly Buffer[];

export function outputTextLength(text: OutputText): number {
  let length = 0;
  for (const part of text) length += part.length;
  return length;
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
