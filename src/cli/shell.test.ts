import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { parseArgs, UsageError } from "./args.ts";
import { runClientCommand } from "./main.ts";
import { execLine, interactiveExec } from "./shell.ts";

/** Runs `berth WORDS` in this process with captured output, against nothing listening. */
async function berth(words: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const sink = (append: (text: string) => void) =>
    new Writable({
      write(chunk: Buffer, _encoding, done) {
        append(chunk.toString("utf8"));
        done();
      },
    });
  const stdin = new PassThrough();
  stdin.end();
  const code = await runClientCommand(words, {
    stdout: sink((text) => (stdout += text)),
    stderr: sink((text) => (stderr += text)),
    stdin,
    env: {
      BERTH_ENDPOINT: "http://127.0.0.1:1",
      AWS_ACCESS_KEY_ID: "AKIDSHELLTEST",
      AWS_SECRET_ACCESS_KEY: "secret",
    },
  });
  return { code: code ?? -1, stdout, stderr };
}

const execOptions = { session: { value: true }, "shell-id": { value: true } };

describe("berth exec -it", () => {
  it("takes -it (or -ti) anywhere before --, and the words after as the command", () => {
    assert.deepEqual(
      interactiveExec(
        parseArgs(["-it", "my_agent", "--session", "s", "--", "python3", "-q"], execOptions),
      ),
      { runtime: "my_agent", command: "python3 -q" },
    );
    assert.deepEqual(interactiveExec(parseArgs(["my_agent", "-ti"], execOptions)), {
      runtime: "my_agent",
      command: undefined,
    });
    assert.equal(interactiveExec(parseArgs(["my_agent", "--", "ls"], execOptions)), undefined);
  });

  it("types a line that runs the whole command, quotes and all, and ends the shell with its code", () => {
    for (const shell of ["bash", "sh"]) {
      const typed = spawnSync(shell, ["-c", execLine(`echo "it's $((6*7))"; exit 5`)], {
        encoding: "utf8",
      });
      assert.equal(typed.stdout, "it's 42\n", shell);
      assert.equal(typed.status, 5, shell);
      const missing = spawnSync(shell, ["-c", execLine("no-such-program-here")]);
      assert.equal(missing.status, 127, `${shell}: not found ends the shell too`);
    }
  });

  it("refuses --shell-id without -it, and --timeout with it", async () => {
    assert.throws(
      () => interactiveExec(parseArgs(["my_agent", "--shell-id", "a", "--", "ls"], execOptions)),
      new UsageError("--shell-id goes with -it"),
    );
    const timed = await berth(["exec", "-it", "my_agent", "--session", "s", "--timeout", "5"]);
    assert.equal(timed.code, 2);
    assert.match(timed.stderr, /--timeout is for one-shot commands, not with -it/);
    const noRuntime = await berth(["exec", "-it", "--session", "s"]);
    assert.equal(noRuntime.code, 2);
    assert.match(noRuntime.stderr, /^berth exec: missing RUNTIME\nUsage: berth exec/);
  });
});

describe("berth shell's command line", () => {
  it("wants a session, and --expires only with --print-url", async () => {
    const noSession = await berth(["shell", "my_agent"]);
    assert.equal(noSession.code, 2);
    assert.match(noSession.stderr, /--session is required/);
    const expires = await berth(["shell", "my_agent", "--session", "s", "--expires", "60"]);
    assert.equal(expires.code, 2);
    assert.match(expires.stderr, /--expires goes with --print-url/);
    const tooLong = await berth([
      ...["shell", "my_agent", "--session", "s", "--print-url", "--expires", "604801"],
    ]);
    assert.equal(tooLong.code, 2);
    assert.match(tooLong.stderr, /--expires must be a whole number from 1 to 604800/);
  });

  it("exits 125 when Berth cannot be reached for a shell, 3 for a URL (no shell to stand in for)", async () => {
    const shell = await berth(["shell", "my_agent", "--session", "s"]);
    assert.equal(shell.code, 125);
    assert.match(shell.stderr, /^berth shell: cannot reach Berth at http:\/\/127\.0\.0\.1:1/);
    const url = await berth(["shell", "my_agent", "--session", "s", "--print-url"]);
    assert.equal(url.code, 3);
  });

  it("lists its options and examples in --help", async () => {
    const help = await berth(["shell", "--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--print-url/);
    assert.match(help.stdout, /--shell-id VALUE/);
    assert.match(help.stdout, /Examples:\n {2}berth shell my_agent --session/);
  });
});
