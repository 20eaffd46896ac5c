import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { waitFor } from "./agents.ts";
import { removeDir, type TestBerth } from "./berth.ts";

const repositoryRoot = fileURLToPath(new URL("../..", import.meta.url));

/**
 * A tmux server of this test's own (its own socket), a 100x30 window running a plain bash (a new
 * one for each test), the screen read back with capture-pane.
 */
export class Tmux {
  private readonly socket: string;
  private readonly folder: string;
  private marker = 0;
  /** The window typed into and read: the session's first, then each freshWindow's. */
  private window = "cli";

  constructor(env: NodeJS.ProcessEnv) {
    this.folder = mkdtempSync(join(tmpdir(), "berth-tmux-"));
    this.socket = join(this.folder, "socket");
    execFileSync(
      "tmux",
      [
        ...["-S", this.socket, "new-session", "-d", "-x", "100", "-y", "30", "-s", "cli"],
        ...["bash", "--norc", "--noprofile"],
      ],
      { env: { ...env, TERM: "xterm-256color" }, cwd: repositoryRoot },
    );
    this.tmux("set-option", "-g", "history-limit", "5000");
  }

  /**
   * Replaces the window with a new one: a new bash, the default size, an empty screen and
   * history (the session lives on in the new window while the old one closes).
   */
  freshWindow(): void {
    const previous = this.window;
    this.window = this.tmux(
      ...["new-window", "-d", "-t", "cli", "-P", "-F", "#{window_id}"],
      ...["bash", "--norc", "--noprofile"],
    ).trim();
    this.tmux("kill-window", "-t", previous);
  }

  /** Types a line and Enter. */
  type(line: string): void {
    this.tmux("send-keys", "-t", this.window, "-l", line);
    this.keys("Enter");
  }

  keys(...names: string[]): void {
    this.tmux("send-keys", "-t", this.window, ...names);
  }

  resize(width: number, height: number): void {
    this.tmux("resize-window", "-t", this.window, "-x", String(width), "-y", String(height));
  }

  /** The pane's screen and history, wrapped lines joined. */
  screen(): string {
    return this.tmux("capture-pane", "-p", "-J", "-t", this.window, "-S", "-5000");
  }

  async screenMatches(pattern: RegExp): Promise<string> {
    return this.showingScreen(
      waitFor(`the screen to show ${String(pattern)}`, () => pattern.exec(this.screen())?.[0]),
    );
  }

  /**
   * Types `command` after a marker of its own and answers the first line after the marker
   * matching `pattern`: the command's output, not an earlier one's (nor the typed line's echo).
   */
  async run(command: string, pattern: RegExp): Promise<string> {
    this.marker += 1;
    const marker = `MARK-${String(this.marker)}`;
    // $? is kept across the marker's echo, so `command` may ask for the last one's status.
    this.type(`last=$?; echo ${marker}-$((0)); (exit $last); ${command}`);
    return this.showingScreen(
      waitFor(`the output of ${command}`, () => {
        const screen = this.screen();
        const start = screen.lastIndexOf(`${marker}-0`);
        if (start < 0) return undefined;
        return pattern.exec(screen.slice(start + marker.length + 2))?.[0];
      }),
    );
  }

  /** A wait that, timing out, says what the screen showed. */
  private async showingScreen<T>(waiting: Promise<T>): Promise<T> {
    try {
      return await waiting;
    } catch (error) {
      throw new Error(`${(error as Error).message}; the screen:\n${this.screen().trimEnd()}`);
    }
  }

  /** Polls a condition that needs typing to check (the shell sees no event of ours). */
  async until(what: string, check: () => Promise<boolean>): Promise<void> {
    await this.showingScreen(waitFor(what, async () => ((await check()) ? true : undefined)));
  }

  /** The pid of the program the pane's bash is running in the foreground. */
  foregroundChild(): number {
    const bash = this.tmux("display-message", "-p", "-t", this.window, "#{pane_pid}").trim();
    const children = execFileSync("ps", ["-o", "pid=", "--ppid", bash], { encoding: "utf8" })
      .split("\n")
      .map((line) => Number(line.trim()))
      .filter((pid) => pid > 0);
    assert.equal(children.length, 1, `one program in the foreground (${children.join(", ")})`);
    return children[0] ?? 0;
  }

  close(): void {
    try {
      this.tmux("kill-server");
    } finally {
      removeDir(this.folder);
    }
  }

  private tmux(...args: string[]): string {
    return execFileSync("tmux", ["-S", this.socket, ...args], { encoding: "utf8" });
  }
}

/** The environment a user has after pasting what Berth printed at first start, for the CLI. */
export function cliEnv(berth: TestBerth): NodeJS.ProcessEnv {
  const credentials = berth.berth.credentials;
  return {
    PATH: process.env["PATH"],
    HOME: process.env["HOME"],
    BERTH_ENDPOINT: berth.berth.url,
    AWS_ACCESS_KEY_ID: credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
    AWS_REGION: "us-east-1",
  };
}
