import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { connect } from "node:net";

/**
 * A test host in a network namespace of the test's own, joined to this machine by a veth pair:
 * it answers HTTP on addresses in the benchmarking range 198.18.0.0/15 (one on this machine's
 * own subnet, a neighbour; one routed through it, as a server further away would be), a private
 * range and the link-local range, so tests see what a sandbox can reach without sending traffic
 * anywhere else.
 */
export class TestHost {
  readonly namespace: string;
  /** Routed through the neighbour: a server elsewhere on the internet. */
  readonly publicAddress: string;
  /** On the subnet of this machine's end of the link. */
  readonly neighborAddress: string;
  readonly privateAddress: string;
  readonly linkLocalAddress: string;
  /** This machine's own end of the link: a host address, which sandboxes must not reach. */
  readonly hostSideAddress: string;
  readonly port = 8099;
  private readonly hostLink: string;
  private server: ChildProcess | undefined;

  constructor(slot: number) {
    const octet = 100 + (slot % 100);
    this.namespace = `berth-th-${slot}`;
    this.hostLink = `bth${slot % 100000}`;
    this.neighborAddress = `198.18.${octet}.2`;
    this.publicAddress = `198.19.${octet}.2`;
    this.hostSideAddress = `198.18.${octet}.1`;
    this.privateAddress = `10.213.${octet}.2`;
    this.linkLocalAddress = `169.254.${octet}.2`;
  }

  async start(): Promise<void> {
    const ip = (...args: string[]) => execFileSync("ip", args, { stdio: "pipe" });
    const peer = `${this.hostLink}n`;
    ip("netns", "add", this.namespace);
    ip("link", "add", this.hostLink, "type", "veth", "peer", "name", peer);
    ip("link", "set", peer, "netns", this.namespace);
    for (const [host, inside] of [
      [this.hostSideAddress, this.neighborAddress],
      [this.privateAddress.replace(/\.2$/, ".1"), this.privateAddress],
      [this.linkLocalAddress.replace(/\.2$/, ".1"), this.linkLocalAddress],
    ] as const) {
      ip("addr", "add", `${host}/30`, "dev", this.hostLink);
      ip("-n", this.namespace, "addr", "add", `${inside}/30`, "dev", peer);
    }
    ip("-n", this.namespace, "addr", "add", `${this.publicAddress}/32`, "dev", "lo");
    ip("link", "set", this.hostLink, "up");
    ip("-n", this.namespace, "link", "set", peer, "up");
    ip("route", "add", `${this.publicAddress}/32`, "via", this.neighborAddress);
    ip("-n", this.namespace, "link", "set", "lo", "up");
    const script = `require("http").createServer((q, s) => s.end("hello from the test host")).listen(${this.port}, "0.0.0.0", () => console.log("up"))`;
    this.server = spawn("ip", ["netns", "exec", this.namespace, process.execPath, "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await once(this.server.stdout!, "data");
  }

  /** Whether this machine itself (not a sandbox) reaches an address of the test host. */
  reachableFromHost(address: string): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = connect({ host: address, port: this.port, timeout: 2000 });
      socket.on("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => {
        resolve(false);
      });
      socket.on("timeout", () => {
        socket.destroy();
        resolve(false);
      });
    });
  }

  async stop(): Promise<void> {
    if (this.server !== undefined && this.server.exitCode === null) {
      this.server.kill("SIGKILL");
      await once(this.server, "exit");
    }
    execFileSync("ip", ["netns", "del", this.namespace], { stdio: "ignore" });
    try {
      execFileSync("ip", ["link", "del", this.hostLink], { stdio: "ignore" });
    } catch {
      // removed with the namespace
    }
  }
}
