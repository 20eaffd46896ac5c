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

  take(): number | undefined {
    return this.free.shift();
  }

  give(uid: number): void {
    if (uid >= this.base && uid < this.base + this.size && !this.free.includes(uid))
      this.free.push(uid);
  }
}
