import { randomUUID } from "node:crypto";
import { setTimeout as delay } from "node:timers/promises";
import { PreconditionFailedError, type ObjectStore } from "../object-store.ts";

/** A head is a small JSON record: anything larger is not one Berth wrote. */
const maxHeadBytes = 64 * 1024;

/**
 * The one object that says which generation of something (a volume, the metadata database) is
 * current, and which Berth process owns it. Only the owner writes it, and every write is
 * conditional on the version it last wrote (If-Match), so a process that lost ownership, however
 * stale, can never move it: its next write fails, and it learns it is no longer the owner.
 *
 * Ownership is taken with a conditional write too. It can be taken from another process only
 * when that one let go (released), or when the head has not changed for a whole lease: the owner
 * rewrites it at least once a lease (a checkpoint, or a renewal), so an unchanged head for that
 * long, as timed by the taker's own monotonic clock, means the owner is gone. No clocks of two
 * machines are ever compared.
 */
export interface HeadRecord {
  /** The owner's node id; null once it released the head. */
  holder: string | null;
  /** Raised by each change of owner: which owner wrote a generation. */
  fence: number;
  /** 0 before the first generation. */
  generation: number;
  /** What the current generation is (its manifest's key, sizes): the user's own fields. */
  payload: Record<string, unknown>;
  /** Unique per write: tells a write of our own whose answer was lost from someone else's. */
  writeId: string;
  writtenAt: string;
}

/** Another live process owns it (its head changed within the last lease). */
export class HeldElsewhereError extends Error {
  override readonly name = "HeldElsewhereError";
  readonly holder: string;
  constructor(what: string, holder: string) {
    super(`${what} is in use by another Berth process (node ${holder}) sharing the object store`);
    this.holder = holder;
  }
}

/** This process owned it, and someone else has taken it over since. */
export class LostOwnershipError extends Error {
  override readonly name = "LostOwnershipError";
}

export interface FencedHeadOptions {
  store: ObjectStore;
  key: string;
  /** This process's node id. */
  holder: string;
  /** How long an unchanged head must stay unchanged before another process may take it. */
  leaseMs: number;
  /** For messages: "session storage volume ..." */
  what: string;
}

export class FencedHead {
  private readonly options: FencedHeadOptions;
  /** The head as this process last wrote it, and its etag; undefined until acquired. */
  private current: { record: HeadRecord; etag: string } | undefined;
  /** A write whose answer was lost and could not be read back: it may have landed. */
  private unconfirmed: HeadRecord | undefined;
  /** Set once another process took the head over: every later write fails with it. */
  private lost: LostOwnershipError | undefined;

  constructor(options: FencedHeadOptions) {
    this.options = options;
  }

  /** The head as last read or written; undefined before acquire. */
  get record(): HeadRecord | undefined {
    return this.current?.record;
  }

  /**
   * Reads the head without taking it: undefined when there is none (nothing was ever stored).
   */
  async peek(): Promise<HeadRecord | undefined> {
    const found = await this.options.store.get(this.options.key, maxHeadBytes);
    return found === undefined ? undefined : parseHead(found.body, this.options.key);
  }

  /**
   * Makes this process the owner, creating the head (generation 0) if there is none. Waits out a
   * lease when another process holds it; throws HeldElsewhereError if that one is alive.
   */
  async acquire(): Promise<HeadRecord> {
    const { store, key, holder } = this.options;
    this.lost = undefined;
    for (;;) {
      const found = await store.get(key, maxHeadBytes);
      if (found === undefined) {
        const created = await this.write(
          { holder, fence: 1, generation: 0, payload: {} },
          { ifNoneMatch: "*" },
        ).catch(retryIfRaced);
        if (created !== undefined) return created;
        continue;
      }
      const head = parseHead(found.body, key);
      if (head.holder !== null && head.holder !== holder) {
        if (!(await this.stillUnchangedAfterLease(found.etag))) {
          // Changed while watched: its owner is alive, unless the change was letting go.
          const now = await this.peek();
          if (now?.holder !== null && now?.holder !== holder) {
            throw new HeldElsewhereError(this.options.what, now?.holder ?? head.holder);
          }
          continue;
        }
      }
      const taken = await this.write(
        { ...head, holder, fence: head.fence + 1 },
        { ifMatch: found.etag },
      ).catch(retryIfRaced);
      if (taken !== undefined) return taken;
    }
  }

  /** Records a new generation (its payload); renews the lease. LostOwnershipError if taken. */
  async advance(payload: Record<string, unknown>): Promise<HeadRecord> {
    const mine = this.owned();
    return this.replace({ ...mine, generation: mine.generation + 1, payload });
  }

