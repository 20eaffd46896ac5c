import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { after, afterEach, beforeEach, describe, it } from "node:test";
import { MemoryMetadataStore } from "../../src/adapters/memory/store.ts";
import { openPostgres } from "../../src/adapters/postgres/open.ts";
import { SqliteMetadataStore } from "../../src/adapters/sqlite/store.ts";
import type { NodeRegistration } from "../../src/core/cluster/cluster-store.ts";
import { BerthError } from "../../src/core/errors.ts";
import type {
  EndpointRecord,
  RuntimeConfig,
  RuntimeRecord,
  RuntimeVersionRecord,
} from "../../src/core/model.ts";
import { encodePageToken, readPageRequest } from "../../src/core/pagination.ts";
import {
  DuplicateClientTokenError,
  NameTakenError,
  type IdempotencyRecord,
  type MetadataStore,
  type SessionStorageRecord,
} from "../../src/core/store.ts";
import { postgresMissing, startPostgres, type TestPostgres } from "../support/postgres.ts";

/*
 * The contract every MetadataStore keeps, written once against the interface and run against
 * each implementation below. Where the interface leaves a detail open, the SQLite store's
 * behaviour is the contract: it is what production runs.
 */

let directory: string | undefined;
after(() => {
  if (directory !== undefined) rmSync(directory, { recursive: true, force: true });
});
let databases = 0;
function freshDatabasePath(): string {
  directory ??= mkdtempSync(join(tmpdir(), "berth-store-contract-"));
  return join(directory, `${(databases += 1)}.db`);
}

/** One PostgreSQL server for the file, started when first needed; a database per store. */
let postgres: Promise<TestPostgres> | undefined;
after(async () => {
  await (await postgres)?.stop();
});
async function freshPostgresUrl(): Promise<string> {
  postgres ??= startPostgres();
  return (await postgres).freshDatabase();
}

/** Every implementation, each with a way to open a fresh, empty store (skip: why it cannot). */
const implementations: {
  name: string;
  skip: string | false;
  open: () => MetadataStore | Promise<MetadataStore>;
}[] = [
  { name: "SQLite", skip: false, open: () => new SqliteMetadataStore(freshDatabasePath()) },
  { name: "memory", skip: false, open: () => new MemoryMetadataStore() },
  {
    name: "PostgreSQL",
    skip: postgresMissing() ?? false,
    open: async () => {
      const stores = await openPostgres(await freshPostgresUrl(), { leaseMs: 60_000 });
      await stores.cluster.close(); // the metadata store alone then owns the pool
      return stores.metadata;
    },
  },
];

const at = (second: number): string => new Date(Date.UTC(2025, 0, 1, 0, 0, second)).toISOString();

function config(description: string): RuntimeConfig {
  return {
    artifact: {
      kind: "code",
      bucket: "agents",
      prefix: "agent.zip",
      versionId: undefined,
      runtime: "PYTHON_3_13",
      entryPoint: ["main.py"],
    },
    roleArn: undefined,
    networkMode: "PUBLIC",
    description,
    serverProtocol: "HTTP",
    idleRuntimeSessionTimeoutSeconds: 900,
    maxLifetimeSeconds: 28_800,
    environmentVariables: { MODE: "test" },
    sessionStorageMountPaths: ["/mnt/data"],
    requestHeaderAllowlist: [],
  };
}

/** What a stored value reads back as: stores keep configs, tags and responses as JSON. */
const asJson = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;

function endpointOf(runtime: RuntimeRecord, name: string, targetVersion: number): EndpointRecord {
  return {
    runtimeId: runtime.id,
    name,
    arn: `${runtime.arn}/runtime-endpoint/${name}`,
    description: "",
    targetVersion,
    liveVersion: undefined,
    createdAt: runtime.createdAt,
    lastUpdatedAt: runtime.createdAt,
    tags: name === "DEFAULT" ? {} : { endpoint: name },
  };
}

/** Runtime number n: everything createRuntime writes for it. */
function runtimeWrite(n: number, idempotency?: IdempotencyRecord) {
  const id = `agent_${n}-AAAAAAAAAA`;
  const runtime: RuntimeRecord = {
    id,
    name: `agent_${n}`,
    arn: `arn:aws:bedrock-agentcore:us-east-1:123456789012:runtime/${id}`,
    latestVersion: 1,
    createdAt: at(n),
    lastUpdatedAt: at(n),
    tags: { team: "blue" },
  };
  const version: RuntimeVersionRecord = {
    runtimeId: id,
    version: 1,
    config: config(`first of ${n}`),
    status: "CREATING",
    failureReason: undefined,
    createdAt: at(n),
    lastUpdatedAt: at(n),
  };
  return { runtime, version, defaultEndpoint: endpointOf(runtime, "DEFAULT", 1), idempotency };
}

function token(scope: string, createdAt = at(0), response: unknown = { ok: true }) {
  return { scope, clientToken: "token-1", requestHash: "hash-1", response, createdAt };
}

function draft(runtimeId: string, description: string, createdAt = at(50)) {
  return {
    runtimeId,
    config: config(description),
    status: "UPDATING" as const,
    failureReason: undefined,
    createdAt,
    lastUpdatedAt: createdAt,
  };
}

function storageRecord(n: number, runtimeId = "agent_1-AAAAAAAAAA"): SessionStorageRecord {
  return {
    runtimeId,
    sessionId: `session-${n}`,
    mountPath: "/mnt/data",
    volumeId: `volume-${n}`,
    version: 1,
    sizeBytes: 1_048_576,
    usedBytes: undefined,
    createdAt: at(n),
    lastUsedAt: at(n),
    heldBy: undefined,
  };
}

