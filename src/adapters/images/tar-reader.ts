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
  /** Every byte of the member arrived. */
  end(): void;
  /**
   * Releases what the body holds (its open file). Called exactly once for every body: after
   * end(), or instead of it when the archive is cut short or refused, or a write failed.
   */
  close(): void;
}

export interface TarReaderOptions {
  onEntry: (entry: TarEntry) => EntryBody | undefined;
  /** Largest PAX or GNU long-name member accepted: they are held in memory whole. */
  maxMetadataBytes: number;
  /** Told each metadata member's size before its bytes are read (to count them). */
  onMetadata?: (sizeBytes: number) => void;
}

export class TarFormatError extends Error {}

/** What PAX and GNU long-name members say about the member after them. */
type HeaderOverrides = Partial<
  Pick<TarEntry, "path" | "linkPath" | "size" | "uid" | "gid" | "mtime">
>;

const blockSize = 512;

/** Members that describe the next one (or, for "g", all the next ones: Berth ignores those). */
const metadataKinds = {
  x: { kind: "pax", shown: "a PAX header" },
  g: { kind: "ignored", shown: "a PAX global header" },
  L: { kind: "longname", shown: "a GNU long name" },
  K: { kind: "longlink", shown: "a GNU long link name" },
} as const;

type MetadataKind = (typeof metadataKinds)[keyof typeof metadataKinds]["kind"];

/**
 * A streaming tar parser (ustar, PAX and GNU long names, base-256 numbers): feed it the bytes as
 * they arrive; it calls onEntry for each member and hands the member's bytes to the body it
 * returns. Nothing is buffered beyond one header and one metadata member (bounded by
 * maxMetadataBytes): a layer of any size streams through. Every number is parsed strictly: a
 * field that is not a whole number fails the archive rather than becoming NaN.
 */
export class TarReader {
  private readonly options: TarReaderOptions;
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes of the current member still to come, then the padding to the block boundary. */
  private bodyLeft = 0;
  private paddingLeft = 0;
  private body: EntryBody | undefined;
  /** A PAX or GNU long-name member being collected: its bytes, then what they apply to. */
  private meta: { kind: MetadataKind; chunks: Buffer[] } | undefined;
  private overrides: HeaderOverrides = {};
  private ended = false;

  constructor(options: TarReaderOptions) {
    this.options = options;
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

  /** Releases the member being written, if any; call once the input ends, however it ends. */
  close(): void {
    const body = this.body;
    this.body = undefined;
    body?.close();
  }

  private consumeBody(bytes: Buffer): void {
    if (this.meta !== undefined) {
      if (this.meta.kind !== "ignored") this.meta.chunks.push(Buffer.from(bytes));
    } else this.body?.write(bytes);
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
      const body = this.body;
      this.body = undefined;
      try {
        body?.end();
      } finally {
        body?.close();
      }
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
    const size = readNumber(header, 124, 12, "size");
    if (typeflag === "x" || typeflag === "g" || typeflag === "L" || typeflag === "K") {
      this.startMetadata(metadataKinds[typeflag], size);
      return;
    }
    const entry = this.entryFrom(header, typeflag, size);
    this.overrides = {};
    // A PAX size replaces the header's (e.g. files over 8 GiB).
    this.startMember(entry.size);
    this.body = this.options.onEntry(entry);
    if (entry.size === 0) this.finishMember();
  }

  private startMetadata(what: (typeof metadataKinds)[keyof typeof metadataKinds], size: number) {
    const { maxMetadataBytes, onMetadata } = this.options;
    if (size > maxMetadataBytes) {
      throw new TarFormatError(
        `${what.shown} of ${size} bytes is larger than the setting maxImageMetadataBytes (${maxMetadataBytes})`,
      );
    }
    onMetadata?.(size);
    this.meta = { kind: what.kind, chunks: [] };
    this.startMember(size);
    if (size === 0) this.finishMember();
  }

  /** Every member's size passes here: one that is no whole number would never end. */
  private startMember(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0)
      throw new TarFormatError(`a member has a size that is not a whole number (${size})`);
    this.bodyLeft = size;
    this.paddingLeft = (blockSize - (size % blockSize)) % blockSize;
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
      mode: readNumber(header, 100, 8, "mode"),
      uid: this.overrides.uid ?? readNumber(header, 108, 8, "uid"),
      gid: this.overrides.gid ?? readNumber(header, 116, 8, "gid"),
      mtime: this.overrides.mtime ?? readNumber(header, 136, 12, "mtime"),
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

/**
 * A header's number: octal ASCII, or GNU base-256 when the first byte has its high bit set.
 * Always a whole number from 0 to 2^53 - 1; anything else (negative base-256 values among
 * them) fails the archive.
 */
function readNumber(header: Buffer, offset: number, length: number, field: string): number {
  const bytes = header.subarray(offset, offset + length);
  const first = bytes[0] ?? 0;
  if ((first & 0x80) !== 0) {
    if ((first & 0x40) !== 0)
      throw new TarFormatError(`a header's ${field} field is a negative number`);
    let value = first & 0x3f;
    for (const byte of bytes.subarray(1)) value = value * 256 + byte;
    return requireSafe(value, `a header's ${field} field`);
  }
  const text = bytes
    .toString("latin1")
    .replace(/[\0 ]+/g, " ")
    .trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text))
    throw new TarFormatError(`a header's ${field} field ("${text}") is not a number`);
  return requireSafe(parseInt(text, 8), `a header's ${field} field`);
}

function requireSafe(value: number, what: string): number {
  if (!Number.isSafeInteger(value)) throw new TarFormatError(`${what} is too large`);
  return value;
}

function verifyChecksum(header: Buffer): void {
  const stored = readNumber(header, 148, 8, "checksum");
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
    const lengthText = bytes.subarray(offset, space).toString("latin1");
    const length = Number(lengthText);
    const end = offset + length;
    if (space === -1 || !/^\d+$/.test(lengthText) || end <= space + 1 || end > bytes.length)
      throw new TarFormatError("a PAX header has a record whose length is wrong");
    if (bytes[end - 1] !== 0x0a) throw new TarFormatError("a PAX header has an unended record");
    const record = bytes.subarray(space + 1, end - 1).toString("utf8");
    const equals = record.indexOf("=");
    if (equals <= 0) throw new TarFormatError("a PAX header has a record without key=value");
    applyPaxRecord(result, record.slice(0, equals), record.slice(equals + 1));
    offset = end;
  }
  return result;
}

/** The records Berth uses; others (atime, uname, comments, xattrs) are ignored. */
function applyPaxRecord(result: HeaderOverrides, key: string, value: string): void {
  switch (key) {
    case "path":
      result.path = value;
      break;
    case "linkpath":
      result.linkPath = value;
      break;
    case "size":
    case "uid":
    case "gid":
      result[key] = paxWholeNumber(key, value);
      break;
    case "mtime":
      result.mtime = paxTime(value);
      break;
  }
}

function paxWholeNumber(key: string, value: string): number {
  if (!/^\d+$/.test(value))
    throw new TarFormatError(`a PAX header has ${key} "${value}", not a number`);
  return requireSafe(Number(value), `a PAX header's ${key}`);
}

/** Seconds, maybe with a fraction (dropped) or before 1970 (kept as 1970: images need no older). */
function paxTime(value: string): number {
  if (!/^-?\d+(\.\d+)?$/.test(value))
    throw new TarFormatError(`a PAX header has mtime "${value}", not a number`);
  return Math.max(0, requireSafe(Math.floor(Number(value)), "a PAX header's mtime"));
}
