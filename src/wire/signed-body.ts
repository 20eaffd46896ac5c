import { createHash, randomUUID } from "node:crypto";
import { chmodSync, mkdirSync, rmSync } from "node:fs";
import { open, unlink, type FileHandle } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { join } from "node:path";
import { Readable } from "node:stream";
import { BerthError } from "../core/errors.ts";

/** The largest body a route accepts, and the setting that says so (named in the error). */
export interface BodyLimit {
  bytes: number;
  setting: string;
}

export interface BodyHoldingSettings {
  /** Most bytes, in memory and on disk, that bodies not yet verified may hold at once. */
  maxUnverifiedBytes: number;
  /** A body stays in memory up to this size; past it, it goes to a file in `spillDir`. */
  maxInMemoryBytes: number;
  /** A root-only folder for the files of bodies too big for memory. */
  spillDir: string;
}

/**
 * Receives request bodies whose SHA-256 the signature covers, so that nothing acts on a byte
 * before the signature is checked. Until then a body is held by someone not yet authenticated
 * (an access key id is no secret), so all such bodies together may hold at most
 * `maxUnverifiedBytes`; each keeps at most `maxInMemoryBytes` in memory and spills the rest to
 * an already-unlinked file, which disappears with its descriptor even if Berth dies.
 */
export class BodyHolder {
  private readonly settings: BodyHoldingSettings;
  private unverifiedBytes = 0;

  constructor(settings: BodyHoldingSettings) {
    this.settings = settings;
    rmSync(settings.spillDir, { recursive: true, force: true });
    mkdirSync(settings.spillDir, { recursive: true, mode: 0o700 });
    chmodSync(settings.spillDir, 0o700);
  }

  /** Reads the whole body, hashing it as it arrives. Rejects past `limit` or the shared budget. */
  async receive(incoming: IncomingMessage, limit: BodyLimit | undefined): Promise<HeldBody> {
    const declaredBytes = Number(incoming.headers["content-length"] ?? 0) || 0;
    requireWithin(limit, declaredBytes);
    const body = new HeldBody(this, this.settings);
    try {
      // A declared length is reserved whole, so a body that fits is never cut off half-way.
      body.reserveUpTo(declaredBytes);
      // Not destroyed on an early exit: the error answer still has to reach the caller.
      for await (const chunk of incoming.iterator({
        destroyOnReturn: false,
      }) as AsyncIterable<Buffer>) {
        requireWithin(limit, body.sizeBytes + chunk.length);
        await body.append(chunk);
      }
    } catch (error) {
      await body.dispose();
      throw error;
    }
    body.seal();
    return body;
  }

  /** Counts `bytes` more for an unverified body that will then hold `bodyBytes`. */
  reserve(bytes: number, bodyBytes: number): void {
    if (bodyBytes > this.settings.maxUnverifiedBytes) throw this.beyondBudget();
    if (this.unverifiedBytes + bytes <= this.settings.maxUnverifiedBytes) {
      this.unverifiedBytes += bytes;
      return;
    }
    throw new BerthError(
      "ThrottlingException",
      "Berth is holding as many request bodies as it may before their signatures are checked (maxUnauthenticatedBufferBytes); retry shortly",
    );
  }

  release(bytes: number): void {
    this.unverifiedBytes -= bytes;
  }

  private beyondBudget(): BerthError {
    return new BerthError(
      "ValidationException",
      `A body whose signature covers its SHA-256 is held until the signature is checked, and this one is larger than the ${this.settings.maxUnverifiedBytes} bytes Berth holds for that (maxUnauthenticatedBufferBytes): stream it with x-amz-content-sha256: UNSIGNED-PAYLOAD (invocations and uploads) or raise the setting`,
      { reason: "FieldValidationFailed" },
    );
  }
}

/** A whole request body, in memory or in an unlinked file, with its SHA-256. */
export class HeldBody {
  private readonly holder: BodyHolder;
  private readonly settings: BodyHoldingSettings;
  private readonly hash = createHash("sha256");
  private sha256Hex: string | undefined;
  private chunks: Buffer[] = [];
  private file: FileHandle | undefined;
  private receivedBytes = 0;
  private reservedBytes = 0;
  private disposed = false;

  constructor(holder: BodyHolder, settings: BodyHoldingSettings) {
    this.holder = holder;
    this.settings = settings;
  }

  get sizeBytes(): number {
    return this.receivedBytes;
  }

  /** Hex SHA-256 of every byte received. */
  get sha256(): string {
    if (this.sha256Hex === undefined) throw new Error("the body has not been received in full");
    return this.sha256Hex;
  }

  /** Counts this body as holding `bytes` (no less than before) against the shared budget. */
  reserveUpTo(bytes: number): void {
    if (bytes <= this.reservedBytes) return;
    this.holder.reserve(bytes - this.reservedBytes, bytes);
    this.reservedBytes = bytes;
  }

  async append(chunk: Buffer): Promise<void> {
    this.reserveUpTo(this.receivedBytes + chunk.length);
    this.hash.update(chunk);
    this.receivedBytes += chunk.length;
    if (this.file === undefined && this.receivedBytes <= this.settings.maxInMemoryBytes) {
      this.chunks.push(chunk);
      return;
    }
    this.file ??= await this.spill();
    await writeFully(this.file, chunk);
  }

  /** All of it has arrived. */
  seal(): void {
    this.sha256Hex = this.hash.digest("hex");
  }

  /** The signature is checked: the body no longer counts against the unverified budget. */
  markVerified(): void {
    this.holder.release(this.reservedBytes);
    this.reservedBytes = 0;
  }

  /** The body as one buffer (a JSON body, bounded by maxRequestBodyBytes). */
  async bytes(): Promise<Buffer> {
    if (this.file === undefined) return Buffer.concat(this.chunks);
    const buffer = Buffer.alloc(this.sizeBytes);
    let offset = 0;
    while (offset < buffer.length) {
      const { bytesRead } = await this.file.read(buffer, offset, buffer.length - offset, offset);
      if (bytesRead === 0) throw new Error("the held body's file ended early");
      offset += bytesRead;
    }
    return buffer;
  }

  /** The body as a stream, read once. */
  stream(): Readable {
    if (this.file === undefined) return Readable.from(this.chunks, { objectMode: false });
    return this.file.createReadStream({ start: 0, autoClose: false });
  }

  /** Frees memory, the file and any budget still held. Safe to call twice. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.markVerified();
    this.chunks = [];
    await this.file?.close();
  }

  /** Moves what is in memory to a new file, unlinked at once so that nothing can leave it behind. */
  private async spill(): Promise<FileHandle> {
    const path = join(this.settings.spillDir, randomUUID());
    const file = await open(path, "wx+", 0o600);
    await unlink(path);
    for (const held of this.chunks) await writeFully(file, held);
    this.chunks = [];
    return file;
  }
}

async function writeFully(file: FileHandle, chunk: Buffer): Promise<void> {
  let offset = 0;
  while (offset < chunk.length) {
    const { bytesWritten } = await file.write(chunk, offset, chunk.length - offset);
    offset += bytesWritten;
  }
}

function requireWithin(limit: BodyLimit | undefined, bytes: number): void {
  if (limit === undefined || bytes <= limit.bytes) return;
  throw new BerthError(
    "ValidationException",
    `Request body is larger than ${limit.bytes} bytes (${limit.setting})`,
    { reason: "FieldValidationFailed" },
  );
}
