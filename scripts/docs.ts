// Regenerates the docs that are derived from code: `npm run docs`.
import { readFileSync, writeFileSync } from "node:fs";
import { renderConfigurationDoc } from "../src/config/settings-doc.ts";
import { renderErrorTable } from "../src/wire/errors-doc.ts";

writeFileSync("docs/configuration.md", renderConfigurationDoc());
const errorsDoc = readFileSync("docs/errors.md", "utf8");
const start = "<!-- errors:start -->";
const end = "<!-- errors:end -->";
const before = errorsDoc.slice(0, errorsDoc.indexOf(start) + start.length);
const afterTable = errorsDoc.slice(errorsDoc.indexOf(end));
writeFileSync("docs/errors.md", `${before}\n${renderErrorTable()}\n${afterTable}`);