  /** Rewrites the head unchanged but for its time: proof this owner is alive. */
  async renew(): Promise<HeadRecord> {
    return this.replace({ ...this.owned() });
  }

  /** Lets go: another process may take it at once. */
  async release(): Promise<void> {
    await this.replace({ ...this.owned(), holder: null });
    this.current = undefined;
  }

  /**
   * The head as this process holds it. Throws LostOwnershipError once another process has taken
   * it over (so every later attempt says why, not just that it is not held).
   */
  owned(): HeadRecord {
    if (this.current !== undefined) return this.current.record;
    throw this.lost ?? new Error(`${this.options.key} is not held`);
  }

  private async replace(
    next: Omit<HeadRecord, "writeId" | "writtenAt"> & Partial<HeadRecord>,
  ): Promise<HeadRecord> {
    const etag = this.current?.etag ?? "";
    try {
      return await this.write(next, { ifMatch: etag });
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) throw error;
      if (await this.adoptUnconfirmed()) {
        throw new Error(
          `${this.options.what}: an earlier write of this process whose answer was lost did land; try again`,
          { cause: error },
        );
      }
      this.current = undefined;
      this.lost = new LostOwnershipError(
        `${this.options.what} was taken over by another Berth process sharing the object store; this one no longer writes it`,
        { cause: error },
      );
      throw this.lost;
    }
  }

  /**
   * Writes the head under `condition`. A store that lost its answer and is asked again reports a
   * 412 for our own write: the head is read back and, if it carries our write id, it is ours.
   */
  private async write(
    next: Omit<HeadRecord, "writeId" | "writtenAt">,
    condition: { ifNoneMatch: "*" } | { ifMatch: string },
  ): Promise<HeadRecord> {
    const record: HeadRecord = {
      holder: next.holder,
      fence: next.fence,
      generation: next.generation,
      payload: next.payload,
      writeId: randomUUID(),
      writtenAt: new Date().toISOString(),
    };
    const body = Buffer.from(JSON.stringify(record));
    try {
      const { etag } = await this.options.store.put(this.options.key, body, condition);
      this.current = { record, etag };
      this.unconfirmed = undefined;
      return record;
    } catch (error) {
      const found = await this.options.store
        .get(this.options.key, maxHeadBytes)
        .catch(() => undefined);
      if (
        found !== undefined &&
        parseHead(found.body, this.options.key).writeId === record.writeId
      ) {
        this.current = { record, etag: found.etag };
        this.unconfirmed = undefined;
        return record;
      }
      if (found === undefined && !(error instanceof PreconditionFailedError)) {
        this.unconfirmed = record;
      }
      throw error;
    }
  }

  /**
   * After a 412 on replacing the head: true when the head is a write of ours whose answer was
   * lost (see write), so the head is still ours, as that write left it. Without this, the 412
   * would read as another process having taken the head over.
   */
  private async adoptUnconfirmed(): Promise<boolean> {
    if (this.unconfirmed === undefined) return false;
    const found = await this.options.store.get(this.options.key, maxHeadBytes);
    const unconfirmed = this.unconfirmed;
    this.unconfirmed = undefined;
    if (
      found === undefined ||
      parseHead(found.body, this.options.key).writeId !== unconfirmed.writeId
    ) {
      return false;
    }
    this.current = { record: unconfirmed, etag: found.etag };
    return true;
  }

  /** Watches the head for one lease: true if it never changed (its owner is gone). */
  private async stillUnchangedAfterLease(etag: string): Promise<boolean> {
    const deadline = performance.now() + this.options.leaseMs;
    const pollMs = Math.max(50, Math.min(1000, this.options.leaseMs / 10));
    while (performance.now() < deadline) {
      await delay(pollMs);
      const now = await this.options.store.head(this.options.key);
      if (now?.etag !== etag) return false;
    }
    return true;
  }
}

/** A conditional write lost a race with another process: undefined, to read and try again. */
function retryIfRaced(error: unknown): undefined {
  if (error instanceof PreconditionFailedError) return undefined;
  throw error;
}

function parseHead(body: Buffer, key: string): HeadRecord {
  const parsed = JSON.parse(body.toString("utf8")) as Partial<HeadRecord>;
  if (
    typeof parsed.fence !== "number" ||
    typeof parsed.generation !== "number" ||
    typeof parsed.writeId !== "string" ||
    (parsed.holder !== null && typeof parsed.holder !== "string")
  ) {
    throw new Error(`${key} in the object store is not a head Berth wrote`);
  }
  return {
    holder: parsed.holder,
    fence: parsed.fence,
    generation: parsed.generation,
    payload: parsed.payload ?? {},
    writeId: parsed.writeId,
    writtenAt: parsed.writtenAt ?? "",
  };
}
