import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { FakeLease, type FakeTerminal } from "../../test/support/fake-terminal.ts";
import { BerthError } from "./errors.ts";
import type { ShellConnectionEnd } from "./shell-channels.ts";
import {
  checkShellId,
  ShellRegistry,
  type ShellClient,
  type ShellConnection,
  type ShellRequest,
  type ShellSettings,
} from "./shells.ts";

const quiet = { info: () => undefined, warn: () => undefined, error: () => undefined };

const settings: ShellSettings = {
  maxShellsPerRuntime: 3,
  replayBytes: 16,
  reconnectMs: 60_000,
  killGraceMs: 250,
};

/** A client that keeps what it is sent; `full` makes it refuse more until letDrain(). */
class RecordingClient implements ShellClient {
  readonly chunks: Buffer[] = [];
  full = false;
  readonly ended: Promise<ShellConnectionEnd>;
  private settleEnd: (end: ShellConnectionEnd) => void = () => undefined;
  private drain: () => void = () => undefined;
  private drainedPromise: Promise<void> = Promise.resolve();
  private waiters: { text: string; resolve: () => void }[] = [];

  constructor() {
    this.ended = new Promise((resolve) => (this.settleEnd = resolve));
  }

  get text(): string {
    return Buffer.concat(this.chunks).toString("utf8");
  }

  output(chunk: Buffer): boolean {
    this.chunks.push(Buffer.from(chunk));
    this.waiters = this.waiters.filter((waiter) => {
      if (!this.text.includes(waiter.text)) return true;
      waiter.resolve();
      return false;
    });
    if (this.full) this.drainedPromise = new Promise((resolve) => (this.drain = resolve));
    return !this.full;
  }

  drained(): Promise<void> {
    return this.drainedPromise;
  }

  closed(end: ShellConnectionEnd): void {
    this.settleEnd(end);
  }

  letDrain(): void {
    this.full = false;
    this.drain();
  }

  /** Resolves once the output holds `text`. */
  until(text: string): Promise<void> {
    if (this.text.includes(text)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ text, resolve }));
  }
}

function setUp(overrides: Partial<ShellSettings> = {}) {
  const registry = new ShellRegistry({ settings: { ...settings, ...overrides }, log: quiet });
  const lease = new FakeLease();
  const connect = (request: Partial<ShellRequest> = {}): Promise<ShellConnection> =>
    registry.connect({
      runtimeId: "agent-A",
      sessionId: "session-1",
      shellId: "one",
      size: undefined,
      lease: lease.another(),
      ...request,
    });
  const terminal = (index = 0): FakeTerminal => {
    const found = lease.terminals[index];
    assert.ok(found !== undefined, `terminal ${index} was opened`);
    return found;
  };
  return { registry, lease, connect, terminal };
}

