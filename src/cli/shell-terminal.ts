import type { Writable } from "node:stream";
import type { Io } from "./output.ts";

export interface TerminalSize {
  width: number;
  height: number;
}

/**
 * The local end of a remote shell: where keys (or piped bytes) come from, where output goes,
 * the window's size and its changes, and raw mode. Injectable, so the protocol is tested without
 * a terminal.
 */
export interface LocalTerminal {
  input: NodeJS.ReadableStream;
  output: Writable;
  errors: Writable;
  /** Keys from a terminal, not bytes from a pipe or a file that end. */
  interactive: boolean;
  /** The window's size, when there is a window. */
  size(): TerminalSize | undefined;
  /** Calls `listener` when the window changes size (SIGWINCH); returns what stops it. */
  onResize(listener: () => void): () => void;
  /**
   * Puts the input terminal in raw mode (keys sent as typed, Ctrl-C included, no local echo),
   * when it is one; returns what restores the mode, safe to call more than once.
   */
  enterRawMode(): () => void;
}

interface WindowStream {
  isTTY?: boolean;
  columns?: number;
  rows?: number;
  on(event: "resize", listener: () => void): unknown;
  off(event: "resize", listener: () => void): unknown;
}

interface RawModeStream {
  isTTY?: boolean;
  isRaw?: boolean;
  setRawMode?: (mode: boolean) => unknown;
}

/** The process's own terminal, as `Io` gives it. */
export function processTerminal(io: Io): LocalTerminal {
  const stdin = io.stdin as Io["stdin"] & RawModeStream;
  // The window is the output's, or stderr's when output goes to a pipe (`| tee log`).
  const window = [io.stdout, io.stderr].find(
    (stream) => stream.isTTY === true && "columns" in stream,
  ) as (Writable & WindowStream) | undefined;
  return {
    input: io.stdin,
    output: io.stdout,
    errors: io.stderr,
    interactive: stdin.isTTY === true,
    size: () =>
      window?.columns === undefined || window.rows === undefined
        ? undefined
        : { width: window.columns, height: window.rows },
    onResize: (listener) => {
      window?.on("resize", listener);
      return () => window?.off("resize", listener);
    },
    enterRawMode: () => enterRawMode(stdin),
  };
}

/**
 * Raw mode on a TTY stdin, restored by the returned function or, whatever else happens (an
 * uncaught error, process.exit), when the process exits: a terminal left raw echoes nothing.
 */
function enterRawMode(stdin: RawModeStream): () => void {
  if (stdin.isTTY !== true || stdin.setRawMode === undefined || stdin.isRaw === true) {
    return () => {};
  }
  const setRawMode = stdin.setRawMode.bind(stdin);
  setRawMode(true);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    process.off("exit", restore);
    setRawMode(false);
  };
  process.on("exit", restore);
  return restore;
}
