import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { renderConfigurationDoc } from "../src/config/settings-doc.ts";
import { errorCodes } from "../src/core/errors.ts";
import { renderErrorTable } from "../src/wire/errors-doc.ts";

const read = (path: string): string => readFileSync(new URL(`../${path}`, import.meta.url), "utf8");

describe("docs match the code (run `npm run docs` after changing settings or errors)", () => {
  it("docs/configuration.md is generated from the setting declarations", () => {
    assert.equal(read("docs/configuration.md"), renderConfigurationDoc());
  });

  it("docs/errors.md lists every error code with its status", () => {
    const doc = read("docs/errors.md");
    assert.ok(doc.includes(renderErrorTable()), "the error table is current");
    for (const code of errorCodes) assert.ok(doc.includes(`\`${code}\``), `${code} is documented`);
  });
});
