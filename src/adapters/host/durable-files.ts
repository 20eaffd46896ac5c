import { closeSync, fsyncSync, openSync, writeSync } from "node:fs";

/**
 * Writes `bytes` to `path` (created or truncated, `mode`) and flushes them to disk before it
 * returns: a file then renamed into place is never found empty or cut short after a crash.
 */
export function writeFileDurably(path: string, bytes: Uint8Array, mode = 0o600): void {
  const descriptor = openSync(path, "w", mode);
  try {
    // writeSync may write less than asked.
    for (let written = 0; written < bytes.byteLength;) {
      written += writeSync(descriptor, bytes, written);
    }
    fsyncSync(descriptor);
  } finally {
    closeSync(descriptor);
  }
}

/** Flushes a folder's entries to disk: a file just renamed into it is then there after a crash. */
export function syncFolderNow(folder: string): void {
  const descriptor = openSync(folder, "r");
  try {
    fsyncSync(descriptor);
  } finally {
    closeSync(descriptor);
  }
}
