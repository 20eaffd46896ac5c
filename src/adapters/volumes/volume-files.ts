import { open } from "node:fs/promises";

/** Volume ids as file names: letters, digits and dashes only (Berth makes them as UUIDs). */
const safeVolumeId = /^[a-zA-Z0-9-]+$/;

/** The volume id as a file name; throws for one that could name another path. */
export function volumeFileName(volumeId: string): string {
  if (!safeVolumeId.test(volumeId)) throw new Error(`bad volume id ${volumeId}`);
  return volumeId;
}

export function isVolumeId(name: string): boolean {
  return safeVolumeId.test(name);
}

/** Makes the entries of a folder durable (a volume made must exist before its record does). */
export async function syncFolder(directory: string): Promise<void> {
  const folder = await open(directory, "r");
  try {
    await folder.sync();
  } finally {
    await folder.close();
  }
}
