import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import { chmodSync, chownSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import {
  GetAgentRuntimeCommand,
  UpdateAgentRuntimeCommand,
} from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, installAgent } from "./support/agents.ts";
import { serveCommand } from "./support/berth-process.ts";
import {
  hostSuite,
  makeDataDir,
  removeDir,
  startTestBerth,
  useTestBerth,
  type TestBerth,
} from "./support/berth.ts";
import { runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("python versions (a host suite: it tests the real parts, as root)", hostSuite, () => {
  // This machine (and CI's) has Pythons 3.10 to 3.13 in pyenv (/root/.pyenv/versions, which
  // sandbox users cannot even traverse) and Debian's 3.11 in /usr/bin, and no 3.14.
  const servedVersions = ["3.10", "3.11", "3.12", "3.13"] as const;
  const runtimeOf = (version: string) => `PYTHON_${version.replace(".", "_")}` as "PYTHON_3_12";
  const pyenvVersions = "/root/.pyenv/versions";

  function pythonArtifact(version: string) {
    return {
      agentRuntimeArtifact: {
        codeConfiguration: {
          code: { s3: { bucket: "agents", prefix: "python-example" } },
          runtime: runtimeOf(version),
          entryPoint: ["main.py"],
        },
      },
    };
  }

  async function invokePythonAgent(berth: TestBerth, arn: string, session: string) {
    const response = await berth.data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: session,
        payload: Buffer.from(JSON.stringify({ prompt: "which python?" })),
        contentType: "application/json",
      }),
    );
    return JSON.parse((await response.response?.transformToString()) ?? "") as Record<
      string,
      unknown
    >;
  }

  /** Runs a command in the session and returns its stdout, failing on a non-zero exit. */
  async function sandboxOutput(berth: TestBerth, arn: string, session: string, command: string) {
    const done = await runCommand(berth.data, arn, session, command);
    assert.equal(done.exitCode, 0, `${command}\n${done.stdout}\n${done.stderr}`);
    return done.stdout;
  }

  const harness = useTestBerth([], (berth) => {
    installAgent(berth.dataDir, agentSources.pythonExample, "python-example");
  });

  describe("Python runtimes run the Python they name, found without configuration", () => {
    for (const version of servedVersions) {
      it(`runs a ${runtimeOf(version)} agent, its commands and its python, python3 and pip on Python ${version}`, async () => {
        const berth = harness();
        const runtime = await createRuntime(
          berth,
          "python-example",
          pythonArtifact(version),
          "main.py",
        );
        const session = newSessionId();
        const reply = await invokePythonAgent(berth, runtime.arn, session);
        assert.equal(reply["reply"], "python agent heard: which python?");
        // The agent's own process: started as `python3 main.py`, running python3.X.
        const agentProgram = await sandboxOutput(
          berth,
          runtime.arn,
          session,
          "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline | grep -q '^python3 main.py' && readlink $p/exe; done; true",
        );
        assert.match(agentProgram.trim(), new RegExp(`/bin/python${version}$`));
        const versions = await sandboxOutput(
          berth,
          runtime.arn,
          session,
          "python3 -c 'import sys; print(sys.version)'; python -c 'import sys; print(sys.version)'; pip --version",
        );
        const [fromPython3 = "", fromPython = "", fromPip = ""] = versions.trim().split("\n");
        assert.ok(fromPython3.startsWith(`${version}.`), `python3 runs ${version}: ${versions}`);
        assert.ok(fromPython.startsWith(`${version}.`), `python runs ${version}: ${versions}`);
        assert.match(fromPip, new RegExp(`\\(python ${version.replace(".", "\\.")}\\)`));
        const venv = await sandboxOutput(
          berth,
          runtime.arn,
          session,
          "python3 -m venv --without-pip /tmp/venv && /tmp/venv/bin/python -c 'import sys; print(sys.prefix != sys.base_prefix, sys.version)'",
        );
        assert.ok(venv.startsWith(`True ${version}.`), `a venv of ${version}: ${venv}`);
      });
    }

    it("makes a venv with its own pip (python3 -m venv)", async () => {
      const berth = harness();
      const runtime = await createRuntime(
        berth,
        "python-example",
        pythonArtifact("3.12"),
        "main.py",
      );
      const output = await sandboxOutput(
        berth,
        runtime.arn,
        newSessionId(),
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version",
      );
      assert.match(
        output,
        /^pip .* from \/tmp\/venv\/lib\/python3\.12\/site-packages\/pip \(python 3\.12\)/,
      );
    });

    it("shows a sandbox nothing of /root but the files of its own Python", async () => {
      const berth = harness();
      const runtime = await createRuntime(
        berth,
        "python-example",
        pythonArtifact("3.12"),
        "main.py",
      );
      const session = newSessionId();
      const prefix = execFileSync("/bin/sh", ["-c", `ls -d ${pyenvVersions}/3.12.*`], {
        encoding: "utf8",
      }).trim();
      // What an agent does to look around: make what it can readable, then list everything.
      const listing = await sandboxOutput(
        berth,
        runtime.arn,
        session,
        "chmod -R u+rwx /root 2>/dev/null; find /root -not -path '*/lib/python3.12/*' -not -path '*/include/python3.12/*' | sort",
      );
      assert.deepEqual(listing.trim().split("\n"), [
        "/root",
        "/root/.pyenv",
        "/root/.pyenv/versions",
        prefix,
        `${prefix}/bin`,
        `${prefix}/bin/pip3.12`,
        `${prefix}/bin/python3.12`,
        `${prefix}/include`,
        `${prefix}/include/python3.12`,
        `${prefix}/lib`,
        `${prefix}/lib/libpython3.12.so`,
        `${prefix}/lib/libpython3.12.so.1.0`,
        `${prefix}/lib/python3.12`,
      ]);
      const written = await runCommand(
        berth.data,
        runtime.arn,
        session,
        `touch ${prefix}/lib/python3.12/planted.py`,
      );
      assert.notEqual(written.exitCode, 0, "the interpreter is read-only");
    });
  });

  describe("Python runtimes without their Python", () => {
    it("fails a PYTHON_3_14 runtime (CREATE_FAILED) saying what to install or set, never running another Python", async () => {
      const runtime = await createRuntime(
        harness(),
        "python-example",
        pythonArtifact("3.14"),
        "main.py",
        "CREATE_FAILED",
      );
      assert.match(runtime.failureReason ?? "", /PYTHON_3_14 needs Python 3\.14/);
      assert.match(runtime.failureReason ?? "", /Install python3\.14/);
      assert.match(runtime.failureReason ?? "", /pythonInterpreters/);
    });

    it("fails an update to PYTHON_3_14 (UPDATE_FAILED)", async () => {
      const berth = harness();
      const runtime = await createRuntime(
        berth,
        "python-example",
        pythonArtifact("3.13"),
        "main.py",
      );
      await berth.control.send(
        new UpdateAgentRuntimeCommand({
          agentRuntimeId: runtime.id,
          ...pythonArtifact("3.14"),
          roleArn: "arn:aws:iam::123456789012:role/agent",
        }),
      );
      await berth.berth.idle();
      const updated = await berth.control.send(
        new GetAgentRuntimeCommand({ agentRuntimeId: runtime.id }),
      );
      assert.equal(updated.status, "UPDATE_FAILED");
      assert.match(updated.failureReason ?? "", /PYTHON_3_14 needs Python 3\.14/);
    });
  });

  describe("the pythonInterpreters setting", () => {
    let configured: TestBerth | undefined;
    const pyenv311 = readdirSync(pyenvVersions).find((name) => name.startsWith("3.11."));
    const interpreter = join(pyenvVersions, pyenv311 ?? "3.11-missing", "bin", "python3.11");

    before(async () => {
      configured = await startTestBerth(["--python-interpreters", `PYTHON_3_11=${interpreter}`]);
      installAgent(configured.dataDir, agentSources.pythonExample, "python-example");
    });
    after(async () => {
      await configured?.close();
      if (configured !== undefined) removeDir(configured.dataDir);
    });

    it("runs a runtime on the interpreter it names (pyenv's 3.11, not Debian's found first)", async () => {
      const berth = configured as TestBerth;
      const runtime = await createRuntime(
        berth,
        "python-example",
        pythonArtifact("3.11"),
        "main.py",
      );
      const inSandbox = await sandboxOutput(
        berth,
        runtime.arn,
        newSessionId(),
        "python3 -c 'import sys; print(sys.version)'",
      );
      const onHost = execFileSync(interpreter, ["-c", "import sys; print(sys.version)"], {
        encoding: "utf8",
      });
      assert.equal(inSandbox, onHost);
    });

    for (const [entry, problem] of [
      [
        "PYTHON_3_12=/nonexistent/bin/python3.12",
        /PYTHON_3_12: \/nonexistent\/bin\/python3\.12 does not exist/,
      ],
      [
        "PYTHON_3_12=/root/.pyenv/shims/python3.12",
        /PYTHON_3_12: .*shims\/python3\.12 is not an installed python3\.12/,
      ],
      [
        "PYTHON_3_12=/usr/bin/python3.11",
        /PYTHON_3_12: \/usr\/bin\/python3\.11 is not an installed python3\.12/,
      ],
      ["PYTHON_3_9=/usr/bin/python3.11", /RUNTIME one of PYTHON_3_10, .*PYTHON_3_14/],
    ] as const) {
      it(`refuses to start with ${entry}, in one line that says what is wrong (exit 2)`, async () => {
        assert.match(await startProblem(entry), problem);
      });
    }

    it("refuses an interpreter that users other than root may change (they would run code in every session)", async () => {
      const folder = makeDataDir();
      try {
        const install = join(folder, "python3.12");
        mkdirSync(join(install, "bin"), { recursive: true });
        mkdirSync(join(install, "lib", "python3.12"), { recursive: true });
        writeFileSync(join(install, "bin", "python3.12"), "", { mode: 0o755 });
        writeFileSync(join(install, "lib", "python3.12", "os.py"), "");
        // A libpython anyone may write, beside a root-owned interpreter: sessions would load it.
        writeFileSync(join(install, "lib", "libpython3.12.so.1.0"), "", { mode: 0o666 });
        chmodSync(join(install, "lib", "libpython3.12.so.1.0"), 0o666);
        assert.match(
          await startProblem(`PYTHON_3_12=${join(install, "bin", "python3.12")}`),
          /libpython3\.12\.so\.1\.0 may be changed by users other than root/,
        );
        // And the folders above the install: whoever may write one could swap the install.
        chmodSync(join(install, "lib", "libpython3.12.so.1.0"), 0o644);
        chmodSync(folder, 0o775);
        assert.match(
          await startProblem(`PYTHON_3_12=${join(install, "bin", "python3.12")}`),
          new RegExp(`${folder} may be changed by users other than root`),
        );
        chmodSync(folder, 0o700);
        chownSync(join(install, "bin", "python3.12"), 65534, 65534);
        assert.match(
          await startProblem(`PYTHON_3_12=${join(install, "bin", "python3.12")}`),
          /python3\.12 may be changed by users other than root/,
        );
      } finally {
        removeDir(folder);
      }
    });
  });

  /** Starts `berth serve` with `--python-interpreters entry`; expects exit 2 and returns the one problem line. */
  async function startProblem(entry: string): Promise<string> {
    const dataDir = makeDataDir();
    try {
      const [program = "", ...programArgs] = serveCommand([
        "--data-dir",
        dataDir,
        "--python-interpreters",
        entry,
      ]);
      const child = spawn(program, programArgs, { stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString("utf8")));
      // A server that took the entry starts listening: stop it, and the exit code below fails.
      child.stdout.on("data", (chunk: Buffer) => {
        if (chunk.toString("utf8").includes('"berth listening"')) child.kill("SIGTERM");
      });
      const [code] = (await once(child, "exit")) as [number | null];
      assert.equal(code, 2, stderr);
      const lines = stderr.trim().split("\n");
      assert.equal(lines.length, 2, stderr);
      assert.match(lines[1] ?? "", /^ {2}- --python-interpreters (entry|must)/);
      return lines[1] ?? "";
    } finally {
      removeDir(dataDir);
    }
  }
});
