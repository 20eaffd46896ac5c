/** One member of a tar archive, with PAX and GNU long names already applied. */
export interface TarEntry {
  path: string;
  type: "file" | "directory" | "symlink" | "hardlink" | "other";
  /** The raw type flag, for messages about entries that are skipped. */
  typeflag: string;
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch. */
  mtime: number;
  size: number;
  linkPath: string;
}

/** Where a file entry's bytes go; undefined from onEntry skips them. */
export interface EntryBody {
  write(chunk: Buffer): void;
  end(): void;
}

export class TarFormatError extends Error {}

/** What PAX and GNU long-name members say about the member after them. */
type HeaderOverrides = Partial<
  Pick<TarEntry, "path" | "linkPath" | "size" | "uid" | "gid" | "mtime">
>;

const blockSize = 512;

/**
 * A streaming tar parser (ustar, PAX and GNU long names, base-256 numbers): feed it the bytes as
 * they arrive; it calls onEntry for each member and hands the member's bytes to the body it
 * returns. Nothing is buffered beyond one header: a layer of any size streams through.
 */
export class TarReader {
  private readonly onEntry: (entry: TarEntry) => EntryBody | undefined;
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes of the current member still to come, then the padding to the block boundary. */
  private bodyLeft = 0;
  private paddingLeft = 0;
  private body: EntryBody | undefined;
  /** A PAX or GNU long-name member being collected: its bytes, then what they apply to. */
  private meta: { kind: "pax" | "longname" | "longlink" | "ignored"; chunks: Buffer[] } | undefined;
  private overrides: HeaderOverrides = {};
  private ended = false;

  constructor(onEntry: (entry: TarEntry) => EntryBody | undefined) {
    this.onEntry = onEntry;
  }

  feed(chunk: Buffer): void {
    let offset = 0;
    while (offset < chunk.length && !this.ended) {
      if (this.bodyLeft > 0) {
        const take = Math.min(this.bodyLeft, chunk.length - offset);
        this.consumeBody(chunk.subarray(offset, offset + take));
        offset += take;
        this.bodyLeft -= take;
        if (this.bodyLeft === 0) this.finishMember();
      } else if (this.paddingLeft > 0) {
        const take = Math.min(this.paddingLeft, chunk.length - offset);
        offset += take;
        this.paddingLeft -= take;
      } else {
        const need = blockSize - this.pending.length;
        const take = Math.min(need, chunk.length - offset);
        this.pending = Buffer.concat([this.pending, chunk.subarray(offset, offset + take)]);
        offset += take;
        if (this.pending.length === blockSize) {
          const header = this.pending;
          this.pending = Buffer.alloc(0);
          this.readHeader(header);
        }
      }
    }
  }

  /** Call at the end of the input: a member cut short is an error. */
  end(): void {
    if (this.bodyLeft > 0 || this.meta !== undefined || this.pending.length > 0) {
      throw new TarFormatError("the archive ends in the middle of a member");
    }
  }

  private consumeBody(bytes: Buffer): void {
    if (this.meta !== undefined) this.meta.chunks.push(Buffer.from(bytes));
    else this.body?.write(bytes);
  }

  private finishMember(): void {
    if (this.meta !== undefined) {
      const { kind, chunks } = this.meta;
      this.meta = undefined;
      const text = Buffer.concat(chunks).toString("utf8");
      if (kind === "pax") Object.assign(this.overrides, parsePax(text));
      else if (kind === "longname") this.overrides.path = text.replace(/\0.*$/s, "");
      else if (kind === "longlink") this.overrides.linkPath = text.replace(/\0.*$/s, "");
    } else {
      this.body?.end();
      this.body = undefined;
    }
  }

