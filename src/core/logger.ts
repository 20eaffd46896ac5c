export type LogFields = Record<string, unknown>;

/** Structured logging; the composition root decides where lines go. */
export interface Logger {
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}
