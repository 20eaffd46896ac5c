import { PassThrough } from "node:stream";
import type {
  SandboxCommand,
  SandboxExit,
  SandboxTerminal,
  TerminalOptions,
} from "../../src/core/sandbox.ts";
import type { SessionLease } from "../../src/core/sessions.ts";

/**
 * A terminal for fast tests of what sits on top of one: what the test writes to `output` is what
 * the program showed; what is typed is kept (and, with `echo`, shown back, as a terminal in
 * canonical mode does). It exits when told to, or when terminated (SIGKILL, as an interactive
 * shell that ignores SIGTERM ends).
 */
export class FakeTerminal implements SandboxTerminal {
  readonly output = new PassThrough();
  readonly typed: Buffer[] = [];
  readonly sizes: { columns: number; rows: number }[] = [];
  readonly terminations: number[] = [];
  hungUp = false;
  readonly exited: Promise<SandboxExit>;
  readonly argv: string[];
  readonly options: TerminalOptions;
  private readonly echo: boolean;
  private settle: (exit: SandboxExit) => void = () => undefined;

  constructor(argv: string[], options: TerminalOptions, settings: { echo?: boolean } = {}) {
    this.argv = argv;
    this.options = options;
    this.echo = settings.echo ?? false;
    this.sizes.push({ columns: options.columns, rows: options.rows });
    this.exited = new Promise((resolve) => (this.settle = resolve));
  }

  get typedText(): string {
    return Buffer.concat(this.typed).toString("utf8");
  }

  get size(): { columns: number; rows: number } | undefined {
    return this.sizes.at(-1);
  }

  write(bytes: Buffer): Promise<void> {
    this.typed.push(Buffer.from(bytes));
    if (this.echo && !this.output.writableEnded) this.output.write(Buffer.from(bytes));
    return Promise.resolve();
  }

  resize(columns: number, rows: number): void {
    this.sizes.push({ columns, rows });
  }

  /** The program exits: its output ends, then its exit settles. */
  exit(exit: SandboxExit): void {
    if (!this.output.writableEnded) this.output.end();
    this.settle(exit);
  }

  /** As a real terminal's hang-up: the shell ends of SIGHUP. */
  hangUp(): void {
    this.hungUp = true;
    this.exit({ code: null, signal: "SIGHUP" });
  }

  terminate(graceMs: number): Promise<void> {
    this.terminations.push(graceMs);
    this.exit({ code: null, signal: "SIGKILL" });
    return this.exited.then(() => undefined);
  }
}

/** A lease on a session whose terminals are FakeTerminals, with its end and releases in view. */
export class FakeLease implements SessionLease {
  readonly agentEndpoint = { host: "127.0.0.1", port: 1 };
  readonly shell = "/bin/bash";
  readonly terminals: FakeTerminal[] = [];
  readonly ended: Promise<string>;
  releases = 0;
  /** Makes the next openTerminal fail with this. */
  openFailure: Error | undefined;
  private endReason: string | undefined;
  private settleEnd: (reason: string) => void = () => undefined;
  private readonly echo: boolean;

  constructor(settings: { echo?: boolean } = {}) {
    this.echo = settings.echo ?? false;
    this.ended = new Promise((resolve) => (this.settleEnd = resolve));
  }

  /** Another lease on the same session (what a second connection gets). */
  another(): SessionLease {
    return { ...this.asLease(), release: () => (this.releases += 1) };
  }

  /** The session ends: every terminal dies, then the sandbox is gone. */
  endSession(reason: string): void {
    this.endReason = reason;
    for (const terminal of this.terminals) terminal.exit({ code: null, signal: "SIGKILL" });
    this.settleEnd(reason);
  }

  endReasonSoon(): Promise<string | undefined> {
    return Promise.resolve(this.endReason);
  }

  release(): void {
    this.releases += 1;
  }

  outputTail(): string[] {
    return [];
  }

  exec(): Promise<SandboxCommand> {
    return Promise.reject(new Error("no commands in this test"));
  }

  openTerminal(argv: string[], options: TerminalOptions): Promise<SandboxTerminal> {
    const failure = this.openFailure;
    if (failure !== undefined) {
      this.openFailure = undefined;
      return Promise.reject(failure);
    }
    const terminal = new FakeTerminal(argv, options, { echo: this.echo });
    this.terminals.push(terminal);
    return Promise.resolve(terminal);
  }

  private asLease(): SessionLease {
    return {
      agentEndpoint: this.agentEndpoint,
      shell: this.shell,
      ended: this.ended,
      endReasonSoon: () => this.endReasonSoon(),
      release: () => {
        this.release();
      },
      outputTail: () => [],
      exec: () => Promise.reject(new Error("no commands in this test")),
      openTerminal: (argv, options) => this.openTerminal(argv, options),
    };
  }
}
