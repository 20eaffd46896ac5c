import { runCommand, type CliCommand } from "./command.ts";
import { defaultEndpoint } from "./connection.ts";
import { exitCodes, type Io } from "./output.ts";
import { runtimeCommands } from "./runtimes.ts";
import { sessionCommands } from "./sessions.ts";
import { imageCommands } from "./images.ts";
import { nodeCommands } from "./nodes.ts";
import { shellCommands } from "./shell.ts";
import { logsCommand } from "./logs.ts";
import { topCommand } from "./top.ts";

const clientCommands: CliCommand[] = [
  ...runtimeCommands,
  ...sessionCommands,
  logsCommand,
  ...shellCommands,
  ...imageCommands,
  ...nodeCommands,
  topCommand,
];

/** One line per client command, aligned with `width` columns for the command. */
export function clientCommandLines(width: number): string {
  return clientCommands
    .map((command) => `  ${`berth ${command.name}`.padEnd(width)}${command.summary}`)
    .join("\n");
}

/** How the client commands connect and what their exit codes mean. */
export const clientNotes = [
  `The client commands talk to Berth at --endpoint or BERTH_ENDPOINT (default ${defaultEndpoint}),`,
  "signed with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (Berth prints them at its first start), an",
  "AWS profile, or, as root on the server's machine, the credentials in its data directory. Add",
  "--json for machine-readable output and --help to any command for its options and examples.",
  "Exit codes: 0 ok, 1 Berth answered an error, 2 bad usage, 3 Berth unreachable, 4 credentials",
  "refused; berth exec and berth shell exit with the command's or shell's own code (128+N when",
  "signal N ended it; 125 when Berth failed).",
].join("\n");

/** Runs a client command; undefined when `words` names none. */
export async function runClientCommand(
  words: readonly string[],
  io: Io,
): Promise<number | undefined> {
  const command =
    clientCommands.find((candidate) => candidate.name === words.slice(0, 2).join(" ")) ??
    clientCommands.find((candidate) => candidate.name === words[0]);
  if (command === undefined) {
    const group = clientCommands.filter((candidate) =>
      candidate.name.startsWith(`${words[0] ?? ""} `),
    );
    if (group.length === 0) return undefined;
    io.stderr.write(
      `berth ${words[0] ?? ""}: which one?\n${group.map((candidate) => `  berth ${candidate.name.padEnd(18)} ${candidate.summary}`).join("\n")}\n`,
    );
    return exitCodes.usage;
  }
  return runCommand(command, words.slice(command.name.split(" ").length), io);
}
