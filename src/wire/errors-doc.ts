import { errorCodes } from "../core/errors.ts";
import { errorShapes } from "./error-status.ts";

/** The error table of docs/errors.md, generated from the registry. */
export function renderErrorTable(): string {
  return [
    "| error (`x-amzn-errortype`) | HTTP | fault | meaning |",
    "|---|---|---|---|",
    ...errorCodes.map((code) => {
      const shape = errorShapes[code];
      return `| \`${code}\` | ${shape.status} | ${shape.fault} | ${shape.meaning} |`;
    }),
  ].join("\n");
}
