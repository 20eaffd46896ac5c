import { request } from "node:http";
import assert from "node:assert/strict";
import { constants, crc32, deflateRawSync, gzipSync } from "node:zlib";
import { Hash } from "@smithy/hash-node";
import { HttpRequest } from "@smithy/protocol-http";
import { SignatureV4 } from "@smithy/signature-v4";
import type { TestBerth } from "./berth.ts";
import { tarOf, type LayerEntry } from "./oci-images.ts";

/** A .tar.gz of hand-made entries (symlinks to anywhere included). */
export function tarGzOf(entries: LayerEntry[]): Buffer {
  return gzipSync(tarOf(entries));
}

/**
 * A .tar.gz of about `compressedMiB` MiB holding one file of as many GiB of zeros, plus
 * `others`. Written as gzip members one after another (a valid gzip stream, as tar reads it), so
 * making it costs nothing like the gigabyte it unpacks to.
 */
export function tarGzBomb(gibibytes: number, others: LayerEntry[] = []): Buffer {
  const mebibyte = Buffer.alloc(2 ** 20);
  const header = tarOf([{ path: "zeros", content: "" }]).subarray(0, 512);
  const size = gibibytes * 2 ** 30;
  header.write(`${size.toString(8).padStart(11, "0")}\0`, 124, 12, "latin1");
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  const zeroMember = gzipSync(mebibyte, { level: 9 });
  const members = [gzipSync(tarOf(others).subarray(0, -1024)), gzipSync(header)];
  for (let written = 0; written < size; written += mebibyte.length) members.push(zeroMember);
  members.push(gzipSync(Buffer.alloc(1024)));
  return Buffer.concat(members);
}

/** One member of a hand-made .zip: its content, then `zeros` bytes of zeros (whole MiB). */
export interface ZipEntry {
  path: string;
  content?: string;
  zeros?: number;
  mode?: number;
}

/** A .zip of `entries` (deflated), written byte by byte so tests can make hostile ones. */
export function zipOf(entries: ZipEntry[]): Buffer {
  const locals: Buffer[] = [];
  const central: Buffer[] = [];
  let offset = 0;
  for (const entry of entries) {
    const { data, crc, size } = deflated(entry);
    const name = Buffer.from(entry.path, "utf8");
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(8, 8); // deflate
    local.writeUInt16LE(0x21, 12); // 1980-01-01
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(size, 22);
    local.writeUInt16LE(name.length, 26);
    const header = Buffer.alloc(46);
    header.writeUInt32LE(0x02014b50, 0);
    header.writeUInt16LE((3 << 8) | 20, 4); // made on Unix: the mode is in the external attributes
    header.writeUInt16LE(20, 6);
    header.writeUInt16LE(8, 10);
    header.writeUInt16LE(0x21, 14);
    header.writeUInt32LE(crc, 16);
    header.writeUInt32LE(data.length, 20);
    header.writeUInt32LE(size, 24);
    header.writeUInt16LE(name.length, 28);
    header.writeUInt32LE(((0o100000 | (entry.mode ?? 0o644)) << 16) >>> 0, 38);
    header.writeUInt32LE(offset, 42);
    locals.push(local, name, data);
    central.push(header, name);
    offset += local.length + name.length + data.length;
  }
  const directory = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, directory, end]);
}

/**
 * An entry's deflated bytes. Zeros are deflated one mebibyte at a time, each flushed to a byte
 * boundary and not final, so one compressed mebibyte repeated is a valid stream of many.
 */
const mebibyte = Buffer.alloc(2 ** 20);
const deflatedMebibyte = deflateRawSync(mebibyte, { finishFlush: constants.Z_SYNC_FLUSH });

function deflated(entry: ZipEntry): { data: Buffer; crc: number; size: number } {
  const content = Buffer.from(entry.content ?? "", "utf8");
  const parts = [deflateRawSync(content, { finishFlush: constants.Z_SYNC_FLUSH })];
  let crc = crc32(content);
  const zeros = entry.zeros ?? 0;
  assert.equal(zeros % mebibyte.length, 0, "zeros come in whole mebibytes");
  for (let left = zeros; left > 0; left -= mebibyte.length) {
    parts.push(deflatedMebibyte);
    crc = crc32(mebibyte, crc);
  }
  parts.push(deflateRawSync(Buffer.alloc(0)));
  return { data: Buffer.concat(parts), crc, size: content.length + zeros };
}

/**
 * PUT /berth/v1/artifacts/{bucket}/{prefix}, signed as the CLI signs it (UNSIGNED-PAYLOAD,
 * chunked), with `archive` as the body; the answer's status, error type and JSON.
 */
export async function uploadArchive(
  berth: TestBerth,
  bucket: string,
  prefix: string,
  archive: Buffer,
): Promise<{ status: number; errorType: string | undefined; json: Record<string, unknown> }> {
  const url = new URL(berth.berth.url);
  const signer = new SignatureV4({
    credentials: berth.berth.credentials,
    region: berth.settings.region,
    service: "bedrock-agentcore",
    sha256: Hash.bind(null, "sha256"),
    uriEscapePath: true,
  });
  const signed = await signer.sign(
    new HttpRequest({
      method: "PUT",
      protocol: "http:",
      hostname: url.hostname,
      port: Number(url.port),
      path: `/berth/v1/artifacts/${bucket}/${prefix}`,
      headers: {
        host: url.host,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "content-type": "application/octet-stream",
      },
    }),
  );
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        host: url.hostname,
        port: url.port,
        method: "PUT",
        path: signed.path,
        headers: { ...signed.headers, "transfer-encoding": "chunked" },
      },
      (response) => {
        let text = "";
        response.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
        response.on("end", () => {
          const errorType = response.headers["x-amzn-errortype"];
          resolve({
            status: response.statusCode ?? 0,
            errorType: typeof errorType === "string" ? errorType : undefined,
            json: (text === "" ? {} : JSON.parse(text)) as Record<string, unknown>,
          });
        });
      },
    );
    outgoing.on("error", reject);
    outgoing.end(archive);
  });
}
