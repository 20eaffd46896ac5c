import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, before, describe, it } from "node:test";
import { InvokeAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore";
import { CreateAgentRuntimeCommand } from "@aws-sdk/client-bedrock-agentcore-control";
import { agentSources, installAgent } from "./support/agents.ts";
import { hostSuite, removeDir, startTestBerth, type TestBerth } from "./support/berth.ts";
import { TestHost } from "./support/test-host.ts";
import { probeArtifact } from "./support/runtimes.ts";

describe("network (a host suite: it tests the real parts, as root)", hostSuite, () => {
  const testHost = new TestHost(process.pid);
  let counter = 0;

  before(async () => {
    await testHost.start();
  });

  after(async () => {
    await testHost.stop();
  });

  async function probeRuntime(harness: TestBerth): Promise<string> {
    installAgent(harness.dataDir, agentSources.probe, "probe");
    const created = await harness.control.send(
      new CreateAgentRuntimeCommand({
        agentRuntimeName: `net_probe_${(counter += 1)}`,
        agentRuntimeArtifact: probeArtifact,
        roleArn: undefined,
        networkConfiguration: { networkMode: "PUBLIC" },
      }),
    );
    await harness.berth.idle();
    return created.agentRuntimeArn ?? "";
  }

  async function ask(
    harness: TestBerth,
    arn: string,
    payload: unknown,
  ): Promise<Record<string, unknown>> {
    const response = await harness.data.send(
      new InvokeAgentRuntimeCommand({
        agentRuntimeArn: arn,
        runtimeSessionId: `network-session-${"n".repeat(30)}`,
        payload: Buffer.from(JSON.stringify(payload)),
      }),
    );
    return JSON.parse((await response.response?.transformToString()) ?? "{}") as Record<
      string,
      unknown
    >;
  }

  describe("PUBLIC network mode (the default)", () => {
    let harness: TestBerth;
    let arn: string;
    let hostService: Server;

    before(async () => {
      harness = await startTestBerth();
      arn = await probeRuntime(harness);
      // A service on this machine's own address (not loopback): sandboxes must not reach it.
      hostService = createServer((_request, response) => response.end("host service"));
      await new Promise<void>((resolve) =>
        hostService.listen(testHost.port, testHost.hostSideAddress, resolve),
      );
    });

    after(async () => {
      await new Promise((resolve) => hostService.close(resolve));
      await harness.close();
      removeDir(harness.dataDir);
    });

    it("reaches a server outside the machine", async () => {
      const reply = await ask(harness, arn, {
        action: "fetch",
        url: `http://${testHost.publicAddress}:${testHost.port}/`,
      });
      assert.deepEqual(reply, { status: 200, body: "hello from the test host" });
    });

    it("cannot reach private or link-local addresses, nor the host's neighbours on its own subnet, though the host can", async () => {
      // The neighbour's range is not private: it is blocked as a subnet of the host's own.
      const addresses = [
        testHost.privateAddress,
        testHost.linkLocalAddress,
        testHost.neighborAddress,
      ];
      for (const address of addresses) {
        assert.equal(
          await testHost.reachableFromHost(address),
          true,
          `the host reaches ${address}`,
        );
        const reply = await ask(harness, arn, {
          action: "connect",
          host: address,
          port: testHost.port,
        });
        assert.equal(reply["connected"], false, `a sandbox must not reach ${address}`);
      }
    });

    it("cannot reach services on the host itself: its addresses, its loopback, Berth's port", async () => {
      const ownAddress = await ask(harness, arn, {
        action: "connect",
        host: testHost.hostSideAddress,
        port: testHost.port,
      });
      assert.equal(ownAddress["connected"], false);
      const slirpHostAlias = await ask(harness, arn, {
        action: "connect",
        host: "10.0.2.2",
        port: harness.berth.port,
      });
      assert.equal(slirpHostAlias["connected"], false);
      const loopback = await ask(harness, arn, {
        action: "connect",
        host: "127.0.0.1",
        port: harness.berth.port,
      });
      assert.equal(loopback["connected"], false);
    });
  });

  describe("operator settings", () => {
    it("--sandbox-outbound none leaves sandboxes with loopback only", async () => {
      const harness = await startTestBerth(["--sandbox-outbound", "none"]);
      try {
        const arn = await probeRuntime(harness);
        const reply = await ask(harness, arn, {
          action: "connect",
          host: testHost.publicAddress,
          port: testHost.port,
        });
        assert.equal(reply["connected"], false);
        assert.equal(reply["error"], "ENETUNREACH");
      } finally {
        await harness.close();
        removeDir(harness.dataDir);
      }
    });

    it("--sandbox-allowed-networks opens a private range the operator names", async () => {
      const privateNetwork = testHost.privateAddress.replace(/\.2$/, ".0/30");
      const harness = await startTestBerth(["--sandbox-allowed-networks", privateNetwork]);
      try {
        const arn = await probeRuntime(harness);
        const reply = await ask(harness, arn, {
          action: "fetch",
          url: `http://${testHost.privateAddress}:${testHost.port}/`,
        });
        assert.equal(reply["body"], "hello from the test host");
        const linkLocal = await ask(harness, arn, {
          action: "connect",
          host: testHost.linkLocalAddress,
          port: testHost.port,
        });
        assert.equal(linkLocal["connected"], false, "other blocked ranges stay blocked");
      } finally {
        await harness.close();
        removeDir(harness.dataDir);
      }
    });
  });
});
