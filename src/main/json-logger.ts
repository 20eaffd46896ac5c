import type { Writable } from "node:stream";
import type { LogFields, Logger } from "../core/logger.ts";

const secretField = /secret|password|authorization|token/i;

/** One JSON object per line; fields whose names look secret are redacted. */
export function jsonLogger(output: Writable): Logger {
  const write = (level: string, message: string, fields: LogFields = {}): void => {
    const safe = Object.fromEntries(
      Object.entries(fields).map(([key, value]) => [
        key,
        secretField.test(key) ? "[redacted]" : value,
      ]),
    );
    output.write(
      `${JSON.stringify({ time: new Date().toISOString(), level, msg: message, ...safe })}\n`,
    );
  };
  return {
    info: (message, fields) => {
      write("info", message, fields);
    },
    warn: (message, fields) => {
      write("warn", message, fields);
    },
    error: (message, fields) => {
      write("error", message, fields);
    },
  };
}
