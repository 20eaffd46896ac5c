import { lookup as resolveName, type LookupAddress } from "node:dns";
import { BlockList, isIP, type LookupFunction } from "node:net";
import { networkInterfaces } from "node:os";

/**
 * Address ranges that are not the public internet, by what they are (IANA's special-purpose
 * registries). IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) match their IPv4 range.
 */
const specialRanges: [kind: string, network: string, prefix: number][] = [
  ["unspecified", "0.0.0.0", 8],
  ["private", "10.0.0.0", 8],
  ["shared (carrier NAT)", "100.64.0.0", 10],
  ["loopback", "127.0.0.0", 8],
  ["link-local", "169.254.0.0", 16],
  ["private", "172.16.0.0", 12],
  ["reserved", "192.0.0.0", 24],
  ["documentation", "192.0.2.0", 24],
  ["private", "192.168.0.0", 16],
  ["benchmarking", "198.18.0.0", 15],
  ["documentation", "198.51.100.0", 24],
  ["documentation", "203.0.113.0", 24],
  ["multicast", "224.0.0.0", 4],
  ["reserved", "240.0.0.0", 4],
  ["unspecified", "::", 128],
  ["loopback", "::1", 128],
  ["discard", "100::", 64],
  // IPv6 forms that carry an IPv4 address, which may be a private or loopback one.
  ["NAT64 (an IPv4 address inside)", "64:ff9b::", 96],
  ["NAT64 (an IPv4 address inside)", "64:ff9b:1::", 48],
  ["6to4 (an IPv4 address inside)", "2002::", 16],
  ["documentation", "2001:db8::", 32],
  ["private", "fc00::", 7],
  ["link-local", "fe80::", 10],
  ["site-local", "fec0::", 10],
  ["multicast", "ff00::", 8],
];

const rangesByKind = new Map<string, BlockList>();
for (const [kind, network, prefix] of specialRanges) {
  const list = rangesByKind.get(kind) ?? new BlockList();
  list.addSubnet(network, prefix, isIP(network) === 6 ? "ipv6" : "ipv4");
  rangesByKind.set(kind, list);
}

/** What kind of non-public address `address` is ("loopback", "private"...), or undefined. */
export function nonPublicKind(address: string): string | undefined {
  const family = isIP(address) === 6 ? "ipv6" : "ipv4";
  for (const [kind, list] of rangesByKind) if (list.check(address, family)) return kind;
  // Read at each check: interfaces come and go. A public address of this machine reaches
  // its own services as surely as loopback does.
  const own = Object.values(networkInterfaces()).flatMap((entries) => entries ?? []);
  if (own.some((entry) => entry.address === address.replace(/^::ffff:/i, "")))
    return "this machine's own";
  return undefined;
}

/**
 * Which addresses Berth may connect to for an image: public ones, and any address of the
 * registries the operator listed (setting registryPrivateHosts). It is enforced on the address
 * actually connected to: names are resolved by lookupFor, which refuses the connection when any
 * of its addresses is not allowed, and the address it hands the socket is the one it checked
 * (no second resolution to rebind).
 */
export class RegistryAddressPolicy {
  private readonly listed: Set<string>;

  /** `listed`: `host` or `host:port` entries, as registries are written in image references. */
  constructor(listed: string[]) {
    this.listed = new Set(listed.map((entry) => entry.toLowerCase()));
  }

  /**
   * Why `url` may not be reached at `address` ("resolves to … (loopback); …", to follow what
   * is refused), or undefined when it may.
   */
  refusal(url: URL, address: string): string | undefined {
    const kind = nonPublicKind(address);
    if (kind === undefined || this.isListed(url)) return undefined;
    return `resolves to ${address} (${kind}); Berth reaches such addresses only for registries listed in the setting registryPrivateHosts`;
  }

  /** A refusal for a URL whose host is an address (no lookup happens for those). */
  literalRefusal(url: URL): string | undefined {
    const address = url.hostname.replace(/^\[(.*)\]$/, "$1");
    return isIP(address) === 0 ? undefined : this.refusal(url, address);
  }

  /** A lookup for connections to `url` that fails with RefusedAddress where `refusal` says so. */
  lookupFor(url: URL): LookupFunction {
    return (hostname, options, callback) => {
      resolveName(hostname, { ...options, all: true }, (error, addresses: LookupAddress[]) => {
        if (error !== null) {
          callback(error, "");
          return;
        }
        const refused = addresses
          .map((entry) => this.refusal(url, entry.address))
          .find((reason) => reason !== undefined);
        if (refused !== undefined) {
          callback(new RefusedAddress(refused), "");
          return;
        }
        const [first] = addresses;
        if (options.all === true) callback(null, addresses);
        else if (first === undefined)
          callback(new RefusedAddress(`${hostname} has no address`), "");
        else callback(null, first.address, first.family);
      });
    };
  }

  private isListed(url: URL): boolean {
    const port = url.port || (url.protocol === "https:" ? "443" : "80");
    const host = url.hostname.toLowerCase();
    return this.listed.has(host) || this.listed.has(`${host}:${port}`);
  }
}

/** A connection the policy refused; its message says why and which setting allows it. */
export class RefusedAddress extends Error {
  readonly code = "EREFUSEDADDRESS";
}
