import { execFile, spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { accessSync, constants, existsSync, readFileSync } from "node:fs";
import { delimiter, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import { isolationArgs } from "./berth.ts";
import {
  serveCommand,
  testPartsEnvironment,
  untilListening,
  type BerthProcess,
} from "./berth-process.ts";

const run = promisify(execFile);

/** One "host" of a test cluster: a network namespace with an address of its own. */
export interface TestNode {
  namespace: string;
  address: string;
}

/**
 * Nodes on one machine that see each other as separate hosts: each in a network namespace of its
 * own, all on one bridge whose address is the host as the nodes see it.
 */
export interface TestNetwork {
  /** The bridge's address: what listens here (PostgreSQL, the object store) every node reaches. */
  hostAddress: string;
  /** The bridge's interface name on the host. */
  bridge: string;
  nodes: TestNode[];
  /**
   * Cuts node `index` off from the host and the other nodes, both ways (its packets are dropped,
   * as a broken network would). Its processes keep running and still reach themselves.
   */
  partition(index: number): Promise<void>;
  heal(index: number): Promise<void>;
  /**
   * Ends whatever still runs in the namespaces, then deletes them, the veths, the bridge and the
   * firewall rule. Idempotent, and safe after a creation that failed half-way.
   */
  destroy(): Promise<void>;
}

/** Why test networks cannot be made here, if they cannot. */
export function netnsMissing(): string | undefined {
  if (process.getuid?.() !== 0) return "network namespaces and iptables need root";
  const missing = ["ip", "iptables", "nsenter"].filter((program) => !onPath(program));
  if (missing.length > 0)
    return `not installed: ${missing.join(", ")} (Debian: iproute2, iptables, util-linux)`;
  return undefined;
}

/** A bridge on a free private /24 (the host is .1) and `nodeCount` namespaces on it (.2, .3, …). */
export async function createTestNetwork(nodeCount: number): Promise<TestNetwork> {
  if (!Number.isInteger(nodeCount) || nodeCount < 1 || nodeCount > 100)
    throw new Error(`a test network has 1 to 100 nodes, not ${nodeCount}`);
  // Names unique per run, so test files running at the same time never meet; a bridge or veth
  // name is at most 15 characters.
  const id = randomBytes(4).toString("hex");
  const bridge = `bt${id}`;
  const hostVeth = (index: number) => `${bridge}v${index}`;
  const subnet = await unusedSubnet();
  const hostAddress = `${subnet}.1`;
  const nodes = Array.from({ length: nodeCount }, (_, index) => ({
    namespace: `berth-test-${id}-${index}`,
    address: `${subnet}.${index + 2}`,
  }));
  let forwardRule: string[] | undefined;

  const destroy = async (): Promise<void> => {
    for (const node of nodes) await endProcessesIn(node.namespace);
    // A veth goes with its peer; deleting it here frees the namespace's end even if something
    // still holds the namespace open.
    for (const index of nodes.keys()) await quietly("ip", ["link", "del", hostVeth(index)]);
    for (const node of nodes) await quietly("ip", ["netns", "del", node.namespace]);
    await quietly("ip", ["link", "del", bridge]);
    if (forwardRule !== undefined)
      await quietly("iptables", ["-w", "-D", "FORWARD", ...forwardRule]);
  };

  try {
    await addBridge(bridge, hostAddress);
    for (const [index, node] of nodes.entries())
      await addNode(node, hostVeth(index), bridge, hostAddress);
    if (bridgedFramesPassIptables()) {
      // br_netfilter hands bridged frames to the FORWARD chain, whose policy may be DROP (as
      // Docker sets it): let this bridge's own traffic through.
      forwardRule = ["-i", bridge, "-o", bridge, "-j", "ACCEPT"];
      await run("iptables", ["-w", "-I", "FORWARD", "1", ...forwardRule]);
    }
  } catch (error) {
    await destroy();
    throw error;
  }

  const nodeAt = (index: number): TestNode => {
    const node = nodes[index];
    if (node === undefined) throw new Error(`no node ${index} in a network of ${nodes.length}`);
    return node;
  };
  return {
    hostAddress,
    bridge,
    nodes,
    partition: async (index) => {
      const { namespace } = nodeAt(index);
      for (const { chain, rule } of partitionRules) {
        if (!(await hasRule(namespace, chain, rule)))
          await iptablesIn(namespace, ["-I", chain, "1", ...rule]);
      }
    },
    heal: async (index) => {
      const { namespace } = nodeAt(index);
      for (const { chain, rule } of partitionRules) {
        while (await hasRule(namespace, chain, rule))
          await iptablesIn(namespace, ["-D", chain, ...rule]);
      }
    },
    destroy,
  };
}

/**
 * The command line running `argv` in `namespace`'s network and nothing else. Not `ip netns
 * exec`: that also mounts a sysfs of the namespace over /sys, hiding /sys/fs/cgroup, which
 * Berth's sandboxes need. nsenter execs `argv` in place, so the pid is the program's own.
 */
export function namespaceCommand(namespace: string, argv: readonly string[]): string[] {
  return ["nsenter", `--net=/run/netns/${namespace}`, "--", ...argv];
}

/**
 * Runs `argv` in `namespace` as spawnBerth runs `berth serve` (same environment, stdout a pipe of
 * JSON lines) and resolves once it logs "berth listening". Killing the child kills the program:
 * there is no wrapper process between them.
 */
export async function spawnInNamespace(
  namespace: string,
  argv: readonly string[],
  options: { env?: NodeJS.ProcessEnv } = {},
): Promise<BerthProcess> {
  const [program = "", ...programArgs] = namespaceCommand(namespace, argv);
  const child = spawn(program, programArgs, {
    env: {
      PATH: process.env["PATH"],
      HOME: process.env["HOME"],
      ...testPartsEnvironment,
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  return untilListening(child);
}

/** `berth serve` on `node`'s address (port 8787 unless told), as on a host of its own. */
export function serveInNamespace(
  node: TestNode,
  args: string[],
  options: { port?: number; isolation?: string[]; env?: NodeJS.ProcessEnv } = {},
): Promise<BerthProcess> {
  const command = serveCommand(
    ["--host", node.address, ...args],
    options.isolation ?? isolationArgs(),
    options.port ?? 8787,
  );
  return spawnInNamespace(node.namespace, command, options);
}

/** A partition: everything in and out dropped but loopback (the node's own address included). */
const partitionRules = [
  { chain: "INPUT", match: ["!", "-i", "lo"] },
  { chain: "OUTPUT", match: ["!", "-o", "lo"] },
].map(({ chain, match }) => ({
  chain,
  rule: [...match, "-m", "comment", "--comment", "berth-test-partition", "-j", "DROP"],
}));

async function addBridge(bridge: string, hostAddress: string): Promise<void> {
  await run("ip", ["link", "add", bridge, "type", "bridge", "forward_delay", "0"]);
  await run("ip", ["addr", "add", `${hostAddress}/24`, "dev", bridge]);
  await run("ip", ["link", "set", bridge, "up"]);
}

async function addNode(
  node: TestNode,
  hostVeth: string,
  bridge: string,
  hostAddress: string,
): Promise<void> {
  const inNode = (args: string[]) => run("ip", ["-n", node.namespace, ...args]);
  await run("ip", ["netns", "add", node.namespace]);
  // The node's end is created inside its namespace, named as a host's first interface.
  await run("ip", [
    "link",
    "add",
    hostVeth,
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    node.namespace,
  ]);
  await run("ip", ["link", "set", hostVeth, "master", bridge, "up"]);
  await inNode(["addr", "add", `${node.address}/24`, "dev", "eth0"]);
  await inNode(["link", "set", "lo", "up"]);
  await inNode(["link", "set", "eth0", "up"]);
  await inNode(["route", "add", "default", "via", hostAddress]);
}

/** A 10.200-250.x prefix no address of the host overlaps. */
async function unusedSubnet(): Promise<string> {
  const { stdout } = await run("ip", ["-j", "-4", "addr", "show"]);
  const links = JSON.parse(stdout) as { addr_info?: { local: string; prefixlen: number }[] }[];
  const taken = links.flatMap((link) => link.addr_info ?? []);
  for (let attempt = 0; attempt < 1000; attempt += 1) {
    const prefix = `10.${randomInt(200, 251)}.${randomInt(0, 256)}`;
    const network = { local: `${prefix}.0`, prefixlen: 24 };
    if (!taken.some((address) => overlap(address, network))) return prefix;
  }
  throw new Error("every 10.200-250.x.0/24 is taken on this host");
}

function overlap(
  first: { local: string; prefixlen: number },
  second: { local: string; prefixlen: number },
): boolean {
  const bits = Math.min(first.prefixlen, second.prefixlen);
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return ((ipv4Number(first.local) ^ ipv4Number(second.local)) & mask) >>> 0 === 0;
}

function ipv4Number(address: string): number {
  return address.split(".").reduce((number, octet) => number * 256 + Number(octet), 0);
}

/** Whether the host filters bridged frames with iptables (br_netfilter loaded and enabled). */
function bridgedFramesPassIptables(): boolean {
  try {
    return readFileSync("/proc/sys/net/bridge/bridge-nf-call-iptables", "utf8").trim() === "1";
  } catch {
    return false;
  }
}

async function iptablesIn(namespace: string, args: string[]): Promise<void> {
  const [program = "", ...programArgs] = namespaceCommand(namespace, ["iptables", "-w", ...args]);
  await run(program, programArgs);
}

async function hasRule(namespace: string, chain: string, rule: string[]): Promise<boolean> {
  return iptablesIn(namespace, ["-C", chain, ...rule]).then(
    () => true,
    () => false,
  );
}

/**
 * Kills (SIGKILL) whatever still runs in `namespace` (a test's Berth and its helpers, if the test
 * did not stop them) and waits up to 5 s for it to be gone: a process holds its namespace alive.
 */
async function endProcessesIn(namespace: string): Promise<void> {
  if (!existsSync(`/run/netns/${namespace}`)) return;
  const pids = async (): Promise<number[]> => {
    const { stdout } = await run("ip", ["netns", "pids", namespace]).catch(() => ({ stdout: "" }));
    return stdout.split("\n").filter(Boolean).map(Number);
  };
  for (const pid of await pids()) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
  for (let waited = 0; (await pids()).length > 0 && waited < 5000; waited += 50) await delay(50);
}

async function quietly(program: string, args: string[]): Promise<void> {
  await run(program, args).catch(() => undefined);
}

function onPath(program: string): boolean {
  return (process.env["PATH"] ?? "").split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, program), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}
