import { mkdirSync } from "node:fs";
import { readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { volumeFileName } from "./volume-files.ts";

/**
 * What this machine knows of a volume's local image against the object store, kept beside the
 * image so it survives a restart (and a kill): which generation the image was at, and whether
 * it may hold changes no generation has yet.
 */
export interface ReplicaState {
  /** The generation the local image is, or started from (0: none yet). */
  generation: number;
  /** The image may hold changes the generation lacks (it was attached since). */
  pending: boolean;
  /** When the generation became durable, and its size in the store. */
  durableAt: string | undefined;
  storedBytes: number | undefined;
  /** How long the last checkpoint that wrote a generation took (clone to head moved). */
  lastCheckpointMs?: number | undefined;
}

const nothingYet: ReplicaState = {
  generation: 0,
  pending: true,
  durableAt: undefined,
  storedBytes: undefined,
};

/** One JSON file per volume, replaced atomically. */
export class ReplicaStates {
  private readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  async read(volumeId: string): Promise<ReplicaState> {
    const text = await readFile(this.file(volumeId), "utf8").catch(() => undefined);
    if (text === undefined) return { ...nothingYet };
    const parsed = JSON.parse(text) as Partial<ReplicaState>;
    return {
      generation: typeof parsed.generation === "number" ? parsed.generation : 0,
      pending: parsed.pending !== false,
      durableAt: parsed.durableAt,
      storedBytes: parsed.storedBytes,
      lastCheckpointMs: parsed.lastCheckpointMs,
    };
  }

  async write(volumeId: string, state: ReplicaState): Promise<void> {
    const file = this.file(volumeId);
    await writeFile(`${file}.new`, JSON.stringify(state), { mode: 0o600 });
    await rename(`${file}.new`, file);
  }

  async update(volumeId: string, change: Partial<ReplicaState>): Promise<ReplicaState> {
    const state = { ...(await this.read(volumeId)), ...change };
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
