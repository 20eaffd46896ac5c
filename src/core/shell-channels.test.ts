import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ReplayRing } from "./replay-ring.ts";
import {
  closeCodeOf,
  closingStatus,
  decodeFrame,
  encodeFrame,
  encodeFrames,
  encodeResize,
  encodeStatus,
  maxSentFrameBytes,
  openedStatus,
  parseResize,
  parseStatus,
  shellChannels,
  shellCloseCodes,
} from "./shell-channels.ts";

describe("shell frames", () => {
  it("put the channel in the first byte and the payload after it", () => {
    const frame = encodeFrame(shellChannels.stdin, Buffer.from("ls\r"));
    assert.deepEqual([...frame], [0, 0x6c, 0x73, 0x0d]);
    assert.deepEqual(decodeFrame(frame), { channel: 0, payload: Buffer.from("ls\r") });
    assert.deepEqual([...encodeFrame(shellChannels.close)], [0xff]);
    assert.equal(decodeFrame(Buffer.alloc(0)), undefined, "an empty frame has no channel");
  });

  it("split output into frames of at most 64 KiB, channel byte included", () => {
    const payload = Buffer.alloc(3 * maxSentFrameBytes, "abcdefg");
    const frames = encodeFrames(shellChannels.stdout, payload);
    assert.equal(frames.length, 4);
    for (const frame of frames) {
      assert.ok(frame.length <= maxSentFrameBytes);
      assert.equal(frame[0], shellChannels.stdout);
    }
    const joined = Buffer.concat(
      frames.map((frame) => decodeFrame(frame)?.payload ?? Buffer.alloc(0)),
    );
    assert.ok(joined.equals(payload));
    assert.equal(encodeFrames(shellChannels.stdout, Buffer.alloc(maxSentFrameBytes - 1)).length, 1);
    assert.equal(encodeFrames(shellChannels.stdout, Buffer.alloc(maxSentFrameBytes)).length, 2);
    assert.throws(
      () => encodeFrame(shellChannels.stdout, Buffer.alloc(maxSentFrameBytes)),
      RangeError,
    );
  });

  it("read resizes as Berth and Kubernetes clients write them, and nothing else", () => {
    const resize = decodeFrame(encodeResize({ width: 120, height: 40 }));
    assert.equal(resize?.channel, shellChannels.resize);
    assert.deepEqual(parseResize(resize.payload), { width: 120, height: 40 });
    assert.deepEqual(parseResize(Buffer.from('{"Width":80,"Height":24}')), {
      width: 80,
      height: 24,
    });
    for (const bad of [
      "",
      "not json",
      "null",
      '{"width":80}',
      '{"width":0,"height":24}',
      '{"width":80.5,"height":24}',
      '{"width":65536,"height":24}',
      '{"width":"80","height":"24"}',
    ]) {
      assert.equal(parseResize(Buffer.from(bad)), undefined, bad);
    }
  });
});

describe("shell status frames", () => {
  const statusOf = (frame: Buffer) => {
    const decoded = decodeFrame(frame);
    assert.equal(decoded?.channel, shellChannels.status);
    return parseStatus(decoded.payload);
  };

  it("open with Running, the shell and session ids and whether this is a reconnection", () => {
    assert.deepEqual(
      statusOf(
        encodeStatus(openedStatus({ shellId: "a1", runtimeSessionId: "s", reconnected: true })),
      ),
      {
        kind: "Status",
        apiVersion: "v1",
        metadata: {},
        status: "Running",
        shellId: "a1",
        runtimeSessionId: "s",
        reconnected: true,
      },
    );
  });

  it("end with Success for exit code 0, or with Kubernetes' NonZeroExitCode and ExitCode cause", () => {
    assert.deepEqual(closingStatus("a1", { kind: "exited", exitCode: 0 }), {
      kind: "Status",
      apiVersion: "v1",
      metadata: {},
      status: "Success",
      shellId: "a1",
      exitCode: 0,
    });
    const failed = closingStatus("a1", { kind: "exited", exitCode: 130 });
    assert.equal(failed.status, "Failure");
    assert.equal(failed.reason, "NonZeroExitCode");
    assert.equal(failed.exitCode, 130);
    assert.deepEqual(failed.details, { causes: [{ reason: "ExitCode", message: "130" }] });
  });

  it("say why a connection ended without an exit, with a close code to match", () => {
    const ended = closingStatus("a1", { kind: "sessionEnded", reason: "idle timeout" });
    assert.equal(ended.status, "Failure");
    assert.equal(ended.reason, "SessionEnded");
    assert.equal(ended.message, "The session ended: idle timeout");
    assert.equal(ended.exitCode, undefined);
    assert.equal(closingStatus("a1", { kind: "replaced" }).reason, "Replaced");
    assert.equal(closingStatus("a1", { kind: "shuttingDown" }).reason, "ShuttingDown");
    assert.equal(closeCodeOf({ kind: "exited", exitCode: 2 }), shellCloseCodes.ended);
    assert.equal(closeCodeOf({ kind: "sessionEnded", reason: "x" }), shellCloseCodes.ended);
    assert.equal(closeCodeOf({ kind: "replaced" }), shellCloseCodes.replaced);
    assert.equal(closeCodeOf({ kind: "shuttingDown" }), shellCloseCodes.goingAway);
    assert.equal(parseStatus(Buffer.from("[1]")), undefined);
  });
});

describe("ReplayRing", () => {
  it("keeps the last capacityBytes across wrap-arounds, oldest first", () => {
    const ring = new ReplayRing(8);
    ring.append(Buffer.from("abc"));
    assert.equal(ring.contents().toString(), "abc");
    ring.append(Buffer.from("defgh"));
    assert.equal(ring.contents().toString(), "abcdefgh");
    ring.append(Buffer.from("ij"));
    assert.equal(ring.contents().toString(), "cdefghij");
    ring.append(Buffer.from("klmnopqrstuvwxyz"));
    assert.equal(ring.contents().toString(), "stuvwxyz");
    ring.append(Buffer.from("0"));
    assert.equal(ring.contents().toString(), "tuvwxyz0");
    assert.equal(ring.sizeBytes, 8);
  });

  it("gives a copy that later output does not change", () => {
    const ring = new ReplayRing(4);
    ring.append(Buffer.from("abcd"));
    const copy = ring.contents();
    ring.append(Buffer.from("wxyz"));
    assert.equal(copy.toString(), "abcd");
  });

  it("keeps nothing at capacity 0", () => {
    const ring = new ReplayRing(0);
    ring.append(Buffer.from("abc"));
    assert.equal(ring.contents().length, 0);
  });
});
