import { setTimeout as sleep } from "node:timers/promises";
import { UsageError, hasFlag, optionValue } from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import { describeFailure } from "./errors.ts";
import { exitCodes, formatBytes, printJson } from "./output.ts";
import { resolveRuntime, type RuntimeRef } from "./runtimes.ts";
import { processTerminal } from "./shell-terminal.ts";
import { allRuntimes, takeSnapshot, topRows, type Snapshot, type TopRow } from "./top-sessions.ts";

const defaultIntervalSeconds = 2;

export const topCommand: CliCommand = {
  name: "top",
  summary: "a live view of running sessions: CPU, memory, storage, age and idle time",
  usage: "top [RUNTIME] [--interval SECONDS] [--once]",
  options: {
    interval: {
      value: true,
      doc: `seconds between refreshes, and over which CPU % is measured (0.2-3600, default ${defaultIntervalSeconds})`,
    },
    once: {
      doc: "print one table and exit, for scripts (takes two samples, --interval apart, for CPU %)",
    },
  },
  examples: ["berth top", "berth top my_agent --interval 5", "berth top --once --json"],
  run: async (context) => {
    const [ref, extra] = context.args.positionals;
    if (extra !== undefined) throw new UsageError(`unexpected argument "${extra}"`);
    const intervalMs = intervalOf(context) * 1000;
    const once = hasFlag(context.args, "once");
    if (context.json && !once) throw new UsageError("--json needs --once");
    if (!once && context.io.stdout.isTTY !== true)
      throw new UsageError("the live view needs a terminal; use --once for a single table");
    const fixed = ref === undefined ? undefined : await resolveRuntime(context.connection, ref);
    const runtimes = (): Promise<RuntimeRef[]> =>
      fixed === undefined ? allRuntimes(context.connection) : Promise.resolve([fixed]);
    if (once) return printOnce(context, runtimes, intervalMs);
    return liveView(context, runtimes, intervalMs);
  },
};

function intervalOf(context: CommandContext): number {
  const text = optionValue(context.args, "interval");
  if (text === undefined) return defaultIntervalSeconds;
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || seconds < 0.2 || seconds > 3600)
    throw new UsageError("--interval must be a number of seconds from 0.2 to 3600");
  return seconds;
}

/** Two snapshots --interval apart (CPU % needs two), then one table or JSON. */
async function printOnce(
  context: CommandContext,
  runtimes: () => Promise<RuntimeRef[]>,
  intervalMs: number,
): Promise<number> {
  const first = await takeSnapshot(context.connection, await runtimes());
  await sleep(intervalMs);
  const second = await takeSnapshot(context.connection, await runtimes());
  const rows = topRows(first, second, Date.now());
  if (context.json) {
    printJson(context.io, {
      sessions: rows,
      ...(second.unreachableNodes.length > 0 ? { unreachableNodes: second.unreachableNodes } : {}),
    });
  } else {
    context.io.stdout.write(renderTable(rows, { sessionWidth: undefined }).join("\n") + "\n");
    const warning = unreachableLine(second);
    if (warning !== undefined) context.io.stderr.write(`${warning}\n`);
  }
  return exitCodes.ok;
}

/** Ctrl-C when the input is no terminal, a kill, or the terminal closed: the view ends cleanly. */
const quitSignals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
const enterAlternateScreen = "\x1b[?1049h\x1b[?25l";
const leaveAlternateScreen = "\x1b[?25h\x1b[?1049l";
/** Longest session id shown whole in the live view; longer ones are cut in the middle. */
const liveSessionWidth = 36;

/**
 * Redraws in place on the alternate screen every interval until q or Ctrl-C (or SIGTERM), then
 * gives the terminal back as it was. A failed refresh is shown above the last table, and the
 * next one tried: a Berth restarting is not a reason to quit.
 */
