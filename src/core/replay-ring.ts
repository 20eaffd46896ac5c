/**
 * The last `capacityBytes` of a stream, for a client that reattaches: older bytes are
 * overwritten as new ones arrive. Bytes are copied into one buffer of that size (allocated at
 * the first byte), so a kept chunk never pins the larger buffer it was read into. A cut at the
 * oldest end may fall inside a character or an escape sequence: a terminal shows a stray glyph
 * at most, as after any scrollback limit.
 */
export class ReplayRing {
  private readonly capacityBytes: number;
  private ring: Buffer | undefined;
  /** Where the next byte goes. */
  private writeAt = 0;
  private heldBytes = 0;

  constructor(capacityBytes: number) {
    this.capacityBytes = capacityBytes;
  }

  append(chunk: Uint8Array): void {
    if (this.capacityBytes === 0 || chunk.length === 0) return;
    this.ring ??= Buffer.allocUnsafe(this.capacityBytes);
    const kept = chunk.length > this.capacityBytes ? chunk.subarray(-this.capacityBytes) : chunk;
    const untilEnd = Math.min(kept.length, this.capacityBytes - this.writeAt);
    this.ring.set(kept.subarray(0, untilEnd), this.writeAt);
    this.ring.set(kept.subarray(untilEnd), 0);
    this.writeAt = (this.writeAt + kept.length) % this.capacityBytes;
    this.heldBytes = Math.min(this.capacityBytes, this.heldBytes + kept.length);
  }

  /** A copy of what is held, oldest byte first. */
  contents(): Buffer {
    if (this.ring === undefined) return Buffer.alloc(0);
    const start = (this.writeAt - this.heldBytes + this.capacityBytes) % this.capacityBytes;
    if (start + this.heldBytes <= this.capacityBytes) {
      return Buffer.from(this.ring.subarray(start, start + this.heldBytes));
    }
    return Buffer.concat([this.ring.subarray(start), this.ring.subarray(0, this.writeAt)]);
  }

  get sizeBytes(): number {
    return this.heldBytes;
  }
}
