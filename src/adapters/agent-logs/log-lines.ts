import { constants } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";

/** How much of a file is read at a time, from its end. */
const chunkBytes = 65_536;

/**
 * A file's lines, last first, read from its end a chunk at a time: a reader that wants the
 * latest lines reads only as far back as it needs. Nothing when the file does not exist. Never
 * follows a symbolic link.
 */
export async function* linesBackwards(path: string): AsyncGenerator<string> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
    throw error;
  }
  try {
    let position = (await handle.stat()).size;
    // The start of the line the last chunk began in the middle of.
    let rest = Buffer.alloc(0);
    while (position > 0) {
      const length = Math.min(chunkBytes, position);
      position -= length;
      const chunk = Buffer.alloc(length);
      await handle.read(chunk, 0, length, position);
      const buffer = rest.length === 0 ? chunk : Buffer.concat([chunk, rest]);
      let end = buffer.length;
      for (let newline = buffer.lastIndexOf(0x0a, end - 1); newline >= 0;) {
        if (end > newline + 1) yield buffer.toString("utf8", newline + 1, end);
        end = newline;
        newline = end > 0 ? buffer.lastIndexOf(0x0a, end - 1) : -1;
      }
      rest = buffer.subarray(0, end);
    }
    if (rest.length > 0) yield rest.toString("utf8");
  } finally {
    await handle.close();
  }
}

/** A file's first line, if it ends within `maxBytes`; undefined when the file does not exist. */
export async function firstLine(path: string, maxBytes: number): Promise<string | undefined> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  try {
    const buffer = Buffer.alloc(maxBytes);
    const { bytesRead } = await handle.read(buffer, 0, maxBytes, 0);
    const newline = buffer.subarray(0, bytesRead).indexOf(0x0a);
    return newline < 0 ? undefined : buffer.toString("utf8", 0, newline);
  } finally {
    await handle.close();
  }
}
