// X-Amzn-Trace-Id as W3C trace context ids: what AWS clients and load balancers send, what is
// ignored, and the header Berth writes for an agent.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { formatAmznTraceId, parseAmznTraceId } from "./amzn-trace-id.ts";

describe("parseAmznTraceId", () => {
  it("joins the Root's two parts into the trace id and takes Parent as the parent span", () => {
    assert.deepEqual(
      parseAmznTraceId(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
      ),
      {
        traceId: "5759e988bd862e3fe1be46a994272793",
        parentSpanId: "53995c3f42cd8ad8",
        sampled: true,
      },
    );
  });

  it("reads Sampled=0 as not sampled, and Sampled=? or none as the callee's to decide", () => {
    const root = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8";
    assert.equal(parseAmznTraceId(`${root};Sampled=0`)?.sampled, false);
    assert.equal(parseAmznTraceId(`${root};Sampled=?`)?.sampled, undefined);
    assert.equal(parseAmznTraceId(root)?.sampled, undefined);
  });

  it("takes a load balancer's Root alone (no Parent), and ignores Self and other fields", () => {
    assert.deepEqual(
      parseAmznTraceId(
        "Self=1-67891234-12456789abcdef012345678;Root=1-67891233-abcdef012345678912345678",
      ),
      { traceId: "67891233abcdef012345678912345678", parentSpanId: undefined, sampled: undefined },
    );
    assert.equal(
      parseAmznTraceId(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:1|68fd508a:5;Parent=53995c3f42cd8ad8;Sampled=1",
      )?.parentSpanId,
      "53995c3f42cd8ad8",
    );
  });

  it("accepts any case and spaces around fields, and gives lowercase ids", () => {
    assert.deepEqual(
      parseAmznTraceId(
        " root=1-5759E988-BD862E3FE1BE46A994272793 ; parent=53995C3F42CD8AD8 ; sampled=1",
      ),
      {
        traceId: "5759e988bd862e3fe1be46a994272793",
        parentSpanId: "53995c3f42cd8ad8",
        sampled: true,
      },
    );
  });

  it("refuses a header without a valid Root", () => {
    for (const header of [
      "",
      "Parent=53995c3f42cd8ad8;Sampled=1",
      "Root=2-5759e988-bd862e3fe1be46a994272793",
      "Root=1-5759e988-bd862e3fe1be46a99427279",
      "Root=1-5759e98g-bd862e3fe1be46a994272793",
      "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
      "garbage",
    ]) {
      assert.equal(parseAmznTraceId(header), undefined, header);
    }
  });

  it("treats a malformed or all-zero Parent as none", () => {
    const root = "Root=1-5759e988-bd862e3fe1be46a994272793";
    assert.equal(parseAmznTraceId(`${root};Parent=53995c3f`)?.parentSpanId, undefined);
    assert.equal(parseAmznTraceId(`${root};Parent=0000000000000000`)?.parentSpanId, undefined);
  });
});

describe("formatAmznTraceId", () => {
  it("writes a span as Root and Parent, which parses back to the same ids", () => {
    const header = formatAmznTraceId("5759e988bd862e3fe1be46a994272793", "53995c3f42cd8ad8", true);
    assert.equal(
      header,
      "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
    );
    assert.deepEqual(parseAmznTraceId(header), {
      traceId: "5759e988bd862e3fe1be46a994272793",
      parentSpanId: "53995c3f42cd8ad8",
      sampled: true,
    });
    assert.match(
      formatAmznTraceId("5759e988bd862e3fe1be46a994272793", "53995c3f42cd8ad8", false),
      /Sampled=0$/,
    );
  });
});
