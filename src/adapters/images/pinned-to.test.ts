import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { pinnedTo } from "./container-images.ts";

const digest = `sha256:${"a".repeat(64)}`;

describe("pinnedTo", () => {
  it("replaces a tag or a digest with the pinned digest, keeping a registry's port", () => {
    assert.equal(
      pinnedTo("registry.example.com/agents/a:1.2", digest),
      `registry.example.com/agents/a@${digest}`,
    );
    assert.equal(pinnedTo("localhost:5000/agent", digest), `localhost:5000/agent@${digest}`);
    assert.equal(pinnedTo("localhost:5000/agent:v1", digest), `localhost:5000/agent@${digest}`);
    assert.equal(
      pinnedTo(`localhost:5000/agent@sha256:${"b".repeat(64)}`, digest),
      `localhost:5000/agent@${digest}`,
    );
    assert.equal(pinnedTo("agent:latest", digest), `agent@${digest}`);
  });
});
