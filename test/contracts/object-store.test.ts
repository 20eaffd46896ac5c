import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { MemoryObjectStore } from "../../src/adapters/memory/object-store.ts";
import { S3ObjectStore } from "../../src/adapters/s3/object-store.ts";
import { PreconditionFailedError, type ObjectStore } from "../../src/core/object-store.ts";
import { cephMissing, startCephS3, type CephS3 } from "../support/ceph-s3.ts";

/**
 * One suite, written against the ObjectStore interface, run against every object store: what
 * replication relies on (conditional writes above all), whichever store holds the data. S3 runs
 * against a real Ceph RGW, started here (root only: it needs Ceph's daemons).
 */

interface StoreUnderTest {
  name: string;
  skip: string | false;
  /** A fresh, empty store (a prefix of its own). */
  open(prefix: string): Promise<ObjectStore>;
  close?(): Promise<void>;
}

let ceph: CephS3 | undefined;
let bucketMade: Promise<string> | undefined;

const stores: StoreUnderTest[] = [
  {
    name: "memory",
    skip: false,
    open: () => Promise.resolve(new MemoryObjectStore()),
  },
  {
    name: "S3 (Ceph RGW)",
    skip: cephMissing() ?? false,
    open: async (prefix) => {
      ceph ??= await startCephS3();
      const server = ceph;
      await (bucketMade ??= server.bucket("contract"));
      return new S3ObjectStore(server.connection(`s3://contract/${prefix}`));
    },
    close: async () => ceph?.stop(),
  },
];

let counter = 0;

for (const store of stores) {
  describe(`object store contract: ${store.name}`, { skip: store.skip }, () => {
    let objects: ObjectStore;
    before(async () => {
      objects = await store.open(`suite-${process.pid}`);
    });
    after(async () => {
      await store.close?.();
    });
    const key = (name: string) => `${name}-${(counter += 1)}`;

    it("reads back what it stored, and nothing for a key never written", async () => {
      const name = key("plain");
      assert.equal(await objects.get(name, 2 ** 30), undefined);
      assert.equal(await objects.head(name), undefined);
      const { etag } = await objects.put(name, Buffer.from("bytes"));
      const found = await objects.get(name, 2 ** 30);
      assert.equal(found?.body.toString(), "bytes");
      assert.equal(found.etag, etag);
      assert.equal((await objects.head(name))?.size, 5);
    });

    it("creates with If-None-Match: * once; a second create fails as a precondition", async () => {
      const name = key("create");
      await objects.put(name, Buffer.from("first"), { ifNoneMatch: "*" });
      await assert.rejects(
        objects.put(name, Buffer.from("second"), { ifNoneMatch: "*" }),
        PreconditionFailedError,
      );
      assert.equal((await objects.get(name, 2 ** 30))?.body.toString(), "first");
    });

    it("replaces with If-Match only the version whose etag it read", async () => {
      const name = key("replace");
      const first = await objects.put(name, Buffer.from("one"));
      const second = await objects.put(name, Buffer.from("two"), { ifMatch: first.etag });
      await assert.rejects(
        objects.put(name, Buffer.from("stale"), { ifMatch: first.etag }),
        PreconditionFailedError,
      );
      assert.equal((await objects.get(name, 2 ** 30))?.body.toString(), "two");
      assert.equal((await objects.get(name, 2 ** 30))?.etag, second.etag);
      await assert.rejects(
        objects.put(key("absent"), Buffer.from("x"), { ifMatch: first.etag }),
        PreconditionFailedError,
      );
    });

    it("lists by prefix in key order, past one page", async () => {
      const prefix = key("listed");
      const names = Array.from(
        { length: 1010 },
        (_, index) => `${prefix}/${String(index).padStart(4, "0")}`,
      );
      for (let start = 0; start < names.length; start += 50) {
        await Promise.all(
          names.slice(start, start + 50).map((name) => objects.put(name, Buffer.from(name))),
        );
      }
      await objects.put(`${prefix}-beside`, Buffer.from("not under the prefix"));
      const listed: string[] = [];
      for await (const object of objects.list(`${prefix}/`)) listed.push(object.key);
      assert.deepEqual(listed, names);
    });

    it("deletes, and deleting what is absent is no error", async () => {
      const name = key("deleted");
      await objects.put(name, Buffer.from("x"));
      await objects.delete([name, key("never")]);
      assert.equal(await objects.get(name, 2 ** 30), undefined);
    });
  });
}
