// The signature one node puts on a request it forwards to another (ADR 0008): what verifies,
// and that each part an attacker could change, or a misconfigured cluster gets wrong, is refused
// with UnrecognizedClientException and a message that says what to fix.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { BerthError } from "../core/errors.ts";
import {
  ClusterVerifier,
  clusterHeaders,
  isForwarded,
  signForwarded,
  type ForwardedRequest,
} from "./cluster-signature.ts";
import { parseRequestTarget, type WireRequest } from "./http.ts";
import { unsignedPayload } from "./sigv4.ts";

const secret = "a".repeat(64);
const sentAt = new Date("2025-06-01T12:00:00.000Z");
const body = Buffer.from('{"prompt":"hello"}');
const bodySha256 = createHash("sha256").update(body).digest("hex");
const sessionHeader = "x-amzn-bedrock-agentcore-runtime-session-id";

const forwarded: ForwardedRequest = {
  method: "POST",
  target:
    "/runtimes/arn%3Aaws%3Abedrock-agentcore%3Aus-east-1%3A1%3Aruntime%2Fr-1/invocations?qualifier=DEFAULT",
  headers: { "content-type": "application/json", [sessionHeader]: "session-1" },
  contentSha256: bodySha256,
};

/** The receiving node's verifier, its clock reading `skewMs` past the moment of signing. */
function verifierAt(skewMs = 0, verifierSecret = secret): ClusterVerifier {
  return new ClusterVerifier({
    secret: verifierSecret,
    now: () => new Date(sentAt.getTime() + skewMs),
    nodeId: "node-b",
  });
}

/**
 * The request as the receiving node (node-b) sees it: `forwarded` signed by node-a for node-b
 * (or `to`), then changed on the way by `tamper` (the raw header map and request line, as an
 * attacker would change them).
 */
function received(
  options: {
    request?: ForwardedRequest;
    signer?: { nodeId: string; secret: string; now: Date };
    to?: string;
    tamper?: (wire: { method: string; target: string; headers: Record<string, string> }) => void;
  } = {},
): WireRequest {
  const request = options.request ?? forwarded;
  const signed = signForwarded(
    request,
    options.signer ?? { nodeId: "node-a", secret, now: sentAt },
    options.to ?? "node-b",
  );
  const wire = {
    method: request.method,
    target: request.target,
    headers: {
      ...request.headers,
      ...signed,
      // Hop headers the forwarder sets itself and does not sign.
      host: "10.0.0.2:8787",
      "content-length": String(body.length),
    },
  };
  options.tamper?.(wire);
  return {
    method: wire.method,
    ...parseRequestTarget(wire.target),
    headers: wire.headers,
    requestId: "request-1",
  };
}

function without(headers: Record<string, string>, name: string): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).filter(([key]) => key !== name));
}

/** Asserts `attempt` is refused as a forwarded request, with a message matching `why`. */
function assertRefused(attempt: () => unknown, why: RegExp, change = ""): void {
  assert.throws(
    attempt,
    (error: unknown) => {
      assert.ok(BerthError.isInstance(error), `a BerthError: ${String(error)}`);
      assert.equal(error.code, "UnrecognizedClientException");
      assert.match(error.message, /^A request forwarded by another Berth node was refused: /);
      assert.match(error.message, why);
      return true;
    },
    change,
  );
}

