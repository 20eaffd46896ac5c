import { UsageError, parseArgs, type OptionSpec, type ParsedArgs } from "./args.ts";
import { Connection } from "./connection.ts";
import { describeFailure } from "./errors.ts";
import { exitCodes, type Io } from "./output.ts";

/** What every command gets: its parsed arguments, a connection to Berth, and where to write. */
export interface CommandContext {
  args: ParsedArgs;
  connection: Connection;
  io: Io;
  json: boolean;
}

export interface CliCommand {
  /** Words that select it, e.g. "runtimes create". */
  name: string;
  summary: string;
  usage: string;
  options: Record<string, OptionSpec & { doc: string }>;
  examples: string[];
  /** Returns the exit code. */
  run(context: CommandContext): Promise<number>;
}

const globalOptions: Record<string, OptionSpec & { doc: string }> = {
  endpoint: { value: true, doc: `Berth's URL [BERTH_ENDPOINT; default http://127.0.0.1:8787]` },
  region: { value: true, doc: "region to sign for [AWS_REGION; default us-east-1]" },
  json: { doc: "print JSON instead of tables, for scripts" },
  help: { doc: "show this help" },
};

function helpText(command: CliCommand): string {
  const options = { ...command.options, ...globalOptions };
  const width = Math.max(...Object.keys(options).map((name) => name.length)) + 10;
  return [
    `berth ${command.name} — ${command.summary}`,
    "",
    `Usage: berth ${command.usage}`,
    "",
    "Options:",
    ...Object.entries(options).map(
      ([name, option]) =>
        `  ${`--${name}${option.value === true ? " VALUE" : ""}`.padEnd(width)} ${option.doc}`,
    ),
    "",
    "Examples:",
    ...command.examples.map((example) => `  ${example}`),
    "",
  ].join("\n");
}

/** A usage mistake: the problem, the usage line, and where the full help is. */
function usageMistake(command: CliCommand, io: Io, problem: string): number {
  io.stderr.write(
    `berth ${command.name}: ${problem}\nUsage: berth ${command.usage}\nSee \`berth ${command.name} --help\` for options and examples.\n`,
  );
  return exitCodes.usage;
}

/** Parses, connects, runs; a usage mistake prints the command's help with the problem. */
export async function runCommand(
  command: CliCommand,
  words: readonly string[],
  io: Io,
): Promise<number> {
  let args: ParsedArgs;
  try {
    args = parseArgs(words, { ...command.options, ...globalOptions });
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    return usageMistake(command, io, error.message);
  }
  if (args.options.has("help")) {
    io.stdout.write(helpText(command));
    return exitCodes.ok;
  }
  const connection = new Connection({
    endpoint: args.options.get("endpoint")?.at(-1),
    region: args.options.get("region")?.at(-1),
    env: io.env,
  });
  try {
    return await command.run({ args, connection, io, json: args.options.has("json") });
  } catch (error) {
    if (error instanceof UsageError) return usageMistake(command, io, error.message);
    const failure = describeFailure(error, connection.endpoint);
    io.stderr.write(`berth ${command.name}: ${failure.message}\n`);
    return failure.exitCode;
  } finally {
    connection.close();
  }
}
