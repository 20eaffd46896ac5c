import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { installAgent } from "./support/agents.ts";
import { hostSuite, removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { sandboxPids } from "./support/cgroups.ts";
import { runCommand } from "./support/commands.ts";
import { createRuntime, newSessionId } from "./support/runtimes.ts";

describe("seccomp (a host suite: it tests the real parts, as root)", hostSuite, () => {
  /** test/agents/shell: runs the shell command it is sent, as an agent's own tools would. */
  const shellAgent = fileURLToPath(new URL("./agents/shell", import.meta.url));

  /**
   * What an attacker in a session reaches for first, each through the raw system call (x86_64
   * numbers): prints, per attempt, "allowed" or the errno name it failed with.
   */
  const attempts = String.raw`
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def syscall(number, *args):
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = libc.syscall(ctypes.c_long(number), *converted)
    if result == 0 and number in (56, 435):
        os._exit(0)  # a child the old kernel path let through: it ends at once
    if result < 0:
        return errno.errorcode[ctypes.get_errno()]
    if number in (56, 435):
        os.waitpid(result, 0)
    return "allowed"

def open_socket(*args):
    try:
        socket.socket(*args).close()
        return "allowed"
    except OSError as error:
        return errno.errorcode[error.errno]

CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
clone_args = (ctypes.c_uint64 * 11)(CLONE_NEWUSER, 0, 0, 0, SIGCHLD)
uring_params = ctypes.create_string_buffer(120)
bpf_map = (ctypes.c_uint32 * 18)(2, 4, 4, 1)
perf_attr = (ctypes.c_uint32 * 32)(1, 128)
uts = os.open("/proc/self/ns/uts", os.O_RDONLY)
print(json.dumps({
    "unshare user namespace": syscall(272, CLONE_NEWUSER),
    "unshare user and network namespaces": syscall(272, CLONE_NEWUSER | CLONE_NEWNET),
    "clone into a new user namespace": syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    "clone3": syscall(435, clone_args, 88),
    "setns": syscall(308, uts, 0),
    "AF_PACKET socket": open_socket(socket.AF_PACKET, socket.SOCK_RAW),
    "raw IP socket": open_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "netlink NETFILTER socket": open_socket(socket.AF_NETLINK, socket.SOCK_RAW, 12),
    "add_key": syscall(248, b"user", b"berth-test", b"x", 1, -2),
    "keyctl": syscall(250, 0, -2, 0),
    "io_uring_setup": syscall(425, 1, uring_params),
    "bpf": syscall(321, 0, bpf_map, 72),
    "mount": syscall(165, b"none", b"/tmp", b"tmpfs", 0, 0),
    "userfaultfd": syscall(323, 1),
    "perf_event_open": syscall(298, perf_attr, 0, -1, -1, 0),
    "personality without ASLR": syscall(135, 0x0040000),
}))
`;

  /**
   * The way around a filter that some process of the sandbox lacks: ptrace the sandbox's init
   * (same user, so allowed), make it run unshare(CLONE_NEWUSER) on the system call it is waiting
   * in, then put it back. Prints the call's result.
   */
  const borrowInit = String.raw`
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
ATTACH, DETACH, GETREGS, SETREGS, SINGLESTEP = 16, 17, 12, 13, 9
RAX, RDI, ORIG_RAX, RIP = 10, 14, 15, 16

def ptrace(request, data=None):
    if libc.ptrace(request, 1, None, data) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

Registers = ctypes.c_ulonglong * 27
ptrace(ATTACH)
os.waitpid(1, 0)
saved = Registers()
ptrace(GETREGS, ctypes.addressof(saved))
injected = Registers(*saved)
injected[RAX], injected[RDI], injected[ORIG_RAX] = 272, 0x10000000, 2**64 - 1
injected[RIP] = saved[RIP] - 2  # back onto the syscall instruction it waits in
ptrace(SETREGS, ctypes.addressof(injected))
ptrace(SINGLESTEP)
os.waitpid(1, 0)
result = Registers()
ptrace(GETREGS, ctypes.addressof(result))
ptrace(SETREGS, ctypes.addressof(saved))
ptrace(DETACH)
print(ctypes.c_longlong(result[RAX]).value)
`;

  /** What each attempt must meet: the error a host without that feature or privilege gives. */
  const refusals = {
    "unshare user namespace": "EPERM",
    "unshare user and network namespaces": "EPERM",
    "clone into a new user namespace": "EPERM",
    clone3: "ENOSYS",
    setns: "EPERM",
    "AF_PACKET socket": "EAFNOSUPPORT",
    "raw IP socket": "EPERM",
    "netlink NETFILTER socket": "EPROTONOSUPPORT",
    add_key: "EPERM",
    keyctl: "EPERM",
    io_uring_setup: "ENOSYS",
    bpf: "EPERM",
    mount: "EPERM",
    userfaultfd: "EPERM",
    perf_event_open: "EPERM",
    "personality without ASLR": "EPERM",
  };

  /** The same attempts through the command-line tools a script would use. */
  const toolAttempts = [
    'unshare -U true 2>&1; echo "unshare -U: $?"',
    'unshare -n true 2>&1; echo "unshare -n: $?"',
    `python3 - <<'PY'\n${attempts}\nPY`,
  ].join("\n");

  function checkRefused(output: string): void {
    assert.match(output, /unshare -U: [1-9]/, output);
    assert.match(output, /unshare -n: [1-9]/, output);
    assert.match(output, /unshare failed: Operation not permitted/);
    const results = JSON.parse(output.trim().split("\n").at(-1) ?? "{}") as Record<string, string>;
    assert.deepEqual(results, refusals);
  }

  async function askShellAgent(harness: TestBerth, arn: string, session: string, command: string) {
    const response = await harness.data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: session,
        payload: Buffer.from(JSON.stringify({ command })),
      }),
    );
    return JSON.parse((await response.response?.transformToString()) ?? "{}") as {
      code: number | null;
      signal: string | null;
      stdout: string;
      stderr: string;
    };
  }

  describe("the seccomp filter (on by default)", () => {
    let harness: TestBerth;
    let arn: string;

    before(async () => {
      harness = await startTestBerth(["--sandbox-outbound", "none"]);
      installAgent(harness.dataDir, shellAgent, "shell");
      arn = (await createRuntime(harness, "shell")).arn;
    });

    after(async () => {
      await harness.close();
      removeDir(harness.dataDir);
    });

    it("refuses new namespaces, mounts, keyrings, io_uring, eBPF and raw sockets to commands", async () => {
      const finished = await runCommand(harness.data, arn, newSessionId(), toolAttempts);
      checkRefused(finished.stdout);
    });

    it("refuses the same to programs the agent starts", async () => {
      const answer = await askShellAgent(harness, arn, newSessionId(), toolAttempts);
      checkRefused(answer.stdout);
    });

    it("covers every process of a session, the sandbox's init included", async () => {
      const session = newSessionId();
      await askShellAgent(harness, arn, session, "true");
      const finished = await runCommand(
        harness.data,
        arn,
        session,
        "cd /proc && for pid in [0-9]*; do grep -s '^Seccomp:' $pid/status | sed \"s|^|$pid |\"; done",
      );
      const lines = finished.stdout.trim().split("\n");
      assert.ok(
        lines.some((line) => line.startsWith("1 ")),
        finished.stdout,
      );
      for (const line of lines) assert.match(line, /^\d+ Seccomp:\s+2$/, finished.stdout);
    });

    it("leaves no unfiltered process to borrow: the sandbox's init refuses too", async () => {
      const session = newSessionId();
      await askShellAgent(harness, arn, session, "true");
      const command = `python3 - <<'PY'\n${borrowInit}\nPY`;
      const finished = await runCommand(harness.data, arn, session, command);
      assert.equal(
        finished.stdout,
        "-1\n",
        `unshare through pid 1 fails with EPERM: ${finished.stderr}`,
      );
    });

    it("ends a process that makes another architecture's system calls (x32)", async () => {
      const finished = await runCommand(
        harness.data,
        arn,
        newSessionId(),
        "python3 -c 'import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39)'; echo \"status $?\"",
      );
      assert.equal(finished.stdout, "status 159\n", "128 + SIGSYS");
    });

    it("still lets agents' everyday tools work: npm, git, Python venvs, interface lists", async () => {
      const finished = await runCommand(
        harness.data,
        arn,
        newSessionId(),
        [
          "set -e",
          "mkdir -p /tmp/lib /tmp/app && cd /tmp/lib",
          `echo '{"name":"berth-local-lib","version":"1.0.0","main":"index.js"}' > package.json`,
          "echo 'module.exports = 42;' > index.js",
          "npm pack --silent > /dev/null",
          `cd /tmp/app && echo '{"name":"app","version":"1.0.0"}' > package.json`,
          "npm install --offline --no-audit --no-fund --silent /tmp/lib/berth-local-lib-1.0.0.tgz",
          `node -e 'console.log("npm:", require("berth-local-lib"))'`,
          "git init -q /tmp/repo && cd /tmp/repo && echo hello > file && git add file",
          "git -c user.name=agent -c user.email=agent@example.com commit -qm first",
          `echo "git: $(git log --oneline | wc -l)"`,
          "python3 -m venv /tmp/venv",
          `/tmp/venv/bin/python -c 'import sys; print("venv:", sys.prefix)'`,
          `python3 -c 'import socket; print("interfaces:", [n for _, n in socket.if_nameindex()])'`,
        ].join("\n"),
      );
      assert.equal(finished.exitCode, 0, finished.stderr);
      assert.equal(
        finished.stdout,
        "npm: 42\ngit: 1\nvenv: /tmp/venv\ninterfaces: ['lo']\n",
        finished.stderr,
      );
    });
  });

  describe("--bubblewrap-seccomp false", () => {
    let harness: TestBerth;
    let arn: string;

    before(async () => {
      harness = await startTestBerth([
        "--sandbox-outbound",
        "none",
        "--bubblewrap-seccomp",
        "false",
      ]);
      installAgent(harness.dataDir, shellAgent, "shell");
      arn = (await createRuntime(harness, "shell")).arn;
    });

    after(async () => {
      await harness.close();
      removeDir(harness.dataDir);
    });

    it("leaves the filter out for agents and commands alike", async () => {
      const session = newSessionId();
      const command = "unshare -U true && echo created";
      assert.equal((await askShellAgent(harness, arn, session, command)).stdout, "created\n");
      assert.equal((await runCommand(harness.data, arn, session, command)).stdout, "created\n");
    });
  });

  describe("slirp4netns", () => {
    let harness: TestBerth;

    before(async () => {
      harness = await startTestBerth();
      installAgent(harness.dataDir, shellAgent, "shell");
    });

    after(async () => {
      await harness.close();
      removeDir(harness.dataDir);
    });

    it("runs under its own seccomp filter", async () => {
      const { arn } = await createRuntime(harness, "shell", {
        networkConfiguration: { networkMode: "PUBLIC" },
      });
      await askShellAgent(harness, arn, newSessionId(), "true");
      const slirp = sandboxPids(harness.settings.bubblewrapCgroupParent).filter(
        (pid) => readProcFile(pid, "comm").trim() === "slirp4netns",
      );
      assert.equal(slirp.length, 1, "the session's network runs");
      assert.match(readProcFile(slirp[0] ?? 0, "status"), /^Seccomp:\s+2$/m);
    });
  });

  function readProcFile(pid: number, name: string): string {
    try {
      return readFileSync(join("/proc", String(pid), name), "utf8");
    } catch {
      return ""; // gone meanwhile
    }
  }
});
