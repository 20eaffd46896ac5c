import type { Writable } from "node:stream";

/** Where a command writes: injectable so tests and the real terminal behave the same. */
export interface Io {
  stdout: Writable & { isTTY?: boolean };
  stderr: Writable & { isTTY?: boolean };
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  env: NodeJS.ProcessEnv;
}

/** Exit codes scripts can rely on (docs/cli.md). */
export const exitCodes = {
  ok: 0,
  /** Berth answered with an error (not found, validation, conflict...). */
  failed: 1,
  usage: 2,
  /** Berth could not be reached. */
  unreachable: 3,
  /** Berth refused the credentials. */
  unauthorized: 4,
  /** berth exec: Berth failed, so the command's own code is unknown. */
  execFailed: 125,
} as const;

export type Row = Record<string, string | number | boolean | undefined>;

/** Rows as an aligned table with upper-case headers, or a note when there are none. */
export function table(rows: Row[], columns: string[], empty: string): string {
  if (rows.length === 0) return `${empty}\n`;
  const cells = [
    columns.map((column) => column.replace(/[A-Z]/g, (letter) => ` ${letter}`).toUpperCase()),
    ...rows.map((row) => columns.map((column) => String(row[column] ?? "-"))),
  ];
  const widths = columns.map((_, index) =>
    Math.max(...cells.map((line) => (line[index] ?? "").length)),
  );
  return cells
    .map((line) =>
      line
        .map((cell, index) => (index === line.length - 1 ? cell : cell.padEnd(widths[index] ?? 0)))
        .join("  "),
    )
    .join("\n")
    .concat("\n");
}

export function printJson(io: Io, value: unknown): void {
  io.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/**
 * A progress line on stderr for work that may take more than a second, redrawn in place on a
 * terminal and silent otherwise (scripts and --json get clean output).
 */
export class Progress {
  private readonly io: Io;
  private readonly timer: NodeJS.Timeout | undefined;
  private text: string;
  private frame = 0;

  constructor(io: Io, text: string, quiet: boolean) {
    this.io = io;
    this.text = text;
    const live = io.stderr.isTTY === true && !quiet;
    this.timer = live
      ? setInterval(() => {
          this.draw();
        }, 100)
      : undefined;
  }

  update(text: string): void {
    this.text = text;
  }

  done(finalLine?: string): void {
    if (this.timer === undefined) return;
    clearInterval(this.timer);
    this.io.stderr.write(`\r\x1b[2K${finalLine === undefined ? "" : `${finalLine}\n`}`);
  }

  private draw(): void {
    const frames = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏";
    this.frame = (this.frame + 1) % frames.length;
    this.io.stderr.write(`\r\x1b[2K${frames[this.frame] ?? ""} ${this.text}`);
  }
}

export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit] ?? ""}`;
}
