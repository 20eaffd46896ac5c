import { createHash } from "node:crypto";
import {
  ObjectStoreUnavailableError,
  PreconditionFailedError,
  TooLargeObjectError,
  type ObjectInfo,
  type ObjectStore,
  type StoredObject,
  type WriteCondition,
} from "../../core/object-store.ts";

/**
 * An object store in memory, with S3's conditional writes: for fast unit and contract tests.
 * `failing` makes every request fail as an unreachable store would.
 */
export class MemoryObjectStore implements ObjectStore {
  readonly location = "memory://";
  failing = false;
  private readonly objects = new Map<string, { body: Buffer; etag: string; lastModified: Date }>();

  get(key: string, maxBytes: number): Promise<StoredObject | undefined> {
    return this.answer(() => {
      const found = this.objects.get(key);
      if (found === undefined) return undefined;
      if (found.body.byteLength > maxBytes) throw tooLarge(key, found.body.byteLength, maxBytes);
      return { body: Buffer.from(found.body), etag: found.etag };
    });
  }

  put(key: string, body: Uint8Array, condition?: WriteCondition): Promise<{ etag: string }> {
    return this.answer(() => {
      const existing = this.objects.get(key);
      if (condition !== undefined) {
        const holds =
          "ifNoneMatch" in condition
            ? existing === undefined
            : existing !== undefined && existing.etag === condition.ifMatch;
        if (!holds) throw new PreconditionFailedError(`${key} was written by someone else`);
      }
      const etag = createHash("md5").update(body).update(String(Math.random())).digest("hex");
      this.objects.set(key, { body: Buffer.from(body), etag, lastModified: new Date() });
      return { etag };
    });
  }

  head(key: string): Promise<ObjectInfo | undefined> {
    return this.answer(() => {
      const found = this.objects.get(key);
      return found === undefined ? undefined : info(key, found);
    });
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const keys = await this.answer(() =>
      [...this.objects.keys()].filter((key) => key.startsWith(prefix)).sort(),
    );
    for (const key of keys) {
      const found = this.objects.get(key);
      if (found !== undefined) yield info(key, found);
    }
  }

  delete(keys: readonly string[]): Promise<void> {
    return this.answer(() => {
      for (const key of keys) this.objects.delete(key);
    });
  }

  /** Every key held, for tests that look inside. */
  keys(): string[] {
    return [...this.objects.keys()].sort();
  }

  private answer<T>(work: () => T): Promise<T> {
    if (this.failing) {
      return Promise.reject(new ObjectStoreUnavailableError("object store: unreachable (test)"));
    }
    try {
      return Promise.resolve(work());
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
  }
}

function info(key: string, found: { body: Buffer; etag: string; lastModified: Date }): ObjectInfo {
  return { key, etag: found.etag, size: found.body.byteLength, lastModified: found.lastModified };
}

function tooLarge(key: string, size: number, maxBytes: number): TooLargeObjectError {
  return new TooLargeObjectError(`${key} holds ${size} bytes, more than the ${maxBytes} expected`);
}

/**
 * An object store that hands every request to `inner`: a test double extends it and overrides
 * only the requests it changes (fails, holds, counts).
 */
export class ForwardingObjectStore<
  Inner extends ObjectStore = MemoryObjectStore,
> implements ObjectStore {
  readonly location: string;
  readonly inner: Inner;

  constructor(inner: Inner, location = inner.location) {
    this.inner = inner;
    this.location = location;
  }

  get(key: string, maxBytes: number): Promise<StoredObject | undefined> {
    return this.inner.get(key, maxBytes);
  }

  put(key: string, body: Uint8Array, condition?: WriteCondition): Promise<{ etag: string }> {
    return this.inner.put(key, body, condition);
  }

  head(key: string): Promise<ObjectInfo | undefined> {
    return this.inner.head(key);
  }

  list(prefix: string): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix);
  }

  delete(keys: readonly string[]): Promise<void> {
    return this.inner.delete(keys);
  }
}
