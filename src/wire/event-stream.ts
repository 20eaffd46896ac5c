import { crc32 } from "node:zlib";
import type { CommandEvent } from "../core/commands.ts";
import type { BerthError, ErrorCode } from "../core/errors.ts";

/** Exceptions InvokeAgentRuntimeCommand's stream models; the SDK types only these. */
const modeledExceptions: Partial<Record<ErrorCode, string>> = {
  ValidationException: "validationException",
  RuntimeClientError: "runtimeClientError",
  AccessDeniedException: "accessDeniedException",
  InternalServerException: "internalServerException",
  ResourceNotFoundException: "resourceNotFoundException",
  ServiceQuotaExceededException: "serviceQuotaExceededException",
  ThrottlingException: "throttlingException",
};

/** Header values are strings (type 7): name length u8, name, 7, value length u16, value. */
function encodeHeaders(headers: Record<string, string>): Buffer {
  const parts = Object.entries(headers).map(([name, value]) => {
    const nameBytes = Buffer.from(name, "utf8");
    const valueBytes = Buffer.from(value, "utf8");
    const header = Buffer.alloc(1 + nameBytes.length + 3 + valueBytes.length);
    header.writeUInt8(nameBytes.length, 0);
    nameBytes.copy(header, 1);
    header.writeUInt8(7, 1 + nameBytes.length);
    header.writeUInt16BE(valueBytes.length, 2 + nameBytes.length);
    valueBytes.copy(header, 4 + nameBytes.length);
    return header;
  });
  return Buffer.concat(parts);
}

/**
 * One message, in parts to write together: total length u32, headers length u32, CRC32 of those
 * 8 bytes, headers, then the payload's own parts (not copied), then CRC32 of all before it.
 */
function encodeMessage(headers: Buffer, payload: readonly Uint8Array[]): Buffer[] {
  const payloadLength = payload.reduce((sum, part) => sum + part.length, 0);
  const head = Buffer.allocUnsafe(12 + headers.length);
  head.writeUInt32BE(head.length + payloadLength + 4, 0);
  head.writeUInt32BE(headers.length, 4);
  head.writeUInt32BE(crc32(head.subarray(0, 8)), 8);
  headers.copy(head, 12);
  let checksum = crc32(head);
  for (const part of payload) checksum = crc32(part, checksum);
  const tail = Buffer.allocUnsafe(4);
  tail.writeUInt32BE(checksum, 0);
  return [head, ...(payload as Buffer[]), tail];
}

const chunkHeaders = encodeHeaders({
  ":message-type": "event",
  ":event-type": "chunk",
  ":content-type": "application/json",
});

function chunkEventParts(event: unknown): Buffer[] {
  return encodeMessage(chunkHeaders, [Buffer.from(JSON.stringify(event), "utf8")]);
}

/** One `chunk` event of an AWS event stream, its payload the event as JSON. */
export function encodeChunkEvent(event: unknown): Buffer {
  return Buffer.concat(chunkEventParts(event));
}

const deltaJson = {
  stdout: [Buffer.from('{"contentDelta":{"stdout":"'), Buffer.from('"}}')],
  stderr: [Buffer.from('{"contentDelta":{"stderr":"'), Buffer.from('"}}')],
} as const;

/**
 * A command's event, in parts to write together. Output is already output text (the content of
 * a JSON string), so it goes between its JSON's opening and closing bytes as it is.
 */
export function encodeCommandEvent(event: CommandEvent): Buffer[] {
  if (!("contentDelta" in event)) return chunkEventParts(event);
  const delta = event.contentDelta;
  const [stream, text] =
    "stdout" in delta ? (["stdout", delta.stdout] as const) : (["stderr", delta.stderr] as const);
  const [opening, closing] = deltaJson[stream];
  return encodeMessage(chunkHeaders, [opening, ...text, closing]);
}

/**
 * A modeled exception inside the stream. The type is the union member's lower-camel name: the
 * shape name would reach the SDK user as an untyped error. Unmodeled codes go as internal errors.
 */
export function encodeExceptionEvent(error: BerthError): Buffer {
  const body: Record<string, unknown> = { message: error.message };
  if (error.reason !== undefined) body["reason"] = error.reason;
  if (error.fieldList !== undefined) body["fieldList"] = error.fieldList;
  const headers = encodeHeaders({
    ":message-type": "exception",
    ":exception-type": modeledExceptions[error.code] ?? "internalServerException",
    ":content-type": "application/json",
  });
  return Buffer.concat(encodeMessage(headers, [Buffer.from(JSON.stringify(body), "utf8")]));
}
