import assert from "node:assert/strict";
import { networkInterfaces } from "node:os";
import { describe, it } from "node:test";
import { nonPublicKind, RefusedAddress, RegistryAddressPolicy } from "./registry-addresses.ts";

describe("registry address policy", () => {
  it("names the kind of every non-public address, IPv4-mapped ones included", () => {
    const kinds: Record<string, string | undefined> = {
      "127.0.0.1": "loopback",
      "127.255.0.9": "loopback",
      "::1": "loopback",
      "::ffff:127.0.0.1": "loopback",
      "10.1.2.3": "private",
      "172.31.0.1": "private",
      "192.168.1.1": "private",
      "fd12::1": "private",
      "169.254.169.254": "link-local",
      "fe80::1": "link-local",
      "100.64.0.1": "shared (carrier NAT)",
      "0.0.0.0": "unspecified",
      "::": "unspecified",
      "224.0.0.1": "multicast",
      "255.255.255.255": "reserved",
      "8.8.8.8": undefined,
      "172.32.0.1": undefined,
      "2606:4700:4700::1111": undefined,
    };
    for (const [address, kind] of Object.entries(kinds))
      assert.equal(nonPublicKind(address), kind, address);
  });

  it("counts this machine's own addresses as non-public", () => {
    const own = Object.values(networkInterfaces())
      .flatMap((entries) => entries ?? [])
      .find((entry) => !entry.internal);
    if (own === undefined) return; // a machine with loopback only
    assert.notEqual(nonPublicKind(own.address), undefined);
  });

  it("allows non-public addresses only for listed hosts, with or without their port", () => {
    const policy = new RegistryAddressPolicy(["registry.lan", "10.0.0.5:5000"]);
    const refused = (url: string, address: string) =>
      policy.refusal(new URL(url), address) !== undefined;
    assert.equal(refused("https://registry.lan/v2/", "10.0.0.9"), false);
    assert.equal(refused("https://registry.lan:8443/v2/", "10.0.0.9"), false);
    assert.equal(refused("http://10.0.0.5:5000/v2/", "10.0.0.5"), false);
    assert.equal(refused("http://10.0.0.5:5001/v2/", "10.0.0.5"), true);
    assert.equal(refused("https://other.lan/v2/", "10.0.0.9"), true);
    assert.equal(refused("https://registry.example.com/v2/", "8.8.8.8"), false);
    assert.match(
      policy.literalRefusal(new URL("http://[::1]:5000/v2/")) ?? "",
      /resolves to ::1 \(loopback\); .* registryPrivateHosts/,
    );
  });

  it("refuses a name when any address it resolves to is refused, and hands over what it checked", async () => {
    const lookup = (policy: RegistryAddressPolicy, all: boolean) =>
      new Promise<unknown>((resolve, reject) => {
        policy.lookupFor(new URL("http://localhost:5000/"))(
          "localhost",
          { all },
          (error, address) => {
            if (error !== null) reject(error);
            else resolve(address);
          },
        );
      });
    await assert.rejects(lookup(new RegistryAddressPolicy([]), true), RefusedAddress);
    const allowed = new RegistryAddressPolicy(["localhost"]);
    const addresses = (await lookup(allowed, true)) as { address: string }[];
    assert.ok(addresses.every((entry) => nonPublicKind(entry.address) === "loopback"));
    assert.equal(nonPublicKind((await lookup(allowed, false)) as string), "loopback");
  });
});
