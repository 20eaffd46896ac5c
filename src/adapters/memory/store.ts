import {
  defaultEndpointName,
  type EndpointRecord,
  type RuntimeRecord,
  type RuntimeSummary,
  type RuntimeVersionRecord,
} from "../../core/model.ts";
import {
  DuplicateClientTokenError,
  NameTakenError,
  type IdempotencyRecord,
  type MetadataStore,
  type Page,
  type PageRequest,
  type SessionStorageRecord,
  type TaggedResource,
} from "../../core/store.ts";
import {
  Tables,
  endpointOf,
  endpointRow,
  idempotencyOf,
  idempotencyRow,
  keyOf,
  paginate,
  parseTags,
  runtimeOf,
  runtimeRow,
  sessionStorageOf,
  sessionStorageRow,
  summaryOf,
  versionOf,
  versionRow,
  type EndpointRow,
  type RuntimeRow,
  type VersionRow,
} from "./tables.ts";

/**
 * A write the SQLite store's constraints would refuse (a key already taken, a parent row
 * missing): refused here too, so a test on this store fails where production would.
 */
export class ConstraintError extends Error {
  override readonly name = "ConstraintError";
}

/**
 * The metadata store in memory, for tests and the unit suite: the SQLite store's semantics
 * (test/contracts/metadata-store.test.ts holds both to them) with nothing kept after close.
 * Each method runs to completion without interleaving, as node:sqlite's do; a transaction works
 * on a copy of the tables and swaps it in only when it returns, so a throw leaves nothing half
 * done.
 */
export class MemoryMetadataStore implements MetadataStore {
  private tables = new Tables();

  /** A change recorded with its idempotency record, all or nothing, settled as a promise. */
  private mutation(
    idempotency: IdempotencyRecord | undefined,
    change: (tables: Tables) => void,
  ): Promise<void> {
    return settle(() => {
      this.transaction((tables) => {
        saveIdempotency(tables, idempotency);
        change(tables);
      });
    });
  }

  private transaction<T>(work: (tables: Tables) => T): T {
    const draft = this.tables.copy();
    const result = work(draft);
    this.tables = draft;
    return result;
  }

  createRuntime(write: Parameters<MetadataStore["createRuntime"]>[0]): Promise<void> {
    const { runtime, version, defaultEndpoint, idempotency } = write;
    return this.mutation(idempotency, (tables) => {
      const taken = [...tables.runtimes.values()].some(
        (row) => row.id === runtime.id || row.name === runtime.name,
      );
      if (taken) throw new NameTakenError(runtime.name);
      tables.runtimes.set(runtime.id, runtimeRow(runtime, (tables.lastRuntimeSeq += 1)));
      insertVersion(tables, version);
      insertEndpoint(tables, defaultEndpoint);
    });
  }

  addRuntimeVersion(
    write: Parameters<MetadataStore["addRuntimeVersion"]>[0],
  ): Promise<RuntimeVersionRecord | undefined> {
    const { draft, idempotency } = write;
    return settle(() =>
      this.transaction((tables) => {
        const numbers = versionsOf(tables, draft.runtimeId).map((row) => row.version);
        if (numbers.length === 0) return undefined; // the runtime is gone
        const version: RuntimeVersionRecord = { ...draft, version: Math.max(...numbers) + 1 };
        saveIdempotency(tables, idempotency(version.version));
        insertVersion(tables, version);
        const at = version.createdAt;
        replace(tables.runtimes, version.runtimeId, {
          latestVersion: version.version,
          lastUpdatedAt: at,
        });
        replace(tables.endpoints, keyOf(version.runtimeId, defaultEndpointName), {
          targetVersion: version.version,
          lastUpdatedAt: at,
        });
        return version;
      }),
    );
  }

  setVersionStatus(change: Parameters<MetadataStore["setVersionStatus"]>[0]): Promise<void> {
    return settle(() => {
      this.transaction((tables) => {
        replace(tables.versions, keyOf(change.runtimeId, change.version), {
          status: change.status,
          failureReason: change.failureReason,
          lastUpdatedAt: change.at,
          // As SQLite's UPDATE: a change without a digest clears the one recorded.
          artifactDigest: change.artifactDigest,
        });
        if (change.status !== "READY") return;
        for (const endpoint of endpointsOf(tables, change.runtimeId)) {
          if (endpoint.targetVersion !== change.version) continue;
          replace(tables.endpoints, keyOf(endpoint.runtimeId, endpoint.name), {
            liveVersion: change.version,
            lastUpdatedAt: change.at,
          });
        }
      });
    });
  }