async function liveView(
  context: CommandContext,
  runtimes: () => Promise<RuntimeRef[]>,
  intervalMs: number,
): Promise<number> {
  const terminal = processTerminal(context.io);
  const output = context.io.stdout;
  const quit = new AbortController();
  const onKey = (chunk: Buffer | string): void => {
    const text = chunk.toString();
    if (text.includes("q") || text.includes("\x03")) quit.abort();
  };
  const onSignal = (): void => {
    quit.abort();
  };
  let frame: string[] = [];
  const draw = (): void => {
    const size = terminal.size();
    const lines = frame.slice(0, size?.height ?? frame.length);
    const fitted = lines.map((line) => (size === undefined ? line : line.slice(0, size.width)));
    output.write(`\x1b[H${fitted.map((line) => `${line}\x1b[K`).join("\r\n")}\x1b[J`);
  };
  output.write(enterAlternateScreen);
  const restoreMode = terminal.enterRawMode();
  const stopResizing = terminal.onResize(draw);
  terminal.input.on("data", onKey);
  for (const signal of quitSignals) process.once(signal, onSignal);
  try {
    let previous: Snapshot | undefined;
    let problem: string | undefined;
    while (!quit.signal.aborted) {
      try {
        const snapshot = await takeSnapshot(context.connection, await runtimes());
        frame = liveFrame(context, topRows(previous, snapshot, Date.now()), snapshot, intervalMs);
        previous = snapshot;
        problem = undefined;
      } catch (error) {
        problem = describeFailure(error, context.connection.endpoint).message;
        frame = [`berth top: ${problem} (retrying)`, ...frame.slice(1)];
      }
      draw();
      await sleep(intervalMs, undefined, { signal: quit.signal }).catch(() => undefined);
    }
  } finally {
    terminal.input.off("data", onKey);
    terminal.input.pause();
    for (const signal of quitSignals) process.off(signal, onSignal);
    stopResizing();
    restoreMode();
    output.write(leaveAlternateScreen);
  }
  return exitCodes.ok;
}

function liveFrame(
  context: CommandContext,
  rows: TopRow[],
  snapshot: Snapshot,
  intervalMs: number,
): string[] {
  const nodes = new Set(snapshot.sessions.map((session) => session.node)).size;
  const header = [
    `berth top — ${context.connection.endpoint} — ${rows.length} session${rows.length === 1 ? "" : "s"}`,
    `on ${nodes} node${nodes === 1 ? "" : "s"} — every ${intervalMs / 1000} s — q or Ctrl-C quits`,
    `— ${new Date().toLocaleTimeString()}`,
  ].join(" ");
  const warning = unreachableLine(snapshot);
  return [header, warning ?? "", ...renderTable(rows, { sessionWidth: liveSessionWidth })];
}

function unreachableLine(snapshot: Snapshot): string | undefined {
  return snapshot.unreachableNodes.length === 0
    ? undefined
    : `not shown: the sessions of unreachable nodes ${snapshot.unreachableNodes.join(", ")}`;
}

const columns: { title: string; alignRight: boolean; cell: (row: TopRow) => string }[] = [
  { title: "RUNTIME", alignRight: false, cell: (row) => row.runtime },
  { title: "SESSION", alignRight: false, cell: (row) => row.session },
  { title: "NODE", alignRight: false, cell: (row) => row.node },
  { title: "STATE", alignRight: false, cell: (row) => row.state },
  {
    title: "CPU%",
    alignRight: true,
    cell: (row) => (row.cpuPercent === undefined ? "-" : row.cpuPercent.toFixed(1)),
  },
  { title: "MEMORY", alignRight: true, cell: (row) => formatBytes(row.memoryBytes) },
  { title: "STORAGE", alignRight: true, cell: (row) => formatBytes(row.storageUsedBytes) },
  { title: "AGE", alignRight: true, cell: (row) => formatDuration(row.ageSeconds) },
  {
    title: "IDLE",
    alignRight: true,
    cell: (row) => (row.idleSeconds === undefined ? "active" : formatDuration(row.idleSeconds)),
  },
];

/** Aligned columns (numbers to the right); session ids cut in the middle past `sessionWidth`. */
export function renderTable(
  rows: readonly TopRow[],
  options: { sessionWidth: number | undefined },
): string[] {
  if (rows.length === 0) return ["No running sessions."];
  const cells = [
    columns.map((column) => column.title),
    ...rows.map((row) =>
      columns.map((column) =>
        column.title === "SESSION"
          ? shorten(column.cell(row), options.sessionWidth)
          : column.cell(row),
      ),
    ),
  ];
  const widths = columns.map((_, index) =>
    Math.max(...cells.map((line) => (line[index] ?? "").length)),
  );
  return cells.map((line) =>
    line
      .map((cell, index) => {
        const width = widths[index] ?? 0;
        return columns[index]?.alignRight === true ? cell.padStart(width) : cell.padEnd(width);
      })
      .join("  ")
      .trimEnd(),
  );
}

function shorten(text: string, width: number | undefined): string {
  if (width === undefined || text.length <= width) return text;
  const half = Math.floor((width - 1) / 2);
  return `${text.slice(0, half)}…${text.slice(text.length - (width - 1 - half))}`;
}

/** 42s, 3m12s, 2h05m, 1d03h: the two largest units. */
export function formatDuration(seconds: number): string {
  const whole = Math.floor(seconds);
  if (whole < 60) return `${whole}s`;
  if (whole < 3600) return `${Math.floor(whole / 60)}m${pad(whole % 60)}s`;
  if (whole < 86_400) return `${Math.floor(whole / 3600)}h${pad(Math.floor(whole / 60) % 60)}m`;
  return `${Math.floor(whole / 86_400)}d${pad(Math.floor(whole / 3600) % 24)}h`;
}

const pad = (value: number): string => String(value).padStart(2, "0");
