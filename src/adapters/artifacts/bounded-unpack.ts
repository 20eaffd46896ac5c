import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { PassThrough, Transform, type Readable, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { StringDecoder } from "node:string_decoder";
import { createGunzip } from "node:zlib";
import { BerthError } from "../../core/errors.ts";
import { berthIsRoot, unpackUid } from "./unpack-workspace.ts";
import { ByteLimit } from "../host/byte-limit.ts";

/** How much one archive may unpack to: a small archive can otherwise fill the disk. */
export interface UnpackLimits {
  /** Decompressed bytes (maxArtifactUnpackedBytes). */
  maxUnpackedBytes: number;
  /** Files, folders and links (maxArtifactEntries). */
  maxEntries: number;
}

/**
 * Unpacks a .tar.gz stream into `tree` (see UnpackWorkspace) with GNU tar, run as the unpacking
 * user. The stream is decompressed here so its bytes can be counted, and tar names each member
 * as it reaches it (-v), so either limit stops tar as soon as it is passed, not once the disk is
 * full. GNU tar refuses members outside the tree (`..`, absolute paths) and never writes through
 * a symbolic link the archive made. `checks` (e.g. a limit on the compressed bytes) see the
 * stream first. `what` names the archive in messages ("The upload").
 */
export async function untarGz(
  archive: Readable,
  tree: string,
  limits: UnpackLimits,
  what: string,
  checks: Transform[] = [],
): Promise<void> {
  // tar's default quoting prints a newline in a member's name as \n: one line per member.
  const tar = new Unpacker(
    ["tar", "-xvf", "-", "-C", tree, "--no-same-owner", "--no-same-permissions"],
    { input: true },
  );
  tar.limitLines(limits.maxEntries, () => tooManyEntries(what, limits));
  const unpacked = new ByteLimit(limits.maxUnpackedBytes, () => tooLarge(what, limits));
  // Piped in, not part of the pipeline: a failure must not destroy a request body (and with it
  // the connection the answer goes back on); the caller discards what is left of it.
  const entry = new PassThrough();
  archive.pipe(entry);
  archive.once("error", (error) => entry.destroy(error));
  try {
    await pipeline([entry, ...checks, createGunzip(), unpacked, tar.input()]);
  } catch (error) {
    if (BerthError.isInstance(error)) tar.stop(error);
    else if (isGzipError(error)) tar.stop(notReadable(what, ".tar.gz", (error as Error).message));
    // Otherwise tar stopped reading: its exit says why.
  } finally {
    archive.unpipe(entry);
  }
  await tar.succeeded(what, ".tar.gz");
}

/**
 * Unpacks a .zip file into `tree` with unzip, run as the unpacking user. unzip writes the files
 * itself, so it first lists the entries and decompresses all of them into a counter: only an
 * archive proven within both limits, with no entry named outside its folder (`..`, an absolute
 * path: refused as GNU tar refuses them, where unzip alone would quietly rename them), is
 * unpacked (give it a private copy, so that all three reads see the same bytes). unzip never
 * writes through a symbolic link it made.
 */
export async function unzipFile(
  zipPath: string,
  tree: string,
  limits: UnpackLimits,
  what: string,
): Promise<void> {
  const listing = new Unpacker(["unzip", "-Z1", zipPath]);
  listing.limitLines(limits.maxEntries, () => tooManyEntries(what, limits));
  listing.checkLines((name) => (leavesFolder(name) ? entryOutside(what, name) : undefined));
  await listing.succeeded(what, ".zip");
  const content = new Unpacker(["unzip", "-p", zipPath]);
  content.limitBytes(limits.maxUnpackedBytes, () => tooLarge(what, limits));
  await content.succeeded(what, ".zip");
  await new Unpacker(["unzip", "-q", "-o", zipPath, "-d", tree]).succeeded(what, ".zip");
}

/**
 * One command run as the unpacking user, in a session of its own (no terminal to ask for a
 * password on), that can be stopped with a reason: a limit passed, or unreadable input.
 */
class Unpacker {
  private readonly child: ChildProcess;
  private readonly exit: Promise<{ code: number | null; stderr: string }>;
  private stopReason: BerthError | undefined;

  constructor(command: string[], options: { input?: boolean } = {}) {
    const [program = "", ...args] = berthIsRoot
      ? ["setpriv", `--reuid=${unpackUid}`, `--regid=${unpackUid}`, "--clear-groups", ...command]
      : command;
    this.child = spawn(program, args, {
      stdio: [options.input === true ? "pipe" : "ignore", "pipe", "pipe"],
      detached: true,
      env: { PATH: "/usr/bin:/bin", LC_ALL: "C" },
    });
    // Kept short: an archive can make the command complain about every member.
    let stderr = "";
    this.child.stderr?.on("data", (chunk: Buffer) => {
      if (stderr.length < 2000) stderr += chunk.toString("utf8");
    });
    // Output nobody counts is read and dropped, so the command never blocks on a full pipe.
    this.child.stdout?.resume();
    const name = command[0] ?? "";
    this.exit = once(this.child, "close").then(([code]) => ({
      code: code as number | null,
      stderr: stderr.trim().slice(0, 2000) || `${name} exited with ${String(code)}`,
    }));
  }

  input(): Writable {
    if (this.child.stdin === null) throw new Error("started without input");
    return this.child.stdin;
  }

  /** Stops the command once its output has more than `max` lines. */
  limitLines(max: number, tooMany: () => BerthError): void {
    let lines = 0;
    this.child.stdout?.on("data", (chunk: Buffer) => {
      for (let at = chunk.indexOf(10); at !== -1; at = chunk.indexOf(10, at + 1)) lines += 1;
      if (lines > max) this.stop(tooMany());
    });
  }

  /**
   * Stops the command at the first line of its output `problem` finds fault with. (A line is a
   * member's name: a .zip limits those to 64 KiB.)
   */
  checkLines(problem: (line: string) => BerthError | undefined): void {
    const decoder = new StringDecoder("utf8");
    let partial = "";
    this.child.stdout?.on("data", (chunk: Buffer) => {
      const lines = (partial + decoder.write(chunk)).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        const found = problem(line);
        if (found === undefined) continue;
        this.stop(found);
        return;
      }
    });
  }

  /** Stops the command once its output has more than `max` bytes. */
  limitBytes(max: number, tooMany: () => BerthError): void {
    let bytes = 0;
    this.child.stdout?.on("data", (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > max) this.stop(tooMany());
    });
  }

  stop(reason: BerthError): void {
    this.stopReason ??= reason;
    this.child.kill("SIGKILL");
  }

  /**
   * Waits until the command exited, so nothing it started still writes; throws why it was
   * stopped, or what it said if it failed.
   */
  async succeeded(what: string, format: string): Promise<void> {
    const { code, stderr } = await this.exit;
    if (this.stopReason !== undefined) throw this.stopReason;
    if (code !== 0) throw notReadable(what, format, stderr);
  }
}