  private readHeader(header: Buffer): void {
    if (header.every((byte) => byte === 0)) {
      // The end-of-archive marker; what follows (a second zero block, padding) is ignored.
      this.ended = true;
      return;
    }
    verifyChecksum(header);
    const typeflag = String.fromCharCode(header[156] ?? 0);
    const size = readNumber(header, 124, 12);
    this.paddingLeft = (blockSize - (size % blockSize)) % blockSize;
    this.bodyLeft = size;
    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      const kinds = { x: "pax", g: "ignored", L: "longname", K: "longlink" } as const;
      this.meta = { kind: kinds[typeflag], chunks: [] };
      if (size === 0) this.finishMember();
      return;
    }
    const entry = this.entryFrom(header, typeflag, size);
    this.overrides = {};
    // A PAX size replaces the header's (e.g. files over 8 GiB).
    this.bodyLeft = entry.size;
    this.paddingLeft = (blockSize - (entry.size % blockSize)) % blockSize;
    this.body = this.onEntry(entry);
    if (this.bodyLeft === 0) {
      this.body?.end();
      this.body = undefined;
    }
  }

  private entryFrom(header: Buffer, typeflag: string, size: number): TarEntry {
    const name = readString(header, 0, 100);
    const magic = readString(header, 257, 6);
    const prefix = magic.startsWith("ustar") ? readString(header, 345, 155) : "";
    const type =
      typeflag === "0" || typeflag === "\0" || typeflag === "7"
        ? "file"
        : typeflag === "5"
          ? "directory"
          : typeflag === "2"
            ? "symlink"
            : typeflag === "1"
              ? "hardlink"
              : "other";
    return {
      path: this.overrides.path ?? (prefix === "" ? name : `${prefix}/${name}`),
      type,
      typeflag,
      mode: readNumber(header, 100, 8),
      uid: this.overrides.uid ?? readNumber(header, 108, 8),
      gid: this.overrides.gid ?? readNumber(header, 116, 8),
      mtime: this.overrides.mtime ?? readNumber(header, 136, 12),
      // Only regular files carry data in the archive; a hard link's size field may be non-zero.
      size: type === "file" || type === "other" ? (this.overrides.size ?? size) : 0,
      linkPath: this.overrides.linkPath ?? readString(header, 157, 100),
    };
  }
}

function readString(header: Buffer, offset: number, length: number): string {
  const field = header.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? length : end).toString("utf8");
}

/** Octal ASCII, or GNU base-256 when the first byte has its high bit set. */
function readNumber(header: Buffer, offset: number, length: number): number {
  const field = header.subarray(offset, offset + length);
  if (((field[0] ?? 0) & 0x80) !== 0) {
    let value = (field[0] ?? 0) & 0x7f;
    for (const byte of field.subarray(1)) value = value * 256 + byte;
    return value;
  }
  const text = field
    .toString("latin1")
    .replace(/[\0 ]+/g, " ")
    .trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`bad number field "${text}"`);
  return parseInt(text, 8);
}

function verifyChecksum(header: Buffer): void {
  const stored = readNumber(header, 148, 8);
  let sum = 0;
  for (let index = 0; index < blockSize; index++) {
    sum += index >= 148 && index < 156 ? 0x20 : (header[index] ?? 0);
  }
  if (sum !== stored) throw new TarFormatError("a header's checksum is wrong (corrupt archive)");
}

/** PAX records: "LENGTH key=value\n", LENGTH counting the whole record in bytes. */
function parsePax(text: string): HeaderOverrides {
  const bytes = Buffer.from(text, "utf8");
  const result: HeaderOverrides = {};
  for (let offset = 0; offset < bytes.length;) {
    const space = bytes.indexOf(0x20, offset);
    const length = parseInt(bytes.subarray(offset, space).toString("latin1"), 10);
    if (space === -1 || !Number.isSafeInteger(length) || length <= 0)
      throw new TarFormatError("bad PAX header");
    const record = bytes.subarray(space + 1, offset + length - 1).toString("utf8");
    const equals = record.indexOf("=");
    const key = record.slice(0, equals);
    const value = record.slice(equals + 1);
    if (key === "path") result.path = value;
    else if (key === "linkpath") result.linkPath = value;
    else if (key === "size") result.size = Number(value);
    else if (key === "uid") result.uid = Number(value);
    else if (key === "gid") result.gid = Number(value);
    else if (key === "mtime") result.mtime = Math.floor(Number(value));
    offset += length;
  }
  return result;
}
