// The request framing and parsing of Berth's root servers (berth-exec, berth-mount), built with
// AddressSanitizer and UndefinedBehaviorSanitizer from the very headers the servers use
// (native/parser-fuzz.c) and fed hostile input: every request must be parsed or refused with a
// message, and no sanitizer may report anything.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";

const nativeDir = fileURLToPath(new URL("../native/", import.meta.url));
/** The folder the harness confines mount paths to. */
const confined = "/berth-data";
const maxExecRequestBytes = 4 * 2 ** 20;
const maxMountRequestBytes = 8 * 4096;

const compilerMissing =
  spawnSync("cc", ["--version"]).error === undefined
    ? false
    : "no C compiler (`cc`): install gcc (scripts/setup.sh does) to run the root helpers' parsers under ASan/UBSan";

interface Outcome {
  exec: string;
  mount: string;
}

let workDir = "";
let harness = "";

/** Runs every case through the sanitized harness; their outcomes, in order. */
function parse(cases: Buffer[]): Outcome[] {
  const input = Buffer.concat(
    cases.flatMap((bytes) => {
      const length = Buffer.alloc(4);
      length.writeUInt32BE(bytes.length);
      return [length, bytes];
    }),
  );
  const result = spawnSync(harness, [], { input, maxBuffer: 256 * 2 ** 20 });
  const stderr = result.stderr.toString();
  assert.equal(result.status, 0, `the harness failed (a sanitizer report?):\n${stderr}`);
  assert.equal(stderr, "", "nothing on stderr: no sanitizer report");
  const outcomes = cases.map(() => ({ exec: "", mount: "" }));
  for (const line of result.stdout.toString("latin1").split("\n").slice(0, -1)) {
    const match = /^(\d+) (exec|mount) (.*)$/.exec(line);
    assert.ok(match, `an outcome line: ${line}`);
    const outcome = outcomes[Number(match[1])];
    assert.ok(outcome !== undefined && outcome[match[2] as keyof Outcome] === "", line);
    outcome[match[2] as keyof Outcome] = match[3] ?? "";
  }
  for (const [index, outcome] of outcomes.entries()) {
    for (const program of ["exec", "mount"] as const) {
      assert.match(outcome[program], /^(ok .+|refused: .+)$/, `case ${index}, ${program}`);
    }
  }
  return outcomes;
}

function frame(type: string, payload: Buffer, declaredLength = payload.length): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, "latin1");
  header.writeUInt32BE(declaredLength, 1);
  return Buffer.concat([header, payload]);
}

function entries(...list: string[]): Buffer {
  return Buffer.from(list.map((entry) => `${entry}\0`).join(""), "latin1");
}

const execRequest = (...extra: string[]): Buffer =>
  frame("r", entries("target=42", "uid=1000", "gid=1000", "cwd=/app", "arg=/bin/true", ...extra));

const mountRequest = (...list: string[]): Buffer => frame("m", entries(...list));

