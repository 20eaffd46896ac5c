import type { LaunchSpec, PreparedShell } from "./shell.ts";

/** How long after a shell is taken its replacement is prepared. */
const refillDelayMs = 1000;

interface Entry {
  shells: PreparedShell[];
  lastUsedMs: number;
  refilling: boolean;
}

/**
 * Prepared shells kept ready per launch spec (a runtime version), so a new session skips the
 * sandbox set-up and only pays for its agent's own start. A spec gets shells after its first
 * use; specs unused for `idleMs` give theirs back. `perSpec` 0 turns the pool off.
 */
export class ShellPool {
  private readonly entries = new Map<string, Entry>();
  private readonly perSpec: number;
  private readonly maxShells: number;
  private readonly idleMs: number;
  private readonly prepare: (launch: LaunchSpec) => Promise<PreparedShell | undefined>;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(options: {
    perSpec: number;
    maxShells: number;
    idleMs: number;
    prepare: (launch: LaunchSpec) => Promise<PreparedShell | undefined>;
  }) {
    this.perSpec = options.perSpec;
    this.maxShells = options.maxShells;
    this.idleMs = options.idleMs;
    this.prepare = options.prepare;
    this.sweeper = setInterval(
      () => {
        this.evictIdle();
      },
      Math.min(60_000, options.idleMs),
    );
    this.sweeper.unref();
  }

  /** A ready shell for this spec, if one is waiting; refills in the background either way. */
  take(launch: LaunchSpec): PreparedShell | undefined {
    if (this.perSpec === 0 || this.closed) return undefined;
    const key = keyOf(launch);
    const entry = this.entries.get(key) ?? { shells: [], lastUsedMs: 0, refilling: false };
    this.entries.set(key, entry);
    entry.lastUsedMs = Date.now();
    const shell = entry.shells.shift();
    if (shell === undefined) {
      void this.refill(entry, launch);
    } else {
      // The shell just taken is about to start an agent, the busiest moment for this machine's
      // cores: preparing its replacement can wait until that start is over.
      setTimeout(() => void this.refill(entry, launch), refillDelayMs).unref();
    }
    return shell;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const entry of this.entries.values())
      for (const shell of entry.shells.splice(0)) shell.kill();
    this.entries.clear();
  }

  private async refill(entry: Entry, launch: LaunchSpec): Promise<void> {
    if (entry.refilling) return;
    entry.refilling = true;
    try {
      while (
        entry.shells.length < this.perSpec &&
        this.size() < this.maxShells &&
        this.entries.has(keyOf(launch))
      ) {
        const shell = await this.prepare(launch).catch(() => undefined);
        if (shell === undefined) return;
        if (this.closed) {
          shell.kill(); // prepared while the pool closed: nobody would ever take or kill it
          return;
        }
        entry.shells.push(shell);
        void shell.exited.then(() => {
          const index = entry.shells.indexOf(shell);
          if (index !== -1) entry.shells.splice(index, 1);
        });
      }
    } finally {
      entry.refilling = false;
    }
  }

  private size(): number {
    let total = 0;
    for (const entry of this.entries.values()) total += entry.shells.length;
    return total;
  }

  private evictIdle(): void {
    const now = Date.now();
    for (const [key, entry] of this.entries) {
      if (now - entry.lastUsedMs < this.idleMs) continue;
      for (const shell of entry.shells.splice(0)) shell.kill();
      this.entries.delete(key);
    }
  }
}

function keyOf(launch: LaunchSpec): string {
  return JSON.stringify([
    launch.filesystem,
    launch.command,
    Object.entries(launch.environment).sort(),
    launch.agentPort,
  ]);
}