  deleteRuntime(runtimeId: string, idempotency: IdempotencyRecord | undefined): Promise<void> {
    return this.mutation(idempotency, (tables) => {
      tables.runtimes.delete(runtimeId);
      // SQLite's ON DELETE CASCADE: versions and endpoints go with their runtime; session
      // storage and idempotency records, which have no foreign key, stay.
      for (const row of versionsOf(tables, runtimeId)) {
        tables.versions.delete(keyOf(runtimeId, row.version));
      }
      for (const row of endpointsOf(tables, runtimeId)) {
        tables.endpoints.delete(keyOf(runtimeId, row.name));
      }
    });
  }

  deleteRuntimeVersion(
    runtimeId: string,
    version: number,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (tables) => {
      tables.versions.delete(keyOf(runtimeId, version));
    });
  }

  findRuntime(runtimeId: string): Promise<RuntimeRecord | undefined> {
    return settle(() => mapDefined(this.tables.runtimes.get(runtimeId), runtimeOf));
  }

  findRuntimeVersion(
    runtimeId: string,
    version: number,
  ): Promise<RuntimeVersionRecord | undefined> {
    return settle(() => mapDefined(this.tables.versions.get(keyOf(runtimeId, version)), versionOf));
  }

  listRuntimes(page: PageRequest): Promise<Page<RuntimeSummary>> {
    return settle(() => {
      const { runtimes, versions } = this.tables;
      const rows = bySeq([...runtimes.values()])
        .filter((runtime) => runtime.seq > (page.afterKey ?? 0))
        // An inner join, as SQLite's: a runtime whose latest version row is gone is not listed.
        .flatMap((runtime) => {
          const latest = versions.get(keyOf(runtime.id, runtime.latestVersion));
          return latest === undefined ? [] : [{ runtime, latest }];
        })
        .slice(0, page.limit + 1);
      return paginate(
        rows,
        page.limit,
        (row) => row.runtime.seq,
        (row) => summaryOf(row.runtime, row.latest),
      );
    });
  }

  listRuntimeVersions(runtimeId: string, page: PageRequest): Promise<Page<RuntimeSummary>> {
    return settle(() => {
      const runtime = this.tables.runtimes.get(runtimeId);
      if (runtime === undefined) return { items: [], lastKey: undefined };
      const rows = versionsOf(this.tables, runtimeId)
        .filter((row) => row.version > (page.afterKey ?? 0))
        .sort((a, b) => a.version - b.version)
        .slice(0, page.limit + 1);
      return paginate(
        rows,
        page.limit,
        (row) => row.version,
        (row) => summaryOf(runtime, row),
      );
    });
  }

  listArtifactDigests(): Promise<string[]> {
    return settle(() => [
      ...new Set(
        [...this.tables.versions.values()].flatMap((row) =>
          row.artifactDigest === undefined ? [] : [row.artifactDigest],
        ),
      ),
    ]);
  }

  listUnsettledVersions(): Promise<RuntimeVersionRecord[]> {
    return settle(() =>
      [...this.tables.versions.values()]
        .filter((row) => row.status === "CREATING" || row.status === "UPDATING")
        .sort((a, b) => compareText(a.createdAt, b.createdAt))
        .map(versionOf),
    );
  }

  createEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (tables) => {
      if (tables.endpoints.has(keyOf(endpoint.runtimeId, endpoint.name))) {
        throw new NameTakenError(endpoint.name);
      }
      insertEndpoint(tables, endpoint);
    });
  }

  updateEndpoint(
    endpoint: EndpointRecord,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (tables) => {
      // Only what an update may change: name, ARN, tags and creation time stay.
      replace(tables.endpoints, keyOf(endpoint.runtimeId, endpoint.name), {
        description: endpoint.description,
        targetVersion: endpoint.targetVersion,
        liveVersion: endpoint.liveVersion,
        lastUpdatedAt: endpoint.lastUpdatedAt,
      });
    });
  }

  deleteEndpoint(
    runtimeId: string,
    name: string,
    idempotency: IdempotencyRecord | undefined,
  ): Promise<void> {
    return this.mutation(idempotency, (tables) => {
      tables.endpoints.delete(keyOf(runtimeId, name));
    });
  }

  findEndpoint(runtimeId: string, name: string): Promise<EndpointRecord | undefined> {
    return settle(() => mapDefined(this.tables.endpoints.get(keyOf(runtimeId, name)), endpointOf));
  }

  listEndpoints(runtimeId: string, page: PageRequest): Promise<Page<EndpointRecord>> {
    return settle(() => {
      const rows = bySeq(endpointsOf(this.tables, runtimeId))
        .filter((row) => row.seq > (page.afterKey ?? 0))
        .slice(0, page.limit + 1);
      return paginate(rows, page.limit, (row) => row.seq, endpointOf);
    });
  }

  findTags(resource: TaggedResource): Promise<Record<string, string> | undefined> {
    return settle(() => mapDefined(taggedRow(this.tables, resource), (row) => parseTags(row.tags)));
  }

  updateTags(
    resource: TaggedResource,
    change: (current: Record<string, string>) => Record<string, string>,
  ): Promise<Record<string, string> | undefined> {
    return settle(() =>
      this.transaction((tables) => {
        const row = taggedRow(tables, resource);
        if (row === undefined) return undefined;
        const next = change(parseTags(row.tags));
        const tags = JSON.stringify(next);
        if (resource.endpointName === undefined) replace(tables.runtimes, row.key, { tags });
        else replace(tables.endpoints, row.key, { tags });
        return next;
      }),
    );
  }

  findIdempotency(scope: string, clientToken: string): Promise<IdempotencyRecord | undefined> {
    return settle(() =>
      mapDefined(this.tables.idempotency.get(keyOf(scope, clientToken)), idempotencyOf),
    );
  }

  expireIdempotency(before: string): Promise<void> {
    return settle(() => {
      for (const [key, row] of this.tables.idempotency) {
        if (row.createdAt < before) this.tables.idempotency.delete(key);
      }
    });
  }

  findSessionStorage(
    runtimeId: string,
    sessionId: string,
    mountPath: string,
  ): Promise<SessionStorageRecord | undefined> {
    return settle(() => {
      const row = [...this.tables.sessionStorage.values()].find(
        (candidate) =>
          candidate.runtimeId === runtimeId &&
          candidate.sessionId === sessionId &&
          candidate.mountPath === mountPath,
      );
      return mapDefined(row, sessionStorageOf);
    });
  }

  listSessionStorage(runtimeId?: string): Promise<SessionStorageRecord[]> {
    return settle(() =>
      [...this.tables.sessionStorage.values()]
        .filter((row) => runtimeId === undefined || row.runtimeId === runtimeId)
        .sort((a, b) => compareText(a.createdAt, b.createdAt))
        .map(sessionStorageOf),
    );
  }

  putSessionStorage(record: SessionStorageRecord): Promise<void> {
    return settle(() => {
      const rows = this.tables.sessionStorage;
      const sameStorage = [...rows.values()].some(
        (row) =>
          row.runtimeId === record.runtimeId &&
          row.sessionId === record.sessionId &&
          row.mountPath === record.mountPath,
      );
      if (rows.has(record.volumeId) || sameStorage) {
        throw new ConstraintError(
          `session storage ${record.volumeId} (${record.runtimeId}, ${record.sessionId}, ${record.mountPath}) already has a record`,
        );
      }
      rows.set(record.volumeId, sessionStorageRow(record));
    });
  }

  touchSessionStorage(
    volumeId: string,
    lastUsedAt: string,
    usedBytes: number | undefined,
  ): Promise<void> {
    return settle(() => {
      const rows = this.tables.sessionStorage;
      const row = rows.get(volumeId);
      if (row === undefined) return;
      rows.set(volumeId, { ...row, lastUsedAt, usedBytes: usedBytes ?? row.usedBytes });
    });
  }

  setSessionStorageVersion(volumeId: string, version: number): Promise<void> {
    return settle(() => {
      replace(this.tables.sessionStorage, volumeId, { version });
    });
  }

  deleteSessionStorage(volumeId: string): Promise<void> {
    return settle(() => {
      this.tables.sessionStorage.delete(volumeId);
    });
  }

  claimSessionStorage(volumeId: string, holder: string, at: string): Promise<boolean> {
    return settle(() => {
      const row = this.tables.sessionStorage.get(volumeId);
      if (row === undefined || (row.heldBy !== undefined && row.heldBy !== holder)) return false;
      this.tables.sessionStorage.set(volumeId, { ...row, heldBy: holder, heldSince: at });
      return true;
    });
  }

  releaseSessionStorage(volumeId: string, holder: string): Promise<void> {
    return settle(() => {
      if (this.tables.sessionStorage.get(volumeId)?.heldBy !== holder) return;
      replace(this.tables.sessionStorage, volumeId, { heldBy: undefined, heldSince: undefined });
    });
  }

  releaseSessionStorageClaims(holder: string): Promise<void> {
    return settle(() => {
      for (const [volumeId, row] of this.tables.sessionStorage) {
        if (row.heldBy !== holder) continue;
        replace(this.tables.sessionStorage, volumeId, { heldBy: undefined, heldSince: undefined });
      }
    });
  }

  /** Nothing to let go of: the tables go when the store does. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}

function saveIdempotency(tables: Tables, record: IdempotencyRecord | undefined): void {
  if (record === undefined) return;
  const key = keyOf(record.scope, record.clientToken);
  if (tables.idempotency.has(key)) throw new DuplicateClientTokenError();
  tables.idempotency.set(key, idempotencyRow(record));
}

function insertVersion(tables: Tables, version: RuntimeVersionRecord): void {
  const key = keyOf(version.runtimeId, version.version);
  requireRuntime(tables, version.runtimeId);
  if (tables.versions.has(key)) {
    throw new ConstraintError(`${version.runtimeId} already has a version ${version.version}`);
  }
  tables.versions.set(key, versionRow(version));
}

function insertEndpoint(tables: Tables, endpoint: EndpointRecord): void {
  const key = keyOf(endpoint.runtimeId, endpoint.name);
  requireRuntime(tables, endpoint.runtimeId);
  if (tables.endpoints.has(key)) {
    throw new ConstraintError(`${endpoint.runtimeId} already has an endpoint ${endpoint.name}`);
  }
  tables.endpoints.set(key, endpointRow(endpoint, (tables.lastEndpointSeq += 1)));
}

/** SQLite's foreign keys: a version or endpoint needs its runtime (deleted meanwhile, say). */
function requireRuntime(tables: Tables, runtimeId: string): void {
  if (!tables.runtimes.has(runtimeId)) throw new ConstraintError(`no runtime ${runtimeId}`);
}