/** A deterministic generator (mulberry32), so that a failing case can be found again. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 2 ** 32;
  };
}

describe("root helpers' request parsers under ASan and UBSan", { skip: compilerMissing }, () => {
  before(() => {
    workDir = mkdtempSync(join(tmpdir(), "berth-parser-fuzz-"));
    harness = join(workDir, "parser-fuzz");
    const built = spawnSync("cc", [
      "-O1",
      "-g",
      "-fno-omit-frame-pointer",
      "-Wall",
      "-Wextra",
      "-Werror",
      "-fsanitize=address,undefined",
      "-fno-sanitize-recover=all",
      "-o",
      harness,
      join(nativeDir, "parser-fuzz.c"),
    ]);
    assert.equal(built.status, 0, `building the harness failed:\n${built.stderr.toString()}`);
  });
  after(() => {
    if (workDir !== "") rmSync(workDir, { recursive: true, force: true });
  });

  it("parses well-formed requests of both servers", () => {
    const [exec, ...mounts] = parse([
      execRequest("env=PATH=/bin", "env=EMPTY=", "cgroup=/sys/fs/cgroup/x/cgroup.procs", "arg=-c"),
      mountRequest(
        "op=loop-image",
        `image=${confined}/storage/images/a.img`,
        `target=${confined}/m/a`,
      ),
      mountRequest("op=share", `target=${confined}/sessions/s1/mnt`),
      mountRequest(
        "op=idmap-bind",
        `source=${confined}/storage/mounts/a`,
        `target=${confined}/sessions/s1/mnt/a`,
        "userns-pid=4242",
      ),
      mountRequest(
        "op=image-root",
        `target=${confined}/sessions/s1/root`,
        "size=67108864",
        `scratch=${confined}/sessions/s1/host/scratch`,
        "ids=0:0:2000001",
        `root=${confined}/images/roots/abc`,
      ),
      mountRequest("op=unmount", `target=/srv${confined}//sessions/s1/mnt`),
    ]);
    assert.ok(exec);
    assert.equal(exec.exec, "ok argc=2 env=2 cgroups=1 cwd=/app");
    assert.deepEqual(
      mounts.map((outcome) => outcome.mount),
      [
        "ok op=loop-image target=m/a",
        "ok op=share target=sessions/s1/mnt",
        "ok op=idmap-bind target=sessions/s1/mnt/a",
        "ok op=image-root target=sessions/s1/root",
        "ok op=unmount target=sessions/s1/mnt",
      ],
    );
    // Each server takes only its own frames.
    assert.match(exec.mount, /^refused: bad request: a frame of type 0x72/);
    assert.match(mounts[0]?.exec ?? "", /^refused: bad request: a frame of type 0x6d/);
  });

  it("parses a terminal's window size, and refuses one the kernel cannot hold", () => {
    const outcomes = parse([
      execRequest("tty=80x24"),
      execRequest("tty=65535x1"),
      execRequest("tty=80x24", "tty=80x24"),
      execRequest("tty=0x24"),
      execRequest("tty=80x65536"),
      execRequest("tty=80"),
      execRequest("tty=80x24x1"),
      execRequest("tty=x24"),
      execRequest("tty= 80x24"),
      execRequest("tty=80X24"),
      execRequest("tty=99999999999999999999x1"),
    ]).map((outcome) => outcome.exec);
    const badSize = "refused: bad request: tty must be COLSxROWS, each from 1 to 65535";
    assert.deepEqual(outcomes, [
      "ok argc=1 env=0 cgroups=0 cwd=/app tty=80x24",
      "ok argc=1 env=0 cgroups=0 cwd=/app tty=65535x1",
      "refused: bad request: tty is given twice",
      ...Array.from({ length: 8 }, () => badSize),
    ]);
  });

  it("refuses every truncation of a frame, header or payload", () => {
    const whole = [execRequest(), mountRequest("op=share", `target=${confined}/a`)];
    const cuts = whole.flatMap((bytes) =>
      Array.from({ length: bytes.length }, (_, length) => bytes.subarray(0, length)),
    );
    for (const [index, outcome] of parse(cuts).entries()) {
      const program = (cuts[index]?.[0] ?? 0x72) === 0x6d ? "mount" : "exec";
      assert.match(
        outcome[program],
        /^refused: bad request: the connection ended inside (the frame header|its \d+-byte payload)$/,
        `cut at ${cuts[index]?.length}`,
      );
    }
  });

  it("refuses lengths past the bound before reading them, and payloads without a final NUL", () => {
    const [huge, justOverExec, justOverMount, noNul, empty, unterminatedAtBound] = parse([
      frame("r", Buffer.alloc(0), 0xffffffff),
      frame("r", Buffer.alloc(0), maxExecRequestBytes + 1),
      frame("m", Buffer.alloc(0), maxMountRequestBytes + 1),
      frame("m", Buffer.from(`op=share\0target=${confined}/a`)),
      frame("r", Buffer.alloc(0)),
      frame("r", Buffer.alloc(maxExecRequestBytes, "a")),
    ]);
    assert.equal(
      huge?.exec,
      `refused: bad request: 4294967295 bytes, more than the ${maxExecRequestBytes} a request may have`,
    );
    assert.match(justOverExec?.exec ?? "", /more than the 4194304 a request may have/);
    assert.match(justOverMount?.mount ?? "", /more than the 32768 a request may have/);
    assert.equal(noNul?.mount, "refused: bad request: its last entry does not end in NUL");
    assert.equal(empty?.exec, "refused: bad request: it has no entries");
    assert.equal(
      unterminatedAtBound?.exec,
      "refused: bad request: its last entry does not end in NUL",
    );
  });

  it("refuses duplicate, unknown and missing keys, and mount requests that name no op", () => {
    const refusals = parse([
      execRequest("target=43"),
      execRequest("cwd=/tmp"),
      execRequest("user=root"),
      frame("r", entries("target=42", "uid=1", "gid=1", "arg=/bin/true")),
      frame("r", entries("target=42", "uid=1", "gid=1", "cwd=/", "arg=bin/true")),
      frame("r", entries("=x")),
      frame("r", entries("noequals")),
      mountRequest(`target=${confined}/a`),
      mountRequest("op=format-disk", `target=${confined}/a`),
      mountRequest("op=share", "op=share", `target=${confined}/a`),
      mountRequest("op=share", `target=${confined}/a`, `target=${confined}/b`),
      mountRequest("op=share", `target=${confined}/a`, `image=${confined}/i`),
      mountRequest("op=loop-image", `target=${confined}/a`),
      mountRequest("op=idmap-bind", `source=${confined}/a`, `target=${confined}/b`),
    ]).map((outcome, index) => (index < 7 ? outcome.exec : outcome.mount));
    assert.deepEqual(refusals, [
      "refused: bad request: target is given twice",
      "refused: bad request: cwd is given twice",
      "refused: bad request: unknown key 'user' (want target, uid, gid, cwd, cgroup, env, arg, tty)",
      "refused: bad request: target (above 0), uid, gid and cwd are required",
      "refused: bad request: the first arg must be an absolute program path",
      "refused: bad request: entry 1 is not key=value",
      "refused: bad request: entry 1 is not key=value",
      "refused: bad request: no op named (want op=loop-image, share, idmap-bind, image-root or unmount)",
      "refused: bad request: unknown op 'format-disk' (want loop-image, share, idmap-bind, image-root or unmount)",
      "refused: bad request: op is given twice",
      "refused: bad request: target is given twice",
      "refused: bad request: op=share takes target, not 'image'",
      "refused: bad request: op=loop-image needs image and target; image is missing",
      "refused: bad request: op=idmap-bind needs source, target and userns-pid; userns-pid is missing",
    ]);
  });

  it("refuses overlong values, too many entries, bad numbers and paths outside the folder", () => {
    const longest = "a".repeat(32 * 4096 - 1);
    // A path of PATH_MAX - 1 bytes, the longest a mount request's value may be.
    const longestPath = `${confined}/${"a".repeat(4095 - confined.length - 1)}`;
    const refusals = parse([
      execRequest(`arg=${longest}`),
      execRequest(`arg=${longest}a`),
      execRequest(...Array.from({ length: 4096 }, () => "arg=x")),
      execRequest(...Array.from({ length: 9 }, () => "cgroup=/x")),
      frame("r", entries("target=0", "uid=1", "gid=1", "cwd=/", "arg=/bin/true")),
      frame("r", entries("target=1", "uid=-1", "gid=1", "cwd=/", "arg=/bin/true")),
      frame("r", entries("target=1", "uid=99999999999999999999", "gid=1", "cwd=/", "arg=/x")),
      frame("r", entries("target=1", "uid= 1", "gid=1", "cwd=/", "arg=/x")),
      mountRequest("op=share", `target=${longestPath}`),
      mountRequest("op=share", `target=${longestPath}a`),
      mountRequest("op=share", `target=${confined}/a`, "x=1", "y=1", "z=1", "w=1", "v=1"),
      mountRequest("op=share", "target=relative/a"),
      mountRequest("op=share", "target=/etc"),
      mountRequest("op=share", `target=${confined}-other/a`),
      mountRequest("op=share", `target=${confined}/../etc`),
      mountRequest("op=share", `target=${confined}/a/../../etc`),
      mountRequest("op=share", `target=${confined}//`),
      mountRequest(
        "op=image-root",
        `root=${confined}/r`,
        "ids=0:65536:5",
        `scratch=${confined}/s`,
        "size=1",
        `target=${confined}/t`,
      ),
      mountRequest(
        "op=image-root",
        `root=${confined}/r`,
        "ids=0:0:0",
        `scratch=${confined}/s`,
        "size=1",
        `target=${confined}/t`,
      ),
      mountRequest(
        "op=image-root",
        `root=${confined}/r`,
        "ids=1:2",
        `scratch=${confined}/s`,
        "size=1",
        `target=${confined}/t`,
      ),
      mountRequest(
        "op=image-root",
        `root=${confined}/r`,
        "ids=1:2:3",
        `scratch=${confined}/s`,
        "size=0",
        `target=${confined}/t`,
      ),
      mountRequest(
        "op=idmap-bind",
        `source=${confined}/a`,
        `target=${confined}/b`,
        "userns-pid=4194305",
      ),
    ]);
    const outcomes = refusals.map((outcome, index) => (index < 8 ? outcome.exec : outcome.mount));
    assert.deepEqual(outcomes, [
      "ok argc=2 env=0 cgroups=0 cwd=/app",
      "refused: bad request: the value of 'arg' is longer than 131071 bytes",
      "refused: bad request: more than 4096 arguments",
      "refused: bad request: more than 8 cgroups",
      "refused: bad request: target (above 0), uid, gid and cwd are required",
      "refused: bad request: uid is not a number from 0 to 4294967294",
      "refused: bad request: uid is not a number from 0 to 4294967294",
      "refused: bad request: uid is not a number from 0 to 4294967294",
      `ok op=share target=${longestPath.slice(confined.length + 1)}`,
      "refused: bad request: the value of 'target' is longer than 4095 bytes",
      "refused: bad request: more than 6 entries",
      "refused: bad request: target is not an absolute path",
      `refused: target /etc is outside ${confined}, the folder mounts are confined to`,
      `refused: target ${confined}-other/a is outside ${confined}, the folder mounts are confined to`,
      `refused: bad request: target ${confined}/../etc has a '..' component`,
      `refused: bad request: target ${confined}/a/../../etc has a '..' component`,
      `refused: target ${confined}// is the folder mounts are confined to, not one inside it`,
      "refused: bad request: ids must be UID:GID:HOST, UID and GID below 65536, HOST above 0",
      "refused: bad request: ids must be UID:GID:HOST, UID and GID below 65536, HOST above 0",
      "refused: bad request: ids must be UID:GID:HOST",
      "refused: bad request: size must be a number of bytes above 0",
      "refused: bad request: userns-pid must be a process id",
    ]);
  });

  it("survives thousands of random and mutated requests (seeded)", () => {
    const random = seededRandom(0x0b3e7);
    const byte = (): number => Math.floor(random() * 256);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)] as T;
    const keys = [
      "op",
      "target",
      "image",
      "source",
      "root",
      "scratch",
      "size",
      "ids",
      "userns-pid",
      "uid",
      "gid",
      "cwd",
      "cgroup",
      "env",
      "arg",
      "tty",
      "",
      "x",
    ];
    const values = [
      "share",
      "loop-image",
      "idmap-bind",
      "image-root",
      "unmount",
      `${confined}/a`,
      `${confined}/../x`,
      "/etc",
      "0",
      "1:2:3",
      "4242",
      "",
      "=",
      "a=b",
      "\xff\xfe",
      "/bin/true",
      "80x24",
      "65536x1",
    ];
    const cases: Buffer[] = [];
    for (let index = 0; index < 1000; index += 1) {
      // Bytes alone: mostly not even a header.
      cases.push(Buffer.from(Array.from({ length: Math.floor(random() * 64) }, byte)));
    }
    for (let index = 0; index < 1500; index += 1) {
      // Well-framed entries from the servers' own vocabulary, in any order and number.
      const list = Array.from(
        { length: Math.floor(random() * 9) },
        () => `${pick(keys)}=${pick(values)}`,
      );
      cases.push(frame(pick(["r", "m"]), entries(...list)));
    }
    const valid = [execRequest(), mountRequest("op=share", `target=${confined}/a`)];
    for (let index = 0; index < 1500; index += 1) {
      // A valid request with a few bytes changed, its declared length included.
      const bytes = Buffer.from(pick(valid));
      for (let flips = 1 + Math.floor(random() * 4); flips > 0; flips -= 1) {
        bytes[Math.floor(random() * bytes.length)] = byte();
      }
      cases.push(bytes);
    }
    // parse() asserts the harness exited cleanly, with nothing on stderr, and that every case
    // was either parsed or refused with a message.
    assert.equal(parse(cases).length, 4000);
  });
});
