// The trace headers an agent gets: the caller's as they came when Berth does not trace, pointed
// at Berth's own span when it does.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { traceHeadersForAgent } from "./agent-trace-headers.ts";

const callerTraceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const berthTraceparent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01";

describe("traceHeadersForAgent", () => {
  it("passes the caller's trace headers as they came when Berth does not trace", () => {
    const incoming = {
      traceparent: callerTraceparent,
      tracestate: "vendor=value",
      "x-amzn-trace-id":
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1",
      baggage: "user=alice",
      "x-other": "not a trace header",
    };
    assert.deepEqual(traceHeadersForAgent(incoming, undefined), {
      traceparent: callerTraceparent,
      tracestate: "vendor=value",
      "x-amzn-trace-id":
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1",
      baggage: "user=alice",
    });
  });

  it("gives Berth's traceparent, keeps tracestate and baggage, and re-points X-Amzn-Trace-Id", () => {
    const incoming = {
      traceparent: callerTraceparent,
      tracestate: "vendor=value",
      "x-amzn-trace-id":
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1",
      baggage: "user=alice",
    };
    assert.deepEqual(traceHeadersForAgent(incoming, berthTraceparent), {
      traceparent: berthTraceparent,
      tracestate: "vendor=value",
      "x-amzn-trace-id":
        "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=00f067aa0ba902b7;Sampled=1",
      baggage: "user=alice",
    });
  });

  it("sends Berth's traceparent to a caller that sent none, and adds no X-Amzn-Trace-Id", () => {
    assert.deepEqual(traceHeadersForAgent({}, berthTraceparent), { traceparent: berthTraceparent });
  });

  it("says not sampled in X-Amzn-Trace-Id when Berth's span is not", () => {
    const unsampled = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-00";
    const headers = traceHeadersForAgent(
      { "x-amzn-trace-id": "Root=1-0af76519-16cd43dd8448eb211c80319c;Sampled=0" },
      unsampled,
    );
    assert.equal(
      headers["x-amzn-trace-id"],
      "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=00f067aa0ba902b7;Sampled=0",
    );
  });
});
