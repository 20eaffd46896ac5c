import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readdirSync, readlinkSync, statSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { killAll, type BerthProcess } from "./support/berth-process.ts";
import { makeDataDir, removeDir } from "./support/berth.ts";
import { cephMissing, startCephS3, type CephS3 } from "./support/ceph-s3.ts";
import {
  createTestNetwork,
  namespaceCommand,
  netnsMissing,
  serveInNamespace,
  spawnInNamespace,
  type TestNetwork,
} from "./support/netns.ts";

const runFile = promisify(execFile);

/** A TCP server answering every connection with `greeting`, logging as `berth serve` does. */
const greeterScript = `
const [host, port, greeting] = process.argv.slice(1);
require("node:net")
  .createServer((socket) => socket.end(greeting))
  .listen(Number(port), host, () => {
    console.log(JSON.stringify({ msg: "berth listening", url: "tcp://" + host + ":" + port }));
  });
`;

/** Prints what a TCP server at host:port says; exits 1 if it cannot connect within 1 s. */
const greetingScript = `
const [host, port] = process.argv.slice(1);
const socket = require("node:net").connect({ host, port: Number(port), timeout: 1000 });
let text = "";
socket.setEncoding("utf8").on("data", (chunk) => (text += chunk));
socket.on("end", () => process.stdout.write(text));
socket.on("timeout", () => { console.error("timed out"); process.exit(1); });
socket.on("error", (error) => { console.error(error.message); process.exit(1); });
`;

/** Runs `argv` in `namespace`, resolving with its stdout (rejects if it fails). */
async function runIn(namespace: string, argv: string[]): Promise<string> {
  const [program = "", ...args] = namespaceCommand(namespace, argv);
  return (await runFile(program, args, { timeout: 10_000 })).stdout;
}

/** What the TCP server at host:port says to a client in `namespace`; rejects if unreachable. */
function greetingIn(namespace: string, host: string, port: number): Promise<string> {
  return runIn(namespace, [process.execPath, "-e", greetingScript, host, String(port)]);
}

/** The greeting a client in `namespace` gets, or "unreachable: why". */
function greetingOrNot(namespace: string, host: string, port: number): Promise<string> {
  return greetingIn(namespace, host, port).catch(unreachable);
}

/** What a failed client run said, for assertions that it failed (and messages saying how). */
function unreachable(error: unknown): string {
  const stderr = (error as { stderr?: unknown }).stderr;
  return `unreachable: ${typeof stderr === "string" && stderr !== "" ? stderr.trim() : String(error)}`;
}

function startGreeter(namespace: string, host: string, port: number, greeting: string) {
  return spawnInNamespace(namespace, [
    process.execPath,
    "-e",
    greeterScript,
    host,
    String(port),
    greeting,
  ]);
}

/** `net:[inode]`, as /proc/PID/ns/net reads for a process in `namespace`. */
function namespaceLink(namespace: string): string {
  return `net:[${statSync(`/run/netns/${namespace}`).ino}]`;
}

async function pidsIn(namespace: string): Promise<number[]> {
  const { stdout } = await runFile("ip", ["netns", "pids", namespace]);
  return stdout.split("\n").filter(Boolean).map(Number);
}