describe("ShellRegistry", () => {
  it("starts a login shell on a terminal, 80x24 with TERM unless a size is given", async () => {
    const { connect, terminal } = setUp();
    const first = await connect({ shellId: "plain" });
    await connect({ shellId: "sized", size: { width: 132, height: 43 } });
    assert.equal(first.reconnected, false);
    assert.equal(first.shellId, "plain");
    assert.deepEqual(terminal(0).argv, ["/bin/bash", "-l"]);
    assert.deepEqual(terminal(0).size, { columns: 80, rows: 24 });
    assert.equal(terminal(0).options.environment["TERM"], "xterm-256color");
    assert.deepEqual(terminal(1).size, { columns: 132, rows: 43 });
  });

  it("generates a shell id when none is given", async () => {
    const { connect } = setUp();
    const connection = await connect({ shellId: undefined });
    assert.match(connection.shellId, /^[0-9a-f-]{36}$/);
  });

  it("relays keys, resizes and output while attached", async () => {
    const { connect, terminal } = setUp();
    const connection = await connect();
    const client = new RecordingClient();
    connection.attach(client);
    await connection.write(Buffer.from("echo hi\r"));
    connection.resize({ width: 100, height: 30 });
    terminal().output.write("hi\r\n");
    await client.until("hi\r\n");
    assert.equal(terminal().typedText, "echo hi\r");
    assert.deepEqual(terminal().size, { columns: 100, rows: 30 });
  });

  it("stops reading the terminal while the client is full, and reads on once it drained", async () => {
    const { connect, terminal } = setUp();
    const connection = await connect();
    const client = new RecordingClient();
    connection.attach(client);
    client.full = true;
    terminal().output.write("first");
    await client.until("first");
    assert.equal(terminal().output.isPaused(), true);
    terminal().output.write("second");
    client.letDrain();
    await client.until("second");
    assert.equal(terminal().output.isPaused(), false);
  });

  it("replays the last replayBytes of output to a client that reattaches, then live output, nothing twice", async () => {
    const { connect, terminal } = setUp();
    const first = new RecordingClient();
    const connection = await connect();
    connection.attach(first);
    terminal().output.write("seen-live|");
    await first.until("seen-live|");
    connection.detach();
    // Read while nobody is attached: the ring keeps the last 16 bytes of all of it.
    terminal().output.write("while-away-0123456789");
    const again = await connect();
    assert.equal(again.reconnected, true);
    const second = new RecordingClient();
    await waitUntilRead(terminal());
    again.attach(second);
    terminal().output.write("|live");
    await second.until("|live");
    // The last 16 bytes of "seen-live|while-away-0123456789", then what came after.
    assert.equal(second.text, "-away-0123456789|live");
  });

  it("lets a second connection take the shell over, closing the first as replaced", async () => {
    const { connect, terminal, lease } = setUp();
    const first = new RecordingClient();
    const firstConnection = await connect();
    firstConnection.attach(first);
    const second = new RecordingClient();
    (await connect()).attach(second);
    assert.deepEqual(await first.ended, { kind: "replaced" });
    assert.equal(lease.releases, 1, "the first connection let go of the session");
    terminal().output.write("for the second");
    await second.until("for the second");
    assert.equal(first.text.includes("for the second"), false);
    firstConnection.detach(); // its socket closing afterwards changes nothing
    terminal().output.write(" still");
    await second.until("for the second still");
  });

  it("holds the session while attached and lets go when the client goes", async () => {
    const { connect, lease } = setUp();
    const connection = await connect();
    connection.attach(new RecordingClient());
    assert.equal(lease.releases, 0);
    connection.detach();
    assert.equal(lease.releases, 1);
    connection.detach();
    assert.equal(lease.releases, 1, "released once");
  });

  it("tells the client the exit code and lets go of the session when the shell exits", async () => {
    const { connect, terminal, lease, registry } = setUp();
    const client = new RecordingClient();
    (await connect()).attach(client);
    terminal().output.write("bye\r\n");
    terminal().exit({ code: 3, signal: null });
    assert.deepEqual(await client.ended, { kind: "exited", exitCode: 3 });
    assert.equal(client.text, "bye\r\n", "output written before the exit arrives before its end");
    assert.equal(lease.releases, 1);
    assert.equal(registry.runningCount("agent-A"), 0);
  });

  it("ends the shell when the client hangs up: the terminal is hung up (SIGHUP), what is left terminated", async () => {
    const { connect, terminal } = setUp();
    const client = new RecordingClient();
    const connection = await connect();
    connection.attach(client);
    connection.hangUp();
    assert.deepEqual(await client.ended, { kind: "exited", exitCode: 129 });
    assert.equal(terminal().hungUp, true);
    assert.deepEqual(terminal().terminations, [250]);
  });

  it("ends every shell of a session with the session, saying why", async () => {
    const { connect, lease, registry } = setUp();
    const attachedClient = new RecordingClient();
    (await connect({ shellId: "attached" })).attach(attachedClient);
    (await connect({ shellId: "detached" })).detach();
    lease.endSession("stopped by StopRuntimeSession");
    assert.deepEqual(await attachedClient.ended, {
      kind: "sessionEnded",
      reason: "stopped by StopRuntimeSession",
    });
    await waitFor(() => registry.runningCount("agent-A") === 0);
    const after = await connect({ shellId: "detached" });
    assert.equal(after.reconnected, false, "a shell of an ended session is gone");
  });

  it("ends a shell nobody reattached to once the reconnect window passes", async () => {
    const { connect, terminal, registry } = setUp({ reconnectMs: 20 });
    (await connect()).detach();
    await terminal().exited;
    assert.deepEqual(terminal().terminations, [250]);
    await waitFor(() => registry.runningCount("agent-A") === 0);
    assert.equal((await connect()).reconnected, false);
  });

  it("keeps a shell that exited while detached for the window: a reattaching client hears its end", async () => {
    const { connect, terminal, registry } = setUp();
    (await connect()).detach();
    terminal().output.write("last words");
    terminal().exit({ code: 0, signal: null });
    await waitFor(() => registry.runningCount("agent-A") === 0);
    const again = await connect();
    assert.equal(again.reconnected, true);
    const client = new RecordingClient();
    again.attach(client);
    assert.deepEqual(await client.ended, { kind: "exited", exitCode: 0 });
    assert.equal(client.text, "last words");
    assert.equal((await connect()).reconnected, false, "told once, then forgotten");
  });

  it("keeps nothing of an ended shell once a client heard its end, whenever its socket closes", async () => {
    const { connect, lease, registry } = setUp();
    /** One shell opened, exited, its end heard and its socket closed: what it leaves behind. */
    const openAndExit = async (round: number): Promise<WeakRef<FakeTerminal>> => {
      const shellId = `round-${round}`;
      const connection = await connect({ shellId });
      const client = new RecordingClient();
      let hearing = connection;
      if (round % 2 === 0)
        connection.attach(client); // it exits while attached
      else connection.detach(); // it exits while detached; a client reattaches and hears its end
      const terminal = lease.terminals.pop(); // the fake lease keeps no hold on it
      assert.ok(terminal !== undefined);
      terminal.output.write("some output for the replay ring");
      terminal.exit({ code: 0, signal: null });
      if (round % 2 === 1) {
        await waitFor(() => registry.runningCount("agent-A") === 0);
        hearing = await connect({ shellId });
        hearing.attach(client);
      }
      await client.ended;
      hearing.detach(); // its socket closes after the end
      return new WeakRef(terminal);
    };
    const terminals: WeakRef<FakeTerminal>[] = [];
    for (let round = 0; round < 20; round += 1) terminals.push(await openAndExit(round));
    await collectGarbage();
    const kept = terminals.filter((terminal) => terminal.deref() !== undefined);
    assert.equal(kept.length, 0, `${kept.length} of 20 ended shells are still held in memory`);
  });

  it("refuses a shell past maxShellsPerRuntime, naming the setting; an exited one frees its place", async () => {
    const { connect, terminal, registry } = setUp();
    for (const shellId of ["a", "b", "c"]) await connect({ shellId });
    const refused = await connect({ shellId: "d" }).catch((error: unknown) => error);
    assert.ok(BerthError.isInstance(refused));
    assert.equal(refused.code, "ServiceQuotaExceededException");
    assert.match(refused.message, /All 3 shells .*\(maxShellsPerRuntime\)/);
    // Another runtime has places of its own; reattaching needs none.
    await connect({ shellId: "a", runtimeId: "agent-B" });
    assert.equal((await connect({ shellId: "a" })).reconnected, true);
    terminal(0).exit({ code: 0, signal: null });
    await waitFor(() => registry.runningCount("agent-A") === 2);
    await connect({ shellId: "d" });
  });

  it("answers a terminal that cannot open with a RuntimeClientError, freeing its place and lease", async () => {
    const { connect, lease, registry } = setUp();
    lease.openFailure = new Error("no pty");
    const refused = await connect().catch((error: unknown) => error);
    assert.ok(BerthError.isInstance(refused));
    assert.equal(refused.code, "RuntimeClientError");
    assert.match(refused.message, /could not start in the session: no pty/);
    assert.equal(lease.releases, 1);
    assert.equal(registry.runningCount("agent-A"), 0);
    assert.equal((await connect()).reconnected, false);
  });

  it("takes shell ids of letters, digits, '.', '_' and '-' only", () => {
    assert.equal(checkShellId("build-1.log_2"), "build-1.log_2");
    for (const bad of ["", "-leading", "a/b", "a b", "x".repeat(129), "é"]) {
      assert.throws(() => checkShellId(bad), { name: "ValidationException" }, bad);
    }
  });
});

/** A full garbage collection: what nothing holds any more is gone after it (WeakRefs say so). */
async function collectGarbage(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  // WeakRefs made or read in this turn hold their targets until it ends.
  await new Promise((resolve) => setImmediate(resolve));
  gc();
}

/** Waits until the terminal's output has been read (nothing left buffered in it). */
async function waitUntilRead(terminal: FakeTerminal): Promise<void> {
  await waitFor(() => terminal.output.readableLength === 0);
}

async function waitFor(condition: () => boolean): Promise<void> {
  for (let attempt = 0; !condition(); attempt += 1) {
    if (attempt > 500) throw new Error("condition not met");
    await new Promise((resolve) => setImmediate(resolve));
  }
}