/** Replaces a row with some members changed, as an UPDATE does; no row, no change. */
function replace<R extends object>(rows: Map<string, R>, key: string, change: Partial<R>): void {
  const row = rows.get(key);
  if (row !== undefined) rows.set(key, { ...row, ...change });
}

function versionsOf(tables: Tables, runtimeId: string): VersionRow[] {
  return [...tables.versions.values()].filter((row) => row.runtimeId === runtimeId);
}

function endpointsOf(tables: Tables, runtimeId: string): EndpointRow[] {
  return [...tables.endpoints.values()].filter((row) => row.runtimeId === runtimeId);
}

/** The row holding a resource's tags, found by key and checked against its ARN, as SQLite's. */
function taggedRow(
  tables: Tables,
  resource: TaggedResource,
): { key: string; tags: string } | undefined {
  const key =
    resource.endpointName === undefined
      ? resource.runtimeId
      : keyOf(resource.runtimeId, resource.endpointName);
  const row: RuntimeRow | EndpointRow | undefined =
    resource.endpointName === undefined ? tables.runtimes.get(key) : tables.endpoints.get(key);
  return row === undefined || row.arn !== resource.arn ? undefined : { key, tags: row.tags };
}

function bySeq<R extends { seq: number }>(rows: R[]): R[] {
  return rows.sort((a, b) => a.seq - b.seq);
}

/** Text ordered as SQLite orders it; timestamps are ASCII, where code units and bytes agree. */
function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function mapDefined<R, T>(row: R | undefined, map: (row: R) => T): T | undefined {
  return row === undefined ? undefined : map(row);
}

/** Runs the work now and reports its outcome as a promise, as the interface asks. */
function settle<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (error) {
    return Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
}
