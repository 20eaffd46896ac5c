import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { networkInterfaces } from "node:os";
import { promisify } from "node:util";

const run = promisify(execFile);

/** Never reachable from a sandbox unless the operator allows a range. */
export const blockedRanges = [
  "0.0.0.0/8",
  "10.0.0.0/8",
  "100.64.0.0/10",
  "127.0.0.0/8",
  "169.254.0.0/16",
  "172.16.0.0/12",
  "192.168.0.0/16",
  "224.0.0.0/4",
  "240.0.0.0/4",
];

/**
 * Outbound rules for sandboxes. A sandbox's only process in the host's network namespace is
 * its slirp4netns, running as the sandbox's own uid, so one chain matched on the sandbox uid
 * range decides what every sandbox can reach: not the host itself (Berth's port included), not
 * loopback, link-local (cloud metadata) or private ranges, not the host's own subnets (its
 * neighbours, whatever their range: a cloud host's subnet may well be public); DNS only to the
 * host's resolvers.
 */
export class HostFirewall {
  private readonly chain: string;
  private readonly uidRange: string;
  private readonly allowedNetworks: string[];

  constructor(options: {
    name: string;
    uidBase: number;
    uidCount: number;
    allowedNetworks: string[];
  }) {
    // iptables chain names are at most 28 characters.
    this.chain = `BERTH-${options.name}`.slice(0, 28);
    this.uidRange = `${options.uidBase}-${options.uidBase + options.uidCount - 1}`;
    this.allowedNetworks = options.allowedNetworks;
  }

  async install(): Promise<void> {
    await this.remove();
    const rules: string[][] = [];
    for (const resolver of hostResolvers()) {
      for (const protocol of ["udp", "tcp"])
        rules.push(["-d", resolver, "-p", protocol, "--dport", "53", "-j", "RETURN"]);
    }
    for (const network of this.allowedNetworks) rules.push(["-d", network, "-j", "RETURN"]);
    // Refuse TCP with a reset so a blocked connect fails at once instead of timing out.
    rules.push([
      "-m",
      "addrtype",
      "--dst-type",
      "LOCAL",
      "-p",
      "tcp",
      "-j",
      "REJECT",
      "--reject-with",
      "tcp-reset",
    ]);
    rules.push(["-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT"]);
    for (const range of [...blockedRanges, ...hostSubnets()]) {
      rules.push(["-d", range, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"]);
      rules.push(["-d", range, "-j", "REJECT"]);
    }
    await iptables("iptables", ["-N", this.chain]);
    for (const rule of rules) await iptables("iptables", ["-A", this.chain, ...rule]);
    await iptables("iptables", ["-I", "OUTPUT", ...this.jump()]);
    await iptables("ip6tables", ["-I", "OUTPUT", ...this.ipv6Refusal()]).catch(() => undefined);
  }

  async remove(): Promise<void> {
    const quietly = (command: string, args: string[]) =>
      iptables(command, args).catch(() => undefined);
    while ((await quietly("iptables", ["-D", "OUTPUT", ...this.jump()])) !== undefined);
    while ((await quietly("ip6tables", ["-D", "OUTPUT", ...this.ipv6Refusal()])) !== undefined);
    await quietly("iptables", ["-F", this.chain]);
    await quietly("iptables", ["-X", this.chain]);
  }

  /** Sandboxes get no IPv6; refuse it outright in case the host has it. */
  private ipv6Refusal(): string[] {
    return ["-m", "owner", "--uid-owner", this.uidRange, "-j", "REJECT"];
  }

  private jump(): string[] {
    return ["-m", "owner", "--uid-owner", this.uidRange, "-j", this.chain];
  }
}

async function iptables(command: string, args: string[]): Promise<string> {
  const { stdout } = await run(command, ["-w", "5", ...args]);
  return stdout;
}

/**
 * The IPv4 subnets this machine's interfaces are on, as they are when Berth starts: the
 * machines next to it (other hosts of a cloud subnet, its gateway) are no sandbox's business.
 */
export function hostSubnets(): string[] {
  return Object.values(networkInterfaces())
    .flat()
    .filter((address) => address !== undefined && address.family === "IPv4" && !address.internal)
    .map((address) => address?.cidr ?? "")
    .filter((cidr) => cidr !== "");
}

/** The resolvers slirp4netns forwards the sandbox's DNS (10.0.2.3) to. */
function hostResolvers(): string[] {
  try {
    return [
      ...readFileSync("/etc/resolv.conf", "utf8").matchAll(/^nameserver\s+([0-9.]+)\s*$/gm),
    ].map((match) => `${match[1] ?? ""}/32`);
  } catch {
    return [];
  }
}
