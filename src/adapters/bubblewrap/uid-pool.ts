/**
 * Host uids for sandboxes: each live sandbox gets its own from [base, base + size), so no two
 * sessions share a host identity. A uid is reused only after its sandbox is gone.
 */
export class UidPool {
  private readonly free: number[];
  private readonly base: number;
  private readonly size: number;

  constructor(base: number, size: number) {
    this.base = base;
    this.size = size;
    this.free = Array.from({ length: size }, (_, index) => base + index);
  }

  /** A free uid, or undefined when every one is held by a sandbox (running, prepared or ending). */
  take(): number | undefined {
    return this.free.shift();
  }

  give(uid: number): void {
    if (uid >= this.base && uid < this.base + this.size && !this.free.includes(uid))
      this.free.push(uid);
  }

  /** The range, for messages: "80 uids, 2000000 to 2000079". */
  describe(): string {
    return `${this.size} uids, ${this.base} to ${this.base + this.size - 1}`;
  }
}
