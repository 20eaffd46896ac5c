import type { Readable } from "node:stream";

const newline = 0x0a;
const carriageReturn = 0x0d;

/**
 * Reads an agent's stdout or stderr as lines, holding at most maxLineBytes of it whatever the
 * agent writes: a longer line is passed on cut at that bound (and says so), and the rest of it is
 * read and thrown away up to its newline. The stream is read as fast as it comes, so the agent
 * never waits on Berth. (readline keeps a line whole however long it is: one line of hundreds of
 * megabytes without a newline ran Berth out of memory.)
 */
export function readAgentOutput(
  output: Readable,
  maxLineBytes: number,
  onLine: (line: string) => void,
): void {
  const splitter = new LineSplitter(maxLineBytes, (line, cut) => {
    onLine(cut ? `${line}… [cut: the line was longer than ${maxLineBytes} bytes]` : line);
  });
  output.on("data", (chunk: Buffer) => {
    splitter.push(chunk);
  });
  output.on("end", () => {
    splitter.end();
  });
}

/** Splits bytes into lines of at most maxLineBytes (see readAgentOutput). */
export class LineSplitter {
  private readonly maxLineBytes: number;
  private readonly onLine: (line: string, cut: boolean) => void;
  /** The line so far: never more than maxLineBytes. */
  private readonly pending: Buffer;
  private pendingBytes = 0;
  /** The current line was already passed on cut: its rest is dropped until its newline. */
  private skipping = false;

  constructor(maxLineBytes: number, onLine: (line: string, cut: boolean) => void) {
    this.maxLineBytes = maxLineBytes;
    this.onLine = onLine;
    this.pending = Buffer.alloc(maxLineBytes);
  }

  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const end = chunk.indexOf(newline, start);
      if (end === -1) {
        this.append(chunk.subarray(start));
        return;
      }
      this.append(chunk.subarray(start, end));
      this.finishLine();
      start = end + 1;
    }
  }

  /** The stream ended: what follows the last newline is a line too. */
  end(): void {
    if (this.pendingBytes > 0) this.finishLine();
    this.skipping = false;
  }

  private append(piece: Buffer): void {
    if (this.skipping) return;
    const room = this.maxLineBytes - this.pendingBytes;
    if (piece.length <= room) {
      this.pendingBytes += piece.copy(this.pending, this.pendingBytes);
      return;
    }
    piece.copy(this.pending, this.pendingBytes, 0, room);
    this.pendingBytes = this.maxLineBytes;
    this.emit(true);
    this.skipping = true;
  }

  private finishLine(): void {
    if (this.skipping) this.skipping = false;
    else this.emit(false);
  }

  private emit(cut: boolean): void {
    let length = this.pendingBytes;
    if (cut) length = wholeCharactersLength(this.pending, length);
    else if (length > 0 && this.pending[length - 1] === carriageReturn) length -= 1;
    this.pendingBytes = 0;
    this.onLine(this.pending.toString("utf8", 0, length), cut);
  }
}

/**
 * The length of bytes[0, length) without a UTF-8 character the cut split, so a cut line does not
 * end in a replacement character.
 */
function wholeCharactersLength(bytes: Buffer, length: number): number {
  let lead = length - 1;
  // Back over continuation bytes (10xxxxxx) to the last character's first byte, at most 3.
  while (lead > 0 && length - lead < 4 && ((bytes[lead] ?? 0) & 0xc0) === 0x80) lead -= 1;
  if (lead < 0) return 0;
  const first = bytes[lead] ?? 0;
  const characterBytes = first >= 0xf0 ? 4 : first >= 0xe0 ? 3 : first >= 0xc0 ? 2 : 1;
  return lead + characterBytes <= length ? length : lead;
}