for (const implementation of implementations) {
  describe(`MetadataStore contract: ${implementation.name}`, { skip: implementation.skip }, () => {
    let store: MetadataStore;
    beforeEach(async () => {
      store = await implementation.open();
    });
    afterEach(async () => {
      await store.close();
    });

    /** Creates runtimes 1..count; answers the first one's write. */
    async function createRuntimes(count = 1) {
      for (let n = 1; n <= count; n += 1) await store.createRuntime(runtimeWrite(n));
      return runtimeWrite(1);
    }

    const addVersion = (runtimeId: string, description = "next", idempotency?: IdempotencyRecord) =>
      store.addRuntimeVersion({
        draft: draft(runtimeId, description),
        idempotency: () => idempotency,
      });

    async function allRuntimeNames(limit: number): Promise<string[][]> {
      const pages: string[][] = [];
      let afterKey: number | undefined;
      do {
        const page = await store.listRuntimes({ afterKey, limit });
        pages.push(page.items.map((item) => item.name));
        afterKey = page.lastKey;
      } while (afterKey !== undefined);
      return pages;
    }

    describe("runtimes and versions", () => {
      it("finds a created runtime, its first version and its DEFAULT endpoint as written", async () => {
        const { runtime, version, defaultEndpoint } = await createRuntimes();
        assert.deepEqual(await store.findRuntime(runtime.id), runtime);
        // Members set to undefined (roleArn, versionId) come back absent, as JSON keeps them.
        assert.deepEqual(await store.findRuntimeVersion(runtime.id, 1), {
          ...version,
          config: asJson(version.config),
        });
        assert.deepEqual(await store.findEndpoint(runtime.id, "DEFAULT"), defaultEndpoint);
      });

      it("answers undefined for what does not exist", async () => {
        const { runtime } = await createRuntimes();
        assert.equal(await store.findRuntime("agent_9-AAAAAAAAAA"), undefined);
        assert.equal(await store.findRuntimeVersion(runtime.id, 2), undefined);
        assert.equal(await store.findEndpoint(runtime.id, "prod"), undefined);
        assert.equal(await store.findIdempotency("CreateAgentRuntime", "token-1"), undefined);
        assert.equal(await store.findSessionStorage(runtime.id, "session-1", "/mnt"), undefined);
        assert.deepEqual(await store.listSessionStorage(), []);
      });

      it("refuses a taken runtime name with NameTakenError, writing nothing of it", async () => {
        const first = await createRuntimes();
        const second = runtimeWrite(2, token("CreateAgentRuntime"));
        second.runtime.name = first.runtime.name;
        await assert.rejects(store.createRuntime(second), (error: unknown) => {
          assert.ok(error instanceof NameTakenError);
          assert.equal(error.takenName, first.runtime.name);
          return true;
        });
        assert.equal(await store.findRuntime(second.runtime.id), undefined);
        assert.equal(await store.findEndpoint(second.runtime.id, "DEFAULT"), undefined);
        assert.equal(await store.findIdempotency("CreateAgentRuntime", "token-1"), undefined);
        assert.deepEqual(await allRuntimeNames(10), [["agent_1"]]);
      });

      it("frees a runtime's name when the runtime is deleted", async () => {
        const { runtime } = await createRuntimes();
        await store.deleteRuntime(runtime.id, undefined);
        const again = runtimeWrite(2);
        again.runtime.name = runtime.name;
        await store.createRuntime(again);
        assert.equal((await store.findRuntime(again.runtime.id))?.name, runtime.name);
      });

      it("numbers a new version after the highest, makes it latest and retargets DEFAULT only", async () => {
        const { runtime } = await createRuntimes();
        await store.createEndpoint(endpointOf(runtime, "pinned", 1), undefined);
        await store.setVersionStatus({
          runtimeId: runtime.id,
          version: 1,
          status: "READY",
          failureReason: undefined,
          at: at(40),
        });
        const numbersSeen: number[] = [];
        const added = await store.addRuntimeVersion({
          draft: draft(runtime.id, "second"),
          idempotency: (number) => {
            numbersSeen.push(number);
            return token(`UpdateAgentRuntime/${runtime.id}`, at(50), { version: number });
          },
        });
        assert.deepEqual(added, { ...draft(runtime.id, "second"), version: 2 });
        assert.deepEqual(numbersSeen, [2]);
        const found = await store.findIdempotency(`UpdateAgentRuntime/${runtime.id}`, "token-1");
        assert.deepEqual(found?.response, { version: 2 });
        assert.deepEqual(await store.findRuntime(runtime.id), {
          ...runtime,
          latestVersion: 2,
          lastUpdatedAt: at(50),
        });
        assert.equal((await store.findRuntimeVersion(runtime.id, 2))?.status, "UPDATING");
        const defaultEndpoint = await store.findEndpoint(runtime.id, "DEFAULT");
        // DEFAULT keeps serving version 1 until version 2 is READY.
        assert.deepEqual([defaultEndpoint?.targetVersion, defaultEndpoint?.liveVersion], [2, 1]);
        assert.equal(defaultEndpoint?.lastUpdatedAt, at(50));
        const pinned = await store.findEndpoint(runtime.id, "pinned");
        assert.deepEqual([pinned?.targetVersion, pinned?.liveVersion], [1, 1]);
      });

      it("adds no version to a runtime that is gone, and keeps no token for it", async () => {
        const added = await addVersion("agent_9-AAAAAAAAAA", "orphan", token("Update"));
        assert.equal(added, undefined);
        assert.equal(await store.findIdempotency("Update", "token-1"), undefined);
      });

      it("gives 20 concurrent addRuntimeVersion calls distinct, contiguous numbers", async () => {
        const { runtime } = await createRuntimes();
        const added = await Promise.all(
          Array.from({ length: 20 }, (_, index) => addVersion(runtime.id, `update ${index}`)),
        );
        const numbers = added.map((version) => version?.version ?? 0).sort((a, b) => a - b);
        assert.deepEqual(
          numbers,
          Array.from({ length: 20 }, (_, index) => index + 2),
        );
        assert.equal((await store.findRuntime(runtime.id))?.latestVersion, 21);
        assert.equal((await store.findEndpoint(runtime.id, "DEFAULT"))?.targetVersion, 21);
        const listed = await store.listRuntimeVersions(runtime.id, {
          afterKey: undefined,
          limit: 100,
        });
        assert.equal(listed.items.length, 21);
      });

      it("setVersionStatus settles a version; a READY one goes live where it is targeted", async () => {
        const { runtime } = await createRuntimes();
        await store.createEndpoint(endpointOf(runtime, "pinned", 1), undefined);
        await addVersion(runtime.id); // version 2, which DEFAULT now targets
        await store.setVersionStatus({
          runtimeId: runtime.id,
          version: 1,
          status: "READY",
          failureReason: undefined,
          artifactDigest: "sha256:aaaa",
          at: at(60),
        });
        const first = await store.findRuntimeVersion(runtime.id, 1);
        assert.deepEqual(
          [first?.status, first?.lastUpdatedAt, first?.artifactDigest],
          ["READY", at(60), "sha256:aaaa"],
        );
        const pinned = await store.findEndpoint(runtime.id, "pinned");
        assert.deepEqual([pinned?.liveVersion, pinned?.lastUpdatedAt], [1, at(60)]);
        const defaultEndpoint = await store.findEndpoint(runtime.id, "DEFAULT");
        assert.deepEqual(
          [defaultEndpoint?.liveVersion, defaultEndpoint?.lastUpdatedAt],
          [undefined, at(50)],
        );

        await store.setVersionStatus({
          runtimeId: runtime.id,
          version: 2,
          status: "UPDATE_FAILED",
          failureReason: "the image could not be pulled",
          at: at(61),
        });
        const second = await store.findRuntimeVersion(runtime.id, 2);
        assert.deepEqual(
          [second?.status, second?.failureReason],
          ["UPDATE_FAILED", "the image could not be pulled"],
        );
        assert.equal((await store.findEndpoint(runtime.id, "DEFAULT"))?.liveVersion, undefined);
      });

      it("lists each pinned digest once; a status change without a digest clears it", async () => {
        const { runtime } = await createRuntimes(2);
        await addVersion(runtime.id);
        const settle = (runtimeId: string, version: number, artifactDigest?: string) =>
          store.setVersionStatus({
            runtimeId,
            version,
            status: "READY",
            failureReason: undefined,
            ...(artifactDigest === undefined ? {} : { artifactDigest }),
            at: at(70),
          });
        await settle(runtime.id, 1, "sha256:aaaa");
        await settle(runtime.id, 2, "sha256:aaaa");
        await settle(runtimeWrite(2).runtime.id, 1, "sha256:bbbb");
        assert.deepEqual((await store.listArtifactDigests()).sort(), [
          "sha256:aaaa",
          "sha256:bbbb",
        ]);
        await store.deleteRuntime(runtimeWrite(2).runtime.id, undefined);
        assert.deepEqual(await store.listArtifactDigests(), ["sha256:aaaa"]);
        await settle(runtime.id, 1);
        await settle(runtime.id, 2);
        assert.deepEqual(await store.listArtifactDigests(), []);
        assert.equal((await store.findRuntimeVersion(runtime.id, 1))?.artifactDigest, undefined);
      });

      it("lists versions still CREATING or UPDATING, oldest first", async () => {
        const { runtime } = await createRuntimes(2);
        await addVersion(runtime.id); // agent_1 version 2, created at(50)
        await store.setVersionStatus({
          runtimeId: runtimeWrite(2).runtime.id,
          version: 1,
          status: "READY",
          failureReason: undefined,
          at: at(70),
        });
        const unsettled = await store.listUnsettledVersions();
        assert.deepEqual(
          unsettled.map((version) => [version.runtimeId, version.version, version.status]),
          [
            [runtime.id, 1, "CREATING"],
            [runtime.id, 2, "UPDATING"],
          ],
        );
      });

      it("deletes one version, leaving the other versions and the endpoints that named it", async () => {
        const { runtime } = await createRuntimes();
        await addVersion(runtime.id);
        await addVersion(runtime.id);
        await store.createEndpoint(endpointOf(runtime, "pinned", 2), undefined);
        await store.deleteRuntimeVersion(runtime.id, 2, token("DeleteVersion"));
        assert.equal(await store.findRuntimeVersion(runtime.id, 2), undefined);
        const listed = await store.listRuntimeVersions(runtime.id, {
          afterKey: undefined,
          limit: 10,
        });
        assert.deepEqual(
          listed.items.map((item) => item.version),
          [1, 3],
        );
        assert.equal((await store.findEndpoint(runtime.id, "pinned"))?.targetVersion, 2);
        assert.ok(await store.findIdempotency("DeleteVersion", "token-1"));
      });

      it("deletes a runtime with its versions, endpoints and tags; storage and tokens stay", async () => {
        const { runtime } = await createRuntimes(2);
        await addVersion(runtime.id);
        await store.createEndpoint(endpointOf(runtime, "prod", 1), undefined);
        await store.putSessionStorage(storageRecord(1, runtime.id));
        await store.deleteRuntime(runtime.id, token(`DeleteAgentRuntime/${runtime.id}`));

        assert.equal(await store.findRuntime(runtime.id), undefined);
        assert.equal(await store.findRuntimeVersion(runtime.id, 1), undefined);
        assert.equal(await store.findRuntimeVersion(runtime.id, 2), undefined);
        assert.equal(await store.findEndpoint(runtime.id, "prod"), undefined);
        const endpoints = await store.listEndpoints(runtime.id, { afterKey: undefined, limit: 10 });
        assert.deepEqual(endpoints, { items: [], lastKey: undefined });
        const versions = await store.listRuntimeVersions(runtime.id, {
          afterKey: undefined,
          limit: 10,
        });
        assert.deepEqual(versions, { items: [], lastKey: undefined });
        const tagged = { arn: runtime.arn, runtimeId: runtime.id, endpointName: undefined };
        assert.equal(await store.findTags(tagged), undefined);
        // The token answers a retried delete; session storage is removed by SessionStorage.
        assert.ok(await store.findIdempotency(`DeleteAgentRuntime/${runtime.id}`, "token-1"));
        assert.equal((await store.listSessionStorage(runtime.id)).length, 1);
        // The other runtime is untouched.
        assert.deepEqual(await allRuntimeNames(10), [["agent_2"]]);
      });
    });

    describe("pagination", () => {
      it("pages runtimes in creation order, with a key only when more follow", async () => {
        await createRuntimes(5);
        assert.deepEqual(await allRuntimeNames(2), [
          ["agent_1", "agent_2"],
          ["agent_3", "agent_4"],
          ["agent_5"],
        ]);
        // A page that takes exactly what is left says nothing follows.
        assert.deepEqual(await allRuntimeNames(5), [
          ["agent_1", "agent_2", "agent_3", "agent_4", "agent_5"],
        ]);
        assert.deepEqual(await allRuntimeNames(1), [
          ["agent_1"],
          ["agent_2"],
          ["agent_3"],
          ["agent_4"],
          ["agent_5"],
        ]);
      });

      it("continues after its key, whatever was deleted or created since", async () => {
        await createRuntimes(4);
        const first = await store.listRuntimes({ afterKey: undefined, limit: 2 });
        await store.deleteRuntime(runtimeWrite(2).runtime.id, undefined);
        await store.deleteRuntime(runtimeWrite(3).runtime.id, undefined);
        await store.createRuntime(runtimeWrite(5));
        const second = await store.listRuntimes({ afterKey: first.lastKey, limit: 2 });
        assert.deepEqual(
          second.items.map((item) => item.name),
          ["agent_4", "agent_5"],
        );
        assert.equal(second.lastKey, undefined);
      });

      it("answers an empty page for a key past the end", async () => {
        await createRuntimes(2);
        const page = await store.listRuntimes({ afterKey: 1_000_000, limit: 10 });
        assert.deepEqual(page, { items: [], lastKey: undefined });
      });

      it("lists each runtime with its latest version", async () => {
        const { runtime } = await createRuntimes();
        await addVersion(runtime.id, "second");
        const page = await store.listRuntimes({ afterKey: undefined, limit: 10 });
        assert.deepEqual(page.items, [
          {
            runtimeId: runtime.id,
            name: runtime.name,
            arn: runtime.arn,
            version: 2,
            description: "second",
            status: "UPDATING",
            lastUpdatedAt: at(50),
          },
        ]);
      });

      it("pages a runtime's versions by number, and only that runtime's", async () => {
        const { runtime } = await createRuntimes(2);
        for (let count = 0; count < 4; count += 1) await addVersion(runtime.id);
        const pages: number[][] = [];
        let afterKey: number | undefined;
        do {
          const page = await store.listRuntimeVersions(runtime.id, { afterKey, limit: 2 });
          pages.push(page.items.map((item) => item.version));
          assert.ok(page.items.every((item) => item.runtimeId === runtime.id));
          afterKey = page.lastKey;
        } while (afterKey !== undefined);
        assert.deepEqual(pages, [[1, 2], [3, 4], [5]]);
        const first = await store.listRuntimeVersions(runtime.id, { afterKey: 0, limit: 1 });
        assert.deepEqual(first.items, [
          {
            runtimeId: runtime.id,
            name: runtime.name,
            arn: runtime.arn,
            version: 1,
            description: "first of 1",
            status: "CREATING",
            lastUpdatedAt: at(1),
          },
        ]);
      });

      it("pages a runtime's endpoints in creation order, DEFAULT first", async () => {
        const { runtime } = await createRuntimes(2);
        const other = runtimeWrite(2).runtime;
        for (const name of ["e1", "e2", "e3"]) {
          await store.createEndpoint(endpointOf(runtime, name, 1), undefined);
          await store.createEndpoint(endpointOf(other, `other_${name}`, 1), undefined);
        }
        const first = await store.listEndpoints(runtime.id, { afterKey: undefined, limit: 2 });
        assert.deepEqual(
          first.items.map((endpoint) => endpoint.name),
          ["DEFAULT", "e1"],
        );
        const second = await store.listEndpoints(runtime.id, { afterKey: first.lastKey, limit: 2 });
        assert.deepEqual(second.items, [
          endpointOf(runtime, "e2", 1),
          endpointOf(runtime, "e3", 1),
        ]);
        assert.equal(second.lastKey, undefined);
      });

      it("turns its keys into page tokens that lead to the next page; foreign tokens are refused", async () => {
        await createRuntimes(3);
        const first = await store.listRuntimes({ afterKey: undefined, limit: 2 });
        const request = readPageRequest({
          maxResults: "2",
          nextToken: encodePageToken(first.lastKey),
        });
        assert.equal(request.afterKey, first.lastKey);
        const next = await store.listRuntimes(request);
        assert.deepEqual(
          next.items.map((item) => item.name),
          ["agent_3"],
        );
        assert.throws(
          () => readPageRequest({ nextToken: "not-a-token" }),
          (error: unknown) => error instanceof BerthError && error.code === "ValidationException",
        );
      });
    });

    describe("endpoints", () => {
      it("creates, finds, updates and deletes an endpoint", async () => {
        const { runtime } = await createRuntimes();
        const prod = endpointOf(runtime, "prod", 1);
        await store.createEndpoint(prod, undefined);
        assert.deepEqual(await store.findEndpoint(runtime.id, "prod"), prod);
        await store.updateEndpoint(
          {
            ...prod,
            description: "serves users",
            targetVersion: 1,
            liveVersion: 1,
            lastUpdatedAt: at(80),
            // An update changes none of these.
            arn: "arn:elsewhere",
            createdAt: at(99),
            tags: { changed: "yes" },
          },
          undefined,
        );
        assert.deepEqual(await store.findEndpoint(runtime.id, "prod"), {
          ...prod,
          description: "serves users",
          liveVersion: 1,
          lastUpdatedAt: at(80),
        });
        await store.deleteEndpoint(runtime.id, "prod", undefined);
        assert.equal(await store.findEndpoint(runtime.id, "prod"), undefined);
        assert.ok(await store.findEndpoint(runtime.id, "DEFAULT"));
      });

      it("refuses a name the runtime's endpoints already have, not another runtime's", async () => {
        const { runtime } = await createRuntimes(2);
        await store.createEndpoint(endpointOf(runtime, "prod", 1), undefined);
        await assert.rejects(
          store.createEndpoint(endpointOf(runtime, "prod", 1), token("CreateEndpoint")),
          (error: unknown) => error instanceof NameTakenError && error.takenName === "prod",
        );
        assert.equal(await store.findIdempotency("CreateEndpoint", "token-1"), undefined);
        await store.createEndpoint(endpointOf(runtimeWrite(2).runtime, "prod", 1), undefined);
      });

      it("refuses an endpoint for a runtime that is gone, keeping nothing of it", async () => {
        const { runtime } = runtimeWrite(1);
        await assert.rejects(
          store.createEndpoint(endpointOf(runtime, "prod", 1), token("CreateEndpoint")),
          (error: unknown) =>
            error instanceof Error &&
            !(error instanceof NameTakenError) &&
            !(error instanceof DuplicateClientTokenError),
        );
        assert.equal(await store.findEndpoint(runtime.id, "prod"), undefined);
        assert.equal(await store.findIdempotency("CreateEndpoint", "token-1"), undefined);
      });

      it("updating or deleting a missing endpoint changes nothing but keeps the token", async () => {
        const { runtime } = await createRuntimes();
        await store.updateEndpoint(endpointOf(runtime, "ghost", 1), token("Update"));
        await store.deleteEndpoint(runtime.id, "phantom", token("Delete"));
        assert.equal(await store.findEndpoint(runtime.id, "ghost"), undefined);
        assert.ok(await store.findIdempotency("Update", "token-1"));
        assert.ok(await store.findIdempotency("Delete", "token-1"));
      });
    });

    describe("tags", () => {
      it("finds a runtime's and an endpoint's own tags by ARN; a wrong ARN names nothing", async () => {
        const { runtime } = await createRuntimes();
        await store.createEndpoint(endpointOf(runtime, "prod", 1), undefined);
        const ofRuntime = { arn: runtime.arn, runtimeId: runtime.id, endpointName: undefined };
        const ofEndpoint = {
          arn: `${runtime.arn}/runtime-endpoint/prod`,
          runtimeId: runtime.id,
          endpointName: "prod",
        };
        assert.deepEqual(await store.findTags(ofRuntime), { team: "blue" });
        assert.deepEqual(await store.findTags(ofEndpoint), { endpoint: "prod" });
        const otherRegion = runtime.arn.replace("us-east-1", "eu-west-1");
        assert.equal(await store.findTags({ ...ofRuntime, arn: otherRegion }), undefined);
        assert.equal(await store.findTags({ ...ofEndpoint, arn: runtime.arn }), undefined);
        assert.equal(await store.findTags({ ...ofEndpoint, endpointName: "nope" }), undefined);
      });

      it("replaces tags with what change returns, losing none to a concurrent change", async () => {
        const { runtime } = await createRuntimes();
        const resource = { arn: runtime.arn, runtimeId: runtime.id, endpointName: undefined };
        const results = await Promise.all([
          store.updateTags(resource, (current) => ({ ...current, a: "1" })),
          store.updateTags(resource, (current) => ({ ...current, b: "2" })),
        ]);
        // Concurrent calls may run in either order (PostgreSQL's do), but the later one sees
        // what the earlier one wrote.
        const last = results.find((tags) => tags !== undefined && Object.keys(tags).length === 3);
        assert.deepEqual(last, { team: "blue", a: "1", b: "2" });
        await store.updateTags(resource, (current) =>
          Object.fromEntries(Object.entries(current).filter(([key]) => key !== "team")),
        );
        assert.deepEqual(await store.findTags(resource), { a: "1", b: "2" });
        assert.deepEqual((await store.findRuntime(runtime.id))?.tags, { a: "1", b: "2" });
      });

      it("leaves tags as they were when change throws, even after altering what it was given", async () => {
        const { runtime } = await createRuntimes();
        await store.createEndpoint(endpointOf(runtime, "prod", 1), undefined);
        const resource = {
          arn: `${runtime.arn}/runtime-endpoint/prod`,
          runtimeId: runtime.id,
          endpointName: "prod",
        };
        const refusal = new Error("too many tags");
        await assert.rejects(
          store.updateTags(resource, (current) => {
            current["added"] = "x";
            delete current["endpoint"];
            throw refusal;
          }),
          (error: unknown) => error === refusal,
        );
        assert.deepEqual(await store.findTags(resource), { endpoint: "prod" });
      });

      it("answers undefined for a resource that does not exist, without calling change", async () => {
        const { runtime } = runtimeWrite(1);
        const resource = { arn: runtime.arn, runtimeId: runtime.id, endpointName: undefined };
        let called = false;
        const result = await store.updateTags(resource, (current) => {
          called = true;
          return current;
        });
        assert.deepEqual([result, called], [undefined, false]);
      });
    });

    describe("idempotency", () => {
      it("keeps the token a mutation was given, its response as JSON", async () => {
        const response = { runtimeId: "agent_1", detail: { kept: 1, dropped: undefined } };
        await store.createRuntime(runtimeWrite(1, token("CreateAgentRuntime", at(5), response)));
        assert.deepEqual(await store.findIdempotency("CreateAgentRuntime", "token-1"), {
          scope: "CreateAgentRuntime",
          clientToken: "token-1",
          requestHash: "hash-1",
          response: { runtimeId: "agent_1", detail: { kept: 1 } },
          createdAt: at(5),
        });
        assert.equal(await store.findIdempotency("CreateAgentRuntime", "token-2"), undefined);
        assert.equal(await store.findIdempotency("UpdateAgentRuntime", "token-1"), undefined);
      });

      it("every mutation refuses a token its scope already has, and changes nothing", async () => {
        const used = token("Scope");
        const { runtime, defaultEndpoint } = runtimeWrite(1);
        await store.createRuntime(runtimeWrite(1, used));
        const duplicate = (error: unknown) => error instanceof DuplicateClientTokenError;
        const attempts: [string, () => Promise<unknown>][] = [
          ["createRuntime", () => store.createRuntime(runtimeWrite(2, used))],
          ["addRuntimeVersion", () => addVersion(runtime.id, "next", used)],
          ["createEndpoint", () => store.createEndpoint(endpointOf(runtime, "prod", 1), used)],
          [
            "updateEndpoint",
            () => store.updateEndpoint({ ...defaultEndpoint, description: "changed" }, used),
          ],
          ["deleteEndpoint", () => store.deleteEndpoint(runtime.id, "DEFAULT", used)],
          ["deleteRuntimeVersion", () => store.deleteRuntimeVersion(runtime.id, 1, used)],
          ["deleteRuntime", () => store.deleteRuntime(runtime.id, used)],
        ];
        for (const [name, attempt] of attempts) {
          await assert.rejects(attempt(), duplicate, name);
        }
        assert.equal(await store.findRuntime(runtimeWrite(2).runtime.id), undefined);
        assert.deepEqual(await store.findRuntime(runtime.id), runtime);
        assert.ok(await store.findRuntimeVersion(runtime.id, 1));
        assert.equal(await store.findRuntimeVersion(runtime.id, 2), undefined);
        assert.equal(await store.findEndpoint(runtime.id, "prod"), undefined);
        assert.deepEqual(await store.findEndpoint(runtime.id, "DEFAULT"), defaultEndpoint);
      });

      it("reports a used token before a taken name, so a racing retry gets the first answer", async () => {
        await store.createRuntime(runtimeWrite(1, token("CreateAgentRuntime")));
        const retry = runtimeWrite(2, token("CreateAgentRuntime"));
        retry.runtime.name = "agent_1";
        await assert.rejects(
          store.createRuntime(retry),
          (error: unknown) => error instanceof DuplicateClientTokenError,
        );
      });

      it("takes the same token in another scope as another token", async () => {
        const { runtime } = runtimeWrite(1);
        await store.createRuntime(runtimeWrite(1, token("CreateAgentRuntime")));
        await store.createEndpoint(endpointOf(runtime, "prod", 1), token("CreateEndpoint"));
        assert.ok(await store.findEndpoint(runtime.id, "prod"));
      });

      it("forgets the records created before a time and keeps the rest", async () => {
        const { runtime } = await createRuntimes();
        for (const [name, second] of [
          ["a", 10],
          ["b", 20],
          ["c", 30],
        ] as const) {
          await store.createEndpoint(
            endpointOf(runtime, name, 1),
            token(`CreateEndpoint/${name}`, at(second)),
          );
        }
        await store.expireIdempotency(at(20));
        const kept = await Promise.all(
          ["a", "b", "c"].map(
            async (name) =>
              (await store.findIdempotency(`CreateEndpoint/${name}`, "token-1")) !== undefined,
          ),
        );
        assert.deepEqual(kept, [false, true, true]);
      });
    });

    describe("session storage records", () => {
      it("puts, finds and lists records oldest first, all or one runtime's", async () => {
        const other = "agent_2-AAAAAAAAAA";
        await store.putSessionStorage(storageRecord(3));
        await store.putSessionStorage(storageRecord(1));
        await store.putSessionStorage(storageRecord(2, other));
        assert.deepEqual(
          await store.findSessionStorage("agent_1-AAAAAAAAAA", "session-3", "/mnt/data"),
          storageRecord(3),
        );
        const all = await store.listSessionStorage();
        assert.deepEqual(
          all.map((record) => record.volumeId),
          ["volume-1", "volume-2", "volume-3"],
        );
        assert.deepEqual(await store.listSessionStorage(other), [storageRecord(2, other)]);
        assert.equal(await store.findSessionStorage(other, "session-3", "/mnt/data"), undefined);
      });

      it("refuses a second record for a volume id or for a (runtime, session, mount path)", async () => {
        await store.putSessionStorage(storageRecord(1));
        await assert.rejects(
          store.putSessionStorage({ ...storageRecord(2), volumeId: "volume-1" }),
        );
        await assert.rejects(
          store.putSessionStorage({ ...storageRecord(1), volumeId: "volume-9" }),
        );
        assert.deepEqual(await store.listSessionStorage(), [storageRecord(1)]);
      });

      it("records uses, keeping the last measurement when a use brings none", async () => {
        await store.putSessionStorage(storageRecord(1));
        await store.touchSessionStorage("volume-1", at(30), 4096);
        await store.touchSessionStorage("volume-1", at(31), undefined);
        const found = await store.findSessionStorage(
          "agent_1-AAAAAAAAAA",
          "session-1",
          "/mnt/data",
        );
        assert.deepEqual(found, { ...storageRecord(1), lastUsedAt: at(31), usedBytes: 4096 });
      });

      it("moves a record to another version and deletes it", async () => {
        await store.putSessionStorage(storageRecord(1));
        await store.putSessionStorage(storageRecord(2));
        await store.setSessionStorageVersion("volume-1", 7);
        assert.equal((await store.listSessionStorage())[0]?.version, 7);
        await store.deleteSessionStorage("volume-1");
        assert.deepEqual(await store.listSessionStorage(), [storageRecord(2)]);
        // Changes to a volume no record names change nothing.
        await store.touchSessionStorage("volume-1", at(40), 1);
        await store.setSessionStorageVersion("volume-1", 8);
        await store.deleteSessionStorage("volume-1");
        assert.deepEqual(await store.listSessionStorage(), [storageRecord(2)]);
      });
    });

    describe("session storage claims", () => {
      const heldBy = async (volumeId: string) =>
        (await store.listSessionStorage()).find((record) => record.volumeId === volumeId)?.heldBy;

      it("claims a free volume, again for its holder, never for another holder", async () => {
        await store.putSessionStorage(storageRecord(1));
        assert.equal(await heldBy("volume-1"), undefined);
        assert.equal(await store.claimSessionStorage("volume-1", "berth-a", at(10)), true);
        assert.equal(await heldBy("volume-1"), "berth-a");
        assert.equal(await store.claimSessionStorage("volume-1", "berth-a", at(11)), true);
        assert.equal(await store.claimSessionStorage("volume-1", "berth-b", at(12)), false);
        assert.equal(await heldBy("volume-1"), "berth-a");
      });

      it("gives a volume to exactly one of several holders racing for it", async () => {
        await store.putSessionStorage(storageRecord(1));
        const holders = ["berth-a", "berth-b", "berth-c", "berth-d"];
        const won = await Promise.all(
          holders.map((holder) => store.claimSessionStorage("volume-1", holder, at(10))),
        );
        assert.equal(won.filter(Boolean).length, 1);
        assert.equal(await heldBy("volume-1"), holders[won.indexOf(true)]);
      });

      it("is released only by its holder, and can then be claimed by another", async () => {
        await store.putSessionStorage(storageRecord(1));
        await store.claimSessionStorage("volume-1", "berth-a", at(10));
        await store.releaseSessionStorage("volume-1", "berth-b");
        assert.equal(await heldBy("volume-1"), "berth-a");
        await store.releaseSessionStorage("volume-1", "berth-a");
        assert.equal(await heldBy("volume-1"), undefined);
        assert.equal(await store.claimSessionStorage("volume-1", "berth-b", at(11)), true);
      });

      it("releaseSessionStorageClaims frees one holder's volumes and no one else's", async () => {
        for (const n of [1, 2, 3]) await store.putSessionStorage(storageRecord(n));
        await store.claimSessionStorage("volume-1", "berth-a", at(10));
        await store.claimSessionStorage("volume-2", "berth-a", at(10));
        await store.claimSessionStorage("volume-3", "berth-b", at(10));
        await store.releaseSessionStorageClaims("berth-a");
        const holders = (await store.listSessionStorage()).map((record) => record.heldBy);
        assert.deepEqual(holders, [undefined, undefined, "berth-b"]);
      });

      it("claims nothing for a volume no record names", async () => {
        assert.equal(await store.claimSessionStorage("volume-9", "berth-a", at(10)), false);
        await store.releaseSessionStorage("volume-9", "berth-a");
        assert.deepEqual(await store.listSessionStorage(), []);
      });

      it("keeps a claim a record was put with, and through uses and version changes", async () => {
        await store.putSessionStorage({ ...storageRecord(1), heldBy: "berth-a" });
        assert.equal(await store.claimSessionStorage("volume-1", "berth-b", at(10)), false);
        await store.touchSessionStorage("volume-1", at(20), 10);
        await store.setSessionStorageVersion("volume-1", 2);
        assert.deepEqual(
          await store.findSessionStorage("agent_1-AAAAAAAAAA", "session-1", "/mnt/data"),
          { ...storageRecord(1), heldBy: "berth-a", lastUsedAt: at(20), usedBytes: 10, version: 2 },
        );
      });

      it("deletes a record whether or not it is claimed (callers check heldBy first)", async () => {
        await store.putSessionStorage(storageRecord(1));
        await store.claimSessionStorage("volume-1", "berth-a", at(10));
        await store.deleteSessionStorage("volume-1");
        assert.deepEqual(await store.listSessionStorage(), []);
      });
    });

    describe("copies", () => {
      it("returns records the caller owns: changing them changes nothing stored", async () => {
        const { runtime, defaultEndpoint } = await createRuntimes();
        await store.createEndpoint(endpointOf(runtime, "prod", 1), token("Create"));
        await store.putSessionStorage(storageRecord(1));
        const resource = { arn: runtime.arn, runtimeId: runtime.id, endpointName: undefined };

        (await store.findRuntime(runtime.id))!.tags["team"] = "red";
        (await store.findRuntimeVersion(runtime.id, 1))!.config.environmentVariables["MODE"] = "x";
        (await store.listUnsettledVersions())[0]!.config.sessionStorageMountPaths.push("/x");
        (await store.findEndpoint(runtime.id, "DEFAULT"))!.tags["leaked"] = "yes";
        const endpoints = await store.listEndpoints(runtime.id, { afterKey: undefined, limit: 9 });
        endpoints.items[0]!.targetVersion = 99;
        (await store.listRuntimes({ afterKey: undefined, limit: 9 })).items[0]!.name = "renamed";
        (await store.findTags(resource))!["team"] = "green";
        (await store.updateTags(resource, (current) => current))!["team"] = "pink";
        const idempotency = await store.findIdempotency("Create", "token-1");
        (idempotency!.response as Record<string, unknown>)["ok"] = false;
        (await store.findSessionStorage(runtime.id, "session-1", "/mnt/data"))!.usedBytes = 1;
        (await store.listSessionStorage())[0]!.heldBy = "nobody";

        assert.deepEqual(await store.findRuntime(runtime.id), runtime);
        assert.deepEqual(
          (await store.findRuntimeVersion(runtime.id, 1))?.config,
          asJson(config("first of 1")),
        );
        assert.deepEqual(
          (await store.listUnsettledVersions())[0]?.config.sessionStorageMountPaths,
          ["/mnt/data"],
        );
        assert.deepEqual(await store.findEndpoint(runtime.id, "DEFAULT"), defaultEndpoint);
        const listed = await store.listRuntimes({ afterKey: undefined, limit: 9 });
        assert.equal(listed.items[0]?.name, runtime.name);
        assert.deepEqual(await store.findTags(resource), { team: "blue" });
        assert.deepEqual((await store.findIdempotency("Create", "token-1"))?.response, {
          ok: true,
        });
        assert.deepEqual(await store.listSessionStorage(), [storageRecord(1)]);
      });

      it("keeps what it was given: changing a written object afterwards changes nothing", async () => {
        const write = runtimeWrite(1, token("CreateAgentRuntime"));
        await store.createRuntime(write);
        const record = storageRecord(1);
        await store.putSessionStorage(record);
        write.runtime.tags["team"] = "red";
        write.version.config.environmentVariables["MODE"] = "changed";
        write.defaultEndpoint.tags["leaked"] = "yes";
        (write.idempotency!.response as Record<string, unknown>)["ok"] = false;
        record.heldBy = "berth-a";

        const pristine = runtimeWrite(1);
        assert.deepEqual(await store.findRuntime(pristine.runtime.id), pristine.runtime);
        assert.deepEqual(
          (await store.findRuntimeVersion(pristine.runtime.id, 1))?.config,
          asJson(pristine.version.config),
        );
        assert.deepEqual(
          await store.findEndpoint(pristine.runtime.id, "DEFAULT"),
          pristine.defaultEndpoint,
        );
        assert.deepEqual((await store.findIdempotency("CreateAgentRuntime", "token-1"))?.response, {
          ok: true,
        });
        assert.deepEqual(await store.listSessionStorage(), [storageRecord(1)]);
      });
    });
  });
}

