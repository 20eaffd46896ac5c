import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { describe, it } from "node:test";
import { CommandRun, type CommandEvent, type CommandEventSink } from "./commands.ts";
import { outputTextToBytes } from "./output-text.ts";
import type { CommandOutput, SandboxCommand } from "./sandbox.ts";
import type { SessionLease } from "./sessions.ts";

/** A session whose one command gives back these output pieces, then exits with 0. */
function leaseWithOutput(pieces: CommandOutput[]): SessionLease {
  const command: SandboxCommand = {
    output: Readable.from(pieces, { objectMode: true }),
    exited: Promise.resolve({ code: 0, signal: null }),
    terminate: () => Promise.resolve(),
  };
  return {
    agentEndpoint: { host: "127.0.0.1", port: 1 },
    ended: new Promise(() => undefined),
    endReasonSoon: () => Promise.resolve(undefined),
    release: () => undefined,
    outputTail: () => [],
    exec: () => Promise.resolve(command),
    openTerminal: () => Promise.reject(new Error("no terminals in this test")),
    shell: "/bin/sh",
  };
}

/** A receiver that is never full, keeping every event. */
function recordingSink(): CommandEventSink & { events: CommandEvent[] } {
  const events: CommandEvent[] = [];
  return {
    events,
    send: (event) => events.push(event) > 0,
    drained: () => Promise.resolve(),
    end: (last) => {
      events.push(last);
    },
  };
}

async function streamOf(pieces: CommandOutput[]): Promise<CommandEvent[]> {
  const run = await CommandRun.start(
    leaseWithOutput(pieces),
    { command: "true", timeoutSeconds: 60 },
    { killGraceMs: 0 },
  );
  const sink = recordingSink();
  await run.streamTo(sink);
  return sink.events;
}

/** Each delta as [stream, its output text]. */
function deltas(events: CommandEvent[]): [string, string][] {
  return events.flatMap((event) => {
    if (!("contentDelta" in event)) return [];
    const [stream, text] = Object.entries(event.contentDelta)[0] ?? ["", []];
    return [[stream, Buffer.concat(text).toString("utf8")]];
  });
}

const bytes = (stream: "stdout" | "stderr", ...values: number[]): CommandOutput => ({
  stream,
  bytes: Buffer.from(values),
});

describe("CommandRun's output events", () => {
  it("encodes bytes per stream: a character cut between reads waits for its rest", async () => {
    const events = await streamOf([
      bytes("stdout", 0x61, 0xe2, 0x82), // "a" and the start of "€"
      bytes("stderr", 0x22, 0x0a), // '"' and a newline
      bytes("stdout", 0xac, 0xff), // the rest of "€", then a byte that is not UTF-8
    ]);
    assert.deepEqual(events[0], { contentStart: {} });
    assert.deepEqual(events.at(-1), { contentStop: { exitCode: 0, status: "COMPLETED" } });
    assert.deepEqual(deltas(events), [
      ["stdout", "a"],
      ["stderr", '\\"\\n'],
      ["stdout", "€\\udcff"],
    ]);
  });

  it("sends no empty event for bytes that all wait, and ends with what still waits as escapes", async () => {
    const events = await streamOf([bytes("stdout", 0xf0), bytes("stdout", 0x9f, 0x98)]);
    assert.deepEqual(deltas(events), [["stdout", "\\udcf0\\udc9f\\udc98"]]);
    assert.equal(events.length, 3);
  });

  it("passes output text a driver encoded through as it is", async () => {
    const text = [Buffer.from("\\udcff"), Buffer.from("ok\\n")];
    const events = await streamOf([{ stream: "stdout", text }]);
    assert.deepEqual(deltas(events), [["stdout", "\\udcffok\\n"]]);
  });

  it("gives back the exact bytes, however reads cut them", async () => {
    const written = Buffer.concat([
      Buffer.from('text € 😀 \u0000 "q" \\ and '),
      Buffer.from([0xff, 0xed, 0xa0, 0x80, 0xe2, 0x82]),
    ]);
    const everyByte: CommandOutput[] = [...written].map((byte) => bytes("stdout", byte));
    const text = deltas(await streamOf(everyByte))
      .map(([, piece]) => piece)
      .join("");
    assert.deepEqual(outputTextToBytes(JSON.parse(`"${text}"`) as string), written);
  });
});
