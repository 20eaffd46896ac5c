import { spawn } from "node:child_process";
import { createReadStream, existsSync, statSync } from "node:fs";
import { resolve } from "node:path";
import type { Readable } from "node:stream";
import { UsageError, optionValue, requirePositionals } from "./args.ts";
import type { CliCommand } from "./command.ts";
import { exitCodes, formatBytes, printJson, Progress, table } from "./output.ts";

export const imageCommands: CliCommand[] = [
  {
    name: "images load",
    summary:
      "load a container image from an OCI layout (folder or tar) for hosts without a registry",
    usage: "images load PATH --name HOST/REPOSITORY:TAG",
    options: {
      name: {
        value: true,
        doc: "the name runtimes use as containerUri (it is used instead of any registry)",
      },
    },
    examples: [
      "skopeo copy docker-daemon:my-agent:1 oci-archive:agent.tar && berth images load agent.tar --name berth.local/my-agent:1",
      "berth images load ./oci-layout --name berth.local/my-agent:1",
      "berth runtimes create my_agent --image berth.local/my-agent:1",
    ],
    run: async (context) => {
      const { PATH } = requirePositionals(context.args, ["PATH"]);
      const name = optionValue(context.args, "name");
      if (name === undefined) throw new UsageError("--name HOST/REPOSITORY:TAG is required");
      const path = resolve(PATH);
      if (!existsSync(path)) throw new UsageError(`${PATH} does not exist`);
      const progress = new Progress(context.io, `Loading ${PATH}`, context.json);
      try {
        const loaded = await context.connection.berthApi(
          "PUT",
          `/berth/v1/images?reference=${encodeURIComponent(name)}`,
          archiveOf(path),
        );
        if (context.json) printJson(context.io, loaded);
        else
          context.io.stdout.write(
            `Loaded ${name} (${String(loaded["digest"])}, ${formatBytes(loaded["sizeBytes"] as number)} unpacked).\n`,
          );
      } finally {
        progress.done();
      }
      return exitCodes.ok;
    },
  },
  {
    name: "images list",
    summary: "list the container images Berth has cached",
    usage: "images list",
    options: {},
    examples: ["berth images list", "berth images list --json"],
    run: async (context) => {
      const images = (await context.connection.berthApi("GET", "/berth/v1/images"))[
        "images"
      ] as Record<string, unknown>[];
      if (context.json) printJson(context.io, { images });
      else
        context.io.stdout.write(
          table(
            images.map((image) => ({
              digest: String(image["digest"]).slice(0, 19),
              source: String(image["source"]),
              names: (image["names"] as string[]).join(", "),
              size: formatBytes(image["sizeBytes"] as number),
              lastUsed: String(image["lastUsedAt"]),
            })),
            ["digest", "source", "names", "size", "lastUsed"],
            "No images.",
          ),
        );
      return exitCodes.ok;
    },
  },
  {
    name: "images delete",
    summary: "drop the name of a loaded image (unused images are then collected)",
    usage: "images delete NAME",
    options: {},
    examples: ["berth images delete berth.local/my-agent:1"],
    run: async (context) => {
      const { NAME } = requirePositionals(context.args, ["NAME"]);
      await context.connection.berthApi(
        "DELETE",
        `/berth/v1/images?reference=${encodeURIComponent(NAME)}`,
      );
      if (context.json) printJson(context.io, { name: NAME, status: "DELETED" });
      else context.io.stdout.write(`Deleted the name ${NAME}.\n`);
      return exitCodes.ok;
    },
  },
];

/** A tar of an OCI layout folder, or the archive file as it is. */
function archiveOf(path: string): Readable {
  if (!statSync(path).isDirectory()) return createReadStream(path);
  return spawn("tar", ["-cf", "-", "-C", path, "."], { stdio: ["ignore", "pipe", "inherit"] })
    .stdout;
}