/** An absolute name, or one with a `..` part (either slash: unzip reads DOS names too). */
function leavesFolder(name: string): boolean {
  return name.startsWith("/") || name.split(/[/\\]/).includes("..");
}

function isGzipError(error: unknown): boolean {
  const code = (error as NodeJS.ErrnoException).code;
  return code !== undefined && code.startsWith("Z_");
}

function tooLarge(what: string, limits: UnpackLimits): BerthError {
  return new BerthError(
    "ValidationException",
    `${what} unpacks to more than ${limits.maxUnpackedBytes} bytes (maxArtifactUnpackedBytes): ship less code, or raise the setting`,
    { reason: "FieldValidationFailed" },
  );
}

function tooManyEntries(what: string, limits: UnpackLimits): BerthError {
  return new BerthError(
    "ValidationException",
    `${what} holds more than ${limits.maxEntries} files, folders and links (maxArtifactEntries): ship fewer, or raise the setting`,
    { reason: "FieldValidationFailed" },
  );
}

function entryOutside(what: string, name: string): BerthError {
  return new BerthError(
    "ValidationException",
    `${what} has an entry outside its folder (${JSON.stringify(name)}): archive the code's folder with paths relative to it`,
    { reason: "FieldValidationFailed" },
  );
}

function notReadable(what: string, format: string, detail: string): BerthError {
  return new BerthError("ValidationException", `${what} is not a readable ${format}: ${detail}`, {
    reason: "CannotParse",
  });
}