/*
 * Only PostgreSQL knows nodes (the cluster's, in the same database): a volume held by a node
 * presumed gone is free to claim, since that node's sandboxes may run elsewhere by now.
 */
const postgresSkip = postgresMissing() ?? false;
/** A lease that runs out within a test; queries get a timeout fit for a busy host all the same. */
const shortLease = { leaseMs: 1000, timeoutMs: 10_000 };
describe(
  "MetadataStore: PostgreSQL's claims of nodes presumed gone",
  { skip: postgresSkip },
  () => {
    it("takes a volume whose holder's heartbeat expired; other holders keep theirs", async () => {
      const stores = await openPostgres(await freshPostgresUrl(), shortLease);
      const { metadata, cluster } = stores;
      try {
        await cluster.register(clusterNode("berth-a", "node-a"));
        await metadata.putSessionStorage({ ...storageRecord(1), heldBy: "berth-a" });
        // A holder that is no node (no row in nodes): its claim stands whatever the time.
        await metadata.putSessionStorage({ ...storageRecord(2), heldBy: "berth-x" });
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-b", at(10)), false);

        await until(async () => (await cluster.listNodes())[0]?.live === false, "the lease to end");
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-b", at(11)), true);
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-a", at(12)), false);
        assert.equal(await metadata.claimSessionStorage("volume-2", "berth-b", at(13)), false);
        const holders = (await metadata.listSessionStorage()).map((record) => record.heldBy);
        assert.deepEqual(holders, ["berth-b", "berth-x"]);
      } finally {
        await stores.close();
      }
    });

    it("takes a volume whose holder left the cluster, or gave its name to another node", async () => {
      const stores = await openPostgres(await freshPostgresUrl(), shortLease);
      const { metadata, cluster } = stores;
      try {
        await cluster.register(clusterNode("berth-a", "node-a"));
        await cluster.register(clusterNode("berth-b", "node-b"));
        await metadata.putSessionStorage({ ...storageRecord(1), heldBy: "berth-a" });
        await metadata.putSessionStorage({ ...storageRecord(2), heldBy: "berth-b" });
        await cluster.deregister("berth-a", "first");
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-c", at(10)), true);

        await until(async () => (await cluster.listNodes())[0]?.live === false, "the lease to end");
        // A machine reinstalled (a new node id) under node-b's name.
        await cluster.register(clusterNode("berth-c", "node-b"));
        assert.equal(await metadata.claimSessionStorage("volume-2", "berth-c", at(11)), true);
      } finally {
        await stores.close();
      }
    });

    it("takes a gone node's claim to delete a volume; a live node's or a non-node's stays", async () => {
      const stores = await openPostgres(await freshPostgresUrl(), shortLease);
      const { metadata, cluster } = stores;
      try {
        await cluster.register(clusterNode("berth-a", "node-a"));
        // How SessionStorage (src/core/session-storage.ts) claims a volume it deletes.
        await metadata.putSessionStorage({ ...storageRecord(1), heldBy: "berth-a (deleting)" });
        await metadata.putSessionStorage({ ...storageRecord(2), heldBy: "berth-x (deleting)" });
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-b", at(10)), false);

        await until(async () => (await cluster.listNodes())[0]?.live === false, "the lease to end");
        assert.equal(await metadata.claimSessionStorage("volume-1", "berth-b", at(11)), true);
        assert.equal(await metadata.claimSessionStorage("volume-2", "berth-b", at(12)), false);
      } finally {
        await stores.close();
      }
    });
  },
);

/** A node of the cluster sharing the PostgreSQL database, in its first incarnation. */
function clusterNode(id: string, name: string): NodeRegistration {
  return {
    id,
    name,
    url: "http://10.0.0.1:8080",
    incarnation: "first",
    capacity: { maxSessions: 10, memoryBytes: 2 ** 30 },
  };
}

/** Polls `condition` every 20 ms until it holds, for at most 10 s. */
async function until(condition: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen in 10 s`);
    await delay(20);
  }
}