async function assertBodyRefused(work: Promise<void>): Promise<void> {
  await assert.rejects(work, (error: unknown) => {
    assert.ok(BerthError.isInstance(error), `a BerthError: ${String(error)}`);
    assert.equal(error.code, "UnrecognizedClientException");
    assert.match(error.message, /the body's SHA-256 is not the one it declared/);
    return true;
  });
}

const otherSecret =
  /its signature does not match: the nodes' clusterSecret settings differ, it was meant for another node, or something on the way \(a proxy\) changed the request/;

describe("the cluster signature of forwarded requests", () => {
  it("verifies a request as it was signed, naming the node that sent it", async () => {
    const pending = verifierAt().checkHeaders(received());
    assert.equal(pending.fromNode, "node-a");
    assert.equal(pending.payloadUnsigned, false);
    await pending.verifyBody(bodySha256);
  });

  it("refuses a request signed with another secret", () => {
    const request = received({ signer: { nodeId: "node-a", secret: "b".repeat(64), now: sentAt } });
    assertRefused(() => verifierAt().checkHeaders(request), otherSecret);
    assertRefused(() => verifierAt(0, "b".repeat(63)).checkHeaders(received()), otherSecret);
  });

  it("refuses a changed method, path or query", () => {
    const changes: Record<string, (wire: { method: string; target: string }) => void> = {
      method: (wire) => {
        wire.method = "PUT";
      },
      path: (wire) => {
        wire.target = wire.target.replace("r-1", "r-2");
      },
      "query value": (wire) => {
        wire.target = wire.target.replace("DEFAULT", "prod");
      },
      "query added": (wire) => {
        wire.target += "&extra=1";
      },
      "query removed": (wire) => {
        wire.target = wire.target.replace(/\?.*$/, "");
      },
    };
    for (const [what, tamper] of Object.entries(changes)) {
      const request = received({ tamper });
      assertRefused(() => verifierAt().checkHeaders(request), otherSecret, `${what} changed`);
    }
  });

  it("refuses a signed header with another value, and a signed header left out", () => {
    const changed = received({
      tamper: (wire) => {
        wire.headers[sessionHeader] = "session-2";
      },
    });
    assertRefused(() => verifierAt().checkHeaders(changed), otherSecret);
    const dropped = received({
      tamper: (wire) => {
        wire.headers = without(wire.headers, sessionHeader);
      },
    });
    assertRefused(() => verifierAt().checkHeaders(dropped), otherSecret);
    const unlisted = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.signedHeaders] = "content-type";
      },
    });
    assertRefused(
      () => verifierAt().checkHeaders(unlisted),
      /it carries headers its signature does not cover: x-amzn-bedrock-agentcore-runtime-session-id$/,
    );
  });

  it("refuses a request signed for another node", () => {
    assertRefused(() => verifierAt().checkHeaders(received({ to: "node-c" })), otherSecret);
  });

  it("refuses a request received before: a replay within the time window", () => {
    const verifier = verifierAt();
    const request = received();
    verifier.checkHeaders(request);
    assertRefused(() => verifier.checkHeaders(request), /it was received before \(a replay\)$/);
    // Another nonce put on the captured request: the nonce is signed.
    const renonced = {
      ...request,
      headers: { ...request.headers, [clusterHeaders.nonce]: "0".repeat(32) },
    };
    assertRefused(() => verifier.checkHeaders(renonced), otherSecret);
    // A request of its own, though alike in every other way, passes.
    assert.equal(verifier.checkHeaders(received()).fromNode, "node-a");
  });

  it("refuses another node id than the one signed", () => {
    const request = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.node] = "node-b";
      },
    });
    assertRefused(() => verifierAt().checkHeaders(request), otherSecret);
  });

  it("refuses a body whose SHA-256 is not the one signed, and a changed declared hash", async () => {
    const pending = verifierAt().checkHeaders(received());
    const otherBody = createHash("sha256").update("{}").digest("hex");
    await assertBodyRefused(pending.verifyBody(otherBody));
    const redeclared = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.contentSha256] = otherBody;
      },
    });
    assertRefused(() => verifierAt().checkHeaders(redeclared), otherSecret);
    const madeUnsigned = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.contentSha256] = unsignedPayload;
      },
    });
    assertRefused(() => verifierAt().checkHeaders(madeUnsigned), otherSecret);
  });

  it("refuses a request more than 60 s old or ahead, telling to sync the clocks", () => {
    const clocks = /is more than 60 s from this node's: keep the nodes' clocks in sync \(NTP\)/;
    assertRefused(() => verifierAt(60_001).checkHeaders(received()), clocks);
    assertRefused(() => verifierAt(-60_001).checkHeaders(received()), clocks);
    // Within the window either way, it passes.
    verifierAt(60_000).checkHeaders(received());
    verifierAt(-60_000).checkHeaders(received());
  });

  it("refuses a date moved within the window, since the date is signed", () => {
    const request = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.date] = new Date(sentAt.getTime() + 1_000).toISOString();
      },
    });
    assertRefused(() => verifierAt().checkHeaders(request), otherSecret);
  });

  it("refuses a date that is no date", () => {
    const request = received({
      tamper: (wire) => {
        wire.headers[clusterHeaders.date] = "yesterday";
      },
    });
    assertRefused(() => verifierAt().checkHeaders(request), /its time yesterday is more than/);
  });

  it("refuses a request missing any of the cluster headers, naming it", () => {
    for (const name of [
      clusterHeaders.node,
      clusterHeaders.date,
      clusterHeaders.nonce,
      clusterHeaders.contentSha256,
      clusterHeaders.signature,
    ]) {
      const missing = received({
        tamper: (wire) => {
          wire.headers = without(wire.headers, name);
        },
      });
      assertRefused(
        () => verifierAt().checkHeaders(missing),
        new RegExp(
          `the ${name} header is missing\\. x-berth-cluster-\\* headers are for Berth nodes only`,
        ),
      );
      const empty = received({
        tamper: (wire) => {
          wire.headers[name] = "";
        },
      });
      assertRefused(() => verifierAt().checkHeaders(empty), new RegExp(`the ${name} header`));
    }
  });

  it("passes a streamed body signed as UNSIGNED-PAYLOAD unread", async () => {
    const request = received({ request: { ...forwarded, contentSha256: unsignedPayload } });
    const pending = verifierAt().checkHeaders(request);
    assert.equal(pending.payloadUnsigned, true);
    await pending.verifyUnsignedPayload();
    // A body declared by its hash is never let through unread.
    await assert.rejects(verifierAt().checkHeaders(received()).verifyUnsignedPayload());
  });

  it("lets the headers of the hop itself change, and refuses any other unsigned header", () => {
    const hop = received({
      tamper: (wire) => {
        wire.headers["host"] = "berth.example.com";
        wire.headers["content-length"] = "999";
        wire.headers["connection"] = "close";
        wire.headers["transfer-encoding"] = "chunked";
      },
    });
    assert.equal(verifierAt().checkHeaders(hop).fromNode, "node-a");
    const slippedIn = received({
      tamper: (wire) => {
        wire.headers["user-agent"] = "added on the way";
        wire.headers["x-amz-security-token"] = "borrowed";
      },
    });
    assertRefused(
      () => verifierAt().checkHeaders(slippedIn),
      /it carries headers its signature does not cover: user-agent, x-amz-security-token$/,
    );
  });

  it("signs a request with no headers (a listing between nodes)", () => {
    const listing = {
      method: "GET",
      target: "/berth/v1/runtimes/r-1/sessions",
      headers: {},
      contentSha256: createHash("sha256").digest("hex"),
    };
    const request = received({ request: listing });
    assert.equal(request.headers[clusterHeaders.signedHeaders], "");
    assert.equal(verifierAt().checkHeaders(request).fromNode, "node-a");
  });
});

describe("which requests are checked as forwarded", () => {
  it("any request with a cluster header, signed or not", () => {
    assert.equal(isForwarded({ [clusterHeaders.signature]: "0".repeat(64) }), true);
    assert.equal(isForwarded({ [clusterHeaders.node]: "node-b" }), true);
    assert.equal(isForwarded({ "x-berth-cluster-anything": "1" }), true);
  });

  it("no request without one", () => {
    assert.equal(isForwarded({ authorization: "AWS4-HMAC-SHA256 …", "x-berth-other": "1" }), false);
  });
});