describe(
  "test networks: nodes in network namespaces as separate hosts (as root)",
  {
    skip: netnsMissing() ?? cephMissing(),
  },
  () => {
    const bucket = "netns-probe";
    const greeterPort = 8787;
    const processes: BerthProcess[] = [];
    const dataDirs: string[] = [];
    let network: TestNetwork | undefined;
    let ceph: CephS3 | undefined;
    let hostServer: Server | undefined;
    let hostPort = 0;

    const net = (): TestNetwork => {
      if (network === undefined) throw new Error("the network is made in before()");
      return network;
    };
    const node = (index: number) => {
      const found = net().nodes[index];
      if (found === undefined) throw new Error(`no node ${index}`);
      return found;
    };
    /** A signed S3 request (list the probe bucket) from `namespace` to the gateway. */
    const listBucketIn = async (namespace: string): Promise<string> => {
      if (ceph === undefined) throw new Error("Ceph starts in before()");
      const { endpoint, accessKeyId, secretAccessKey } = ceph;
      return runIn(namespace, [
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "2",
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        `${accessKeyId}:${secretAccessKey}`,
        // S3 wants the payload's hash in a header, which this curl does not add by itself.
        "--header",
        "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        `${endpoint}/${bucket}`,
      ]).catch(unreachable);
    };

    before(async () => {
      network = await createTestNetwork(3);
      ceph = await startCephS3({ host: network.hostAddress });
      await ceph.bucket(bucket);
      // Nodes 0 and 1 listen on the same port, as two hosts would; node 2 is for Berth.
      for (const [index, { namespace, address }] of network.nodes.slice(0, 2).entries())
        processes.push(await startGreeter(namespace, address, greeterPort, `node ${index}`));
      const server = (hostServer = createServer((socket) => socket.end("host")));
      await new Promise<void>((resolve) => server.listen(0, network?.hostAddress, resolve));
      hostPort = (server.address() as { port: number }).port;
    });

    after(async () => {
      await killAll(processes);
      hostServer?.close();
      await ceph?.stop();
      await network?.destroy();
      for (const dir of dataDirs) removeDir(dir);
    });

    it("gives each node an address of its own that the host and the other nodes reach", async () => {
      const [first, second] = [node(0), node(1)];
      assert.equal(await greetingIn(first.namespace, second.address, greeterPort), "node 1");
      assert.equal(await greetingIn(second.namespace, first.address, greeterPort), "node 0");
      assert.equal(await greetingIn(first.namespace, net().hostAddress, hostPort), "host");
      assert.equal(await greetingFromHost(second.address, greeterPort), "node 1");
    });

    it("serves the object store on the host address to every node", async () => {
      assert.ok(ceph?.endpoint.startsWith(`http://${net().hostAddress}:`), ceph?.endpoint);
      for (const { namespace } of net().nodes)
        assert.match(await listBucketIn(namespace), /<ListBucketResult.*<Name>netns-probe</s);
    });

    it("cuts a partitioned node off both ways until healed, its own processes running", async () => {
      const [cut, other] = [node(0), node(1)];
      const hostAddress = net().hostAddress;
      await net().partition(0);
      await net().partition(0); // twice: still one set of rules, so one heal undoes it
      try {
        // Each attempt gives up after 1 s (2 s for curl): dropped packets never get an answer.
        const attempts = await Promise.all([
          greetingOrNot(cut.namespace, other.address, greeterPort),
          greetingOrNot(cut.namespace, hostAddress, hostPort),
          listBucketIn(cut.namespace),
          greetingOrNot(other.namespace, cut.address, greeterPort),
        ]);
        for (const outcome of attempts) assert.match(outcome, /^unreachable/);
        // The node itself carries on: its server runs and answers on its own address.
        assert.equal(processes[0]?.child.exitCode, null);
        assert.equal(await greetingIn(cut.namespace, cut.address, greeterPort), "node 0");
        // The rest of the network does not notice.
        assert.equal(await greetingIn(other.namespace, hostAddress, hostPort), "host");
      } finally {
        await net().heal(0);
      }
      assert.equal(await greetingIn(cut.namespace, other.address, greeterPort), "node 1");
      assert.equal(await greetingIn(cut.namespace, hostAddress, hostPort), "host");
      assert.match(await listBucketIn(cut.namespace), /<ListBucketResult/);
      assert.equal(await greetingIn(other.namespace, cut.address, greeterPort), "node 0");
    });

    it("runs berth serve on a node's address, and kill -9 of the child's pid kills Berth", async () => {
      const [client, server] = [node(0), node(2)];
      const dataDir = makeDataDir();
      dataDirs.push(dataDir);
      const berth = await serveInNamespace(server, ["--data-dir", dataDir]);
      processes.push(berth);
      assert.equal(berth.url, `http://${server.address}:8787`);
      const status = await runIn(client.namespace, [
        "curl",
        "--silent",
        "--max-time",
        "5",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        `${berth.url}/runtimes`,
      ]);
      assert.equal(status, "403", "Berth answers an unsigned request from another node");
      // No wrapper in between: the child's pid is Berth itself, inside the namespace.
      const pid = berth.child.pid ?? 0;
      assert.equal(readlinkSync(`/proc/${pid}/ns/net`), namespaceLink(server.namespace));
      assert.ok((await pidsIn(server.namespace)).includes(pid));
      berth.child.kill("SIGKILL");
      assert.deepEqual(await berth.exit, { code: null, signal: "SIGKILL" });
      assert.ok(!(await pidsIn(server.namespace)).includes(pid));
      assert.match(await greetingOrNot(client.namespace, server.address, 8787), /^unreachable/);
    });

    it("lets processes in a namespace see the host's cgroups, which sandboxes need", async () => {
      const inside = (await runIn(node(0).namespace, ["ls", "-1", "/sys/fs/cgroup"])).split("\n");
      assert.deepEqual(inside.filter(Boolean).sort(), readdirSync("/sys/fs/cgroup").sort());
    });

    it("destroy() leaves no namespace, link or firewall rule, ending what still runs", async () => {
      const doomed = await createTestNetwork(2);
      let greeter: BerthProcess | undefined;
      try {
        await doomed.partition(1);
        const { namespace, address } = doomed.nodes[0] ?? { namespace: "", address: "" };
        greeter = await startGreeter(namespace, address, greeterPort, "doomed");
        await doomed.destroy();
        assert.deepEqual(await greeter.exit, { code: null, signal: "SIGKILL" });
        await doomed.destroy(); // idempotent
        const namespaces = (await runFile("ip", ["netns", "list"])).stdout;
        for (const { namespace } of doomed.nodes) assert.ok(!namespaces.includes(namespace));
        assert.ok(!(await runFile("ip", ["-o", "link"])).stdout.includes(doomed.bridge));
        assert.ok(
          !(await runFile("ip", ["-o", "-4", "addr"])).stdout.includes(`${doomed.hostAddress}/`),
        );
        assert.ok(!(await runFile("iptables", ["-S"])).stdout.includes(doomed.bridge));
      } finally {
        if (greeter !== undefined) await killAll([greeter]);
        await doomed.destroy();
      }
    });
  },
);

/** What the TCP server at host:port says to a client on the host. */
function greetingFromHost(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = "";
    const socket = connect({ host, port, timeout: 1000 });
    socket.setEncoding("utf8").on("data", (chunk: string) => (text += chunk));
    socket.on("end", () => {
      resolve(text);
    });
    socket.on("timeout", () => {
      socket.destroy(new Error(`${host}:${port} timed out`));
    });
    socket.on("error", reject);
  });
}
