import { Transform, type TransformCallback } from "node:stream";

/**
 * Passes bytes through, counting them, until more than `max` came; then fails with `tooMany()`.
 * In adapters/host: uploads, unpacking and downloads from the object store all bound a stream so.
 */
export class ByteLimit extends Transform {
  bytes = 0;
  private readonly max: number;
  private readonly tooMany: () => Error;

  constructor(max: number, tooMany: () => Error) {
    super();
    this.max = max;
    this.tooMany = tooMany;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.max) done(this.tooMany());
    else done(null, chunk);
  }
}
