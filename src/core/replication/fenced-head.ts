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

export interface AcquireOptions {
  /**
   * Holders known to be gone (for volumes: the node whose metadata lease this Berth waited out):
   * a head one of them holds is taken at once, with no lease to wait.
   */
  goneHolders?: ReadonlySet<string>;
}

/** How many failed writes since the head last changed are remembered (see unconfirmed). */
const maxUnconfirmedWrites = 16;

export class FencedHead {
  private readonly options: FencedHeadOptions;
  /** The head as this process last wrote it, and its etag; undefined until acquired. */
  private current: { record: HeadRecord; etag: string } | undefined;
  /**
   * Writes since the head last changed whose failure was not a 412 (a timeout, a cut connection):
   * each may have landed, or may still land later (a PUT that timed out on our side can reach the
   * store after a read-back saw it absent). All were conditional on the same version, so at most
   * one of them lands; a later 412 is checked against them before it is taken for a takeover.
   */
  private unconfirmed: HeadRecord[] = [];
  /** Set by acquire: whom the head was taken from because that holder was proved gone. */
  private goneHolder: string | undefined;
  /** Set once another process took the head over: every later write fails with it. */
  private lost: LostOwnershipError | undefined;

  constructor(options: FencedHeadOptions) {
    this.options = options;
  }

  /**
   * After acquire: the holder the head was taken from because it was gone (its head unchanged
   * for a whole lease, or named in goneHolders). Undefined when the head was new, let go, or
   * already this node's: a holder that released is not gone, it stopped cleanly.
   */
  get tookOverFrom(): string | undefined {
    return this.goneHolder;
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
   * lease when another process holds it; throws HeldElsewhereError if that one is alive. A holder
   * in `goneHolders` is known to be gone already (its node's metadata lease ran out): its head
   * is taken at once.
   */
  async acquire(options: AcquireOptions = {}): Promise<HeadRecord> {
    const { store, key, holder } = this.options;
    this.lost = undefined;
    this.goneHolder = undefined;
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
      const other = head.holder !== null && head.holder !== holder ? head.holder : undefined;
      if (other !== undefined && options.goneHolders?.has(other) !== true) {
        if (!(await this.stillUnchangedAfterLease(found.etag))) {
          // Changed while watched: its owner is alive, unless the change was letting go.
          const now = await this.peek();
          if (now?.holder !== null && now?.holder !== holder) {
            throw new HeldElsewhereError(this.options.what, now?.holder ?? other);
          }
          continue;
        }
      }
      const taken = await this.write(
        { ...head, holder, fence: head.fence + 1 },
        { ifMatch: found.etag },
      ).catch(retryIfRaced);
      if (taken !== undefined) {
        this.goneHolder = other;
        return taken;
      }
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
   * Writes the head under `condition`. On a failure the head is read back: if it carries this
   * write's id, the write landed and only its answer was lost (a store asked again may even
   * answer 412 for our own write). A failure other than a 412 is remembered as unconfirmed even
   * when the read-back shows the head unchanged: the PUT may still land after it.
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
      this.settle(record, etag);
      return record;
    } catch (error) {
      if (!(error instanceof PreconditionFailedError)) this.rememberUnconfirmed(record);
      const found = await this.options.store
        .get(this.options.key, maxHeadBytes)
        .catch(() => undefined);
      if (
        found !== undefined &&
        parseHead(found.body, this.options.key).writeId === record.writeId
      ) {
        this.settle(record, found.etag);
        return record;
      }
      throw error;
    }
  }

  /** The head is now `record`, at `etag`: writes that failed before it can no longer land. */
  private settle(record: HeadRecord, etag: string): void {
    this.current = { record, etag };
    this.unconfirmed = [];
  }

  /**
   * Keeps the most recent few: they pile up only while the store fails every write, and a write
   * that failed long ago has either landed or never will.
   */
  private rememberUnconfirmed(record: HeadRecord): void {
    this.unconfirmed.push(record);
    if (this.unconfirmed.length > maxUnconfirmedWrites) this.unconfirmed.shift();
  }

  /**
   * After a 412 on replacing the head: true when the head is one of our unconfirmed writes (see
   * write), so the head is still ours, as that write left it. Without this, the 412 would read
   * as another process having taken the head over.
   */
  private async adoptUnconfirmed(): Promise<boolean> {
    if (this.unconfirmed.length === 0) return false;
    const found = await this.options.store.get(this.options.key, maxHeadBytes);
    const candidates = this.unconfirmed;
    this.unconfirmed = [];
    if (found === undefined) return false;
    const writeId = parseHead(found.body, this.options.key).writeId;
    const landed = candidates.find((record) => record.writeId === writeId);
    if (landed === undefined) return false;
    this.settle(landed, found.etag);
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
