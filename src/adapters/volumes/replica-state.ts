import { mkdirSync } from "node:fs";
import { open, readFile, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { syncFolder, volumeFileName } from "./volume-files.ts";

/**
 * What this machine knows of a volume's local image against the object store, kept beside the
 * image so it survives a restart (and a kill): which generation the image is based on, and
 * whether it may hold changes no generation has yet.
 */
export interface ReplicaState {
  /** The object store these fields are about (s3://bucket/prefix). */
  objectStore: string;
  /** The generation the local image (and its base snapshot) is, or started from; 0: none. */
  generation: number;
  /** That generation's manifest key: which history the image belongs to. */
  manifestKey: string | undefined;
  /** The image may hold changes the generation lacks (it was attached since). */
  pending: boolean;
  /** When the generation became durable, and what it took in the store. */
  durableAt: string | undefined;
  storedBytes: number | undefined;
  /** How long the last checkpoint that wrote a generation took (clone to head moved). */
  lastCheckpointMs: number | undefined;
}

/** One JSON file per volume, replaced atomically and durably. */
export class ReplicaStates {
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  /**
   * The volume's state; undefined when there is none, or when it cannot be read (a file a crash
   * cut short): then nothing is known, and the store's head is the truth.
   */
  async find(volumeId: string): Promise<ReplicaState | undefined> {
    const text = await readFile(this.file(volumeId), "utf8").catch(() => undefined);
    if (text === undefined) return undefined;
    try {
      const parsed = JSON.parse(text) as Partial<ReplicaState>;
      return {
        objectStore: typeof parsed.objectStore === "string" ? parsed.objectStore : "",
        generation: typeof parsed.generation === "number" ? parsed.generation : 0,
        manifestKey: typeof parsed.manifestKey === "string" ? parsed.manifestKey : undefined,
        pending: parsed.pending !== false,
        durableAt: parsed.durableAt,
        storedBytes: parsed.storedBytes,
        lastCheckpointMs: parsed.lastCheckpointMs,
      };
    } catch {
      return undefined;
    }
  }

  async write(volumeId: string, state: ReplicaState): Promise<void> {
    const file = this.file(volumeId);
    const partial = await open(`${file}.new`, "w", 0o600);
    try {
      await partial.writeFile(JSON.stringify(state));
      await partial.sync();
    } finally {
      await partial.close();
    }
    await rename(`${file}.new`, file);
    await syncFolder(this.dir);
  }

  /** Changes some fields; a volume with no state gets `initial` first. */
  async update(
    volumeId: string,
    initial: ReplicaState,
    change: Partial<ReplicaState>,
  ): Promise<ReplicaState> {
    const state = { ...((await this.find(volumeId)) ?? initial), ...change };
    await this.write(volumeId, state);
    return state;
  }

  async remove(volumeId: string): Promise<void> {
    await rm(this.file(volumeId), { force: true });
  }

  private file(volumeId: string): string {
    return join(this.dir, `${volumeFileName(volumeId)}.json`);
  }
}
