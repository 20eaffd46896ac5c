import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tarOf, type LayerEntry } from "./oci-images.ts";

/**
 * Tar members written byte by byte, for layers no honest tool would make: PAX and GNU
 * long-name members with any content, numbers that are not numbers, members cut short.
 */

const blockSize = 512;

/** A ustar header; `size` is written as given (a string lets a test put anything there). */
export function ustarHeader(fields: {
  path: string;
  typeflag: string;
  size: number | string;
  mode?: number;
}): Buffer {
  const header = Buffer.alloc(blockSize);
  header.write(fields.path, 0, 100, "utf8");
  const octal = (value: number, offset: number, length: number) => {
    header.write(`${value.toString(8).padStart(length - 1, "0")}\0`, offset, length, "latin1");
  };
  octal(fields.mode ?? 0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  if (typeof fields.size === "number") octal(fields.size, 124, 12);
  else header.write(fields.size, 124, 12, "latin1");
  octal(1_700_000_000, 136, 12);
  header.write(fields.typeflag, 156, 1, "latin1");
  header.write("ustar\u000000", 257, 8, "latin1");
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return header;
}

/** A member with its content, padded to the block boundary. */
export function member(path: string, typeflag: string, content: Buffer): Buffer {
  const padding = Buffer.alloc((blockSize - (content.length % blockSize)) % blockSize);
  return Buffer.concat([ustarHeader({ path, typeflag, size: content.length }), content, padding]);
}

/** PAX records ("LENGTH key=value\n", LENGTH counting the whole record). */
function paxRecords(records: Record<string, string>): Buffer {
  return Buffer.concat(
    Object.entries(records).map(([key, value]) => {
      const body = ` ${key}=${value}\n`;
      let length = Buffer.byteLength(body) + 1;
      while (String(length).length + Buffer.byteLength(body) !== length) length += 1;
      return Buffer.from(`${length}${body}`);
    }),
  );
}

/** A PAX extended header ('x') or global header ('g') member. */
export function paxMember(records: Record<string, string>, typeflag = "x"): Buffer {
  return member("PaxHeaders/entry", typeflag, paxRecords(records));
}

/** Ordinary members (see tarOf), without the end-of-archive blocks. */
export function membersOf(entries: LayerEntry[]): Buffer {
  const archive = tarOf(entries);
  return archive.subarray(0, archive.length - 2 * blockSize);
}

/** A whole layer: members, then the end-of-archive marker. */
export function layerOf(...members: Buffer[]): Buffer {
  return Buffer.concat([...members, Buffer.alloc(2 * blockSize)]);
}

/** What a process's file descriptors point at (sockets, pipes, files). */
export function openDescriptors(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`).flatMap((fd) => {
    try {
      return [readlinkSync(`/proc/${pid}/fd/${fd}`)];
    } catch {
      return []; // closed while listing
    }
  });
}

/** The most memory a process has had resident since it started (VmHWM), in bytes. */
export function peakResidentBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kib === undefined) throw new Error(`no VmHWM for process ${pid}`);
  return Number(kib) * 1024;
}

export interface LocalHttpServer {
  port: number;
  /** The paths asked for, in order. */
  requests: string[];
  stop(): Promise<void>;
}

/** A plain HTTP server on 127.0.0.1 that records what it is asked and answers with `handle`. */
export async function startHttpServer(
  handle: (request: IncomingMessage, response: ServerResponse) => void,
): Promise<LocalHttpServer> {
  const requests: string[] = [];
  const server = createServer((request, response) => {
    requests.push(request.url ?? "");
    handle(request, response);
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    requests,
    stop: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}
