import { readdir, readFile, realpath } from "node:fs/promises";

/** Loop devices by the real path of the file each is attached to. */
export type BackingFiles = Map<string, string[]>;

/**
 * Which loop devices hold which files, read from /sys/block asynchronously. Many sessions attach
 * and detach at once, and each asks: rather than each reading every loop device's backing file
 * (a hundred attaches times a hundred devices), callers share scans: everyone who asks while one
 * is under way gets the next, one that started after they asked, so no one gets an answer older
 * than their question.
 */
export class LoopDeviceTable {
  /** The scan under way, if any. */
  private scanning: Promise<BackingFiles> | undefined;
  /** The scan that starts when the one under way ends, shared by everyone asking meanwhile. */
  private queued: Promise<BackingFiles> | undefined;
  private readonly scan: () => Promise<BackingFiles>;

  /** scan: reads the table (from /sys/block unless a test gives another). */
  constructor(scan: () => Promise<BackingFiles> = scanLoopDevices) {
    this.scan = scan;
  }

  /** Loop devices whose backing file is `image` (as /dev paths); none when the image is gone. */
  async backing(image: string): Promise<string[]> {
    // Joined before the first await, so the scan surely starts after this call.
    const scan = this.freshScan();
    const [backingFile, table] = await Promise.all([realPathIfAny(image), scan]);
    return backingFile === undefined ? [] : (table.get(backingFile) ?? []);
  }

  private freshScan(): Promise<BackingFiles> {
    if (this.queued !== undefined) return this.queued;
    if (this.scanning === undefined) return this.startScan();
    const settled = this.scanning.then(
      () => undefined,
      () => undefined,
    );
    this.queued = settled.then(() => {
      this.queued = undefined;
      return this.startScan();
    });
    return this.queued;
  }

  private startScan(): Promise<BackingFiles> {
    const scan = this.scan().finally(() => {
      if (this.scanning === scan) this.scanning = undefined;
    });
    this.scanning = scan;
    return scan;
  }
}

async function realPathIfAny(path: string): Promise<string | undefined> {
  return realpath(path).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  });
}

/** Reads every loop device's backing file (the kernel lists it by its real path). */
async function scanLoopDevices(): Promise<BackingFiles> {
  const devices = (await readdir("/sys/block")).filter((name) => name.startsWith("loop"));
  const backing = await Promise.all(
    devices.map((name) =>
      readFile(`/sys/block/${name}/loop/backing_file`, "utf8").then(
        (text) => text.trim(),
        () => undefined, // not attached
      ),
    ),
  );
  const table: BackingFiles = new Map();
  devices.forEach((name, index) => {
    const file = backing[index];
    if (file !== undefined) table.set(file, [...(table.get(file) ?? []), `/dev/${name}`]);
  });
  return table;
}
