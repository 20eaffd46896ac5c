import { constants } from "node:os";
import { UsageError, hasFlag, integerOption, optionValue, type ParsedArgs } from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import { describeFailure } from "./errors.ts";
import { exitCodes } from "./output.ts";
import { resolveRuntime } from "./runtimes.ts";
import { attachShell } from "./shell-attach.ts";
import { openShellSocket } from "./shell-socket.ts";
import { processTerminal } from "./shell-terminal.ts";
import { maxPresignSeconds, presignShellUrl, type ShellTarget } from "./shell-url.ts";

/** The options a shell is opened with, by `berth shell` and `berth exec -it` alike. */
export const shellOptions = {
  session: { value: true, doc: "runtimeSessionId of the session to open the shell in (required)" },
  qualifier: { value: true, doc: "endpoint name (default DEFAULT)" },
  "shell-id": {
    value: true,
    doc: "reattach to this shell (within about 15 minutes of losing it); its output since is replayed",
  },
} as const;

/** The words that make `berth exec` interactive, as docker spells them. */
const interactiveWords = new Set(["-it", "-ti"]);

export const shellCommands: CliCommand[] = [
  {
    name: "shell",
    summary: "open an interactive shell (a terminal) in a session; exits with the shell's code",
    usage: "shell RUNTIME --session ID [--qualifier Q] [--shell-id ID] [--print-url [--expires S]]",
    options: {
      ...shellOptions,
      "print-url": {
        doc: "print a presigned ws(s):// URL of the shell for any WebSocket client, and exit",
      },
      expires: {
        value: true,
        doc: `with --print-url: seconds the URL stays valid (1-${maxPresignSeconds}, default 300)`,
      },
    },
    examples: [
      "berth shell my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa",
      "berth shell my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa --print-url --expires 60",
      "echo 'ls /mnt/workspace' | berth shell my_agent --session conversation-0001-aaaaaaaaaaaaaaaaaaaa",
    ],
    run: async (context) => {
      const [runtime, ...extra] = context.args.positionals;
      if (runtime === undefined) throw new UsageError("missing RUNTIME");
      if (extra.length > 0) throw new UsageError(`unexpected argument "${extra[0] ?? ""}"`);
      if (hasFlag(context.args, "print-url")) return printShellUrl(context, runtime);
      if (hasFlag(context.args, "expires")) throw new UsageError("--expires goes with --print-url");
      return runShell(context, { runtime, name: "berth shell" });
    },
  },
];

/** Whether `berth exec` was asked for a terminal (-it), which its RUNTIME is, and the command. */
export function interactiveExec(
  args: ParsedArgs,
): { runtime: string | undefined; command: string | undefined } | undefined {
  if (!args.positionals.some((word) => interactiveWords.has(word))) {
    if (hasFlag(args, "shell-id")) throw new UsageError("--shell-id goes with -it");
    return undefined;
  }
  const [runtime, ...words] = args.positionals.filter((word) => !interactiveWords.has(word));
  const command = [...words, ...args.rest].join(" ");
  return { runtime, command: command.trim() === "" ? undefined : command };
}

/**
 * `berth exec -it RUNTIME --session ID [-- COMMAND...]`: the shell, with COMMAND typed as its
 * first line (see execLine) when one is given.
 */
export async function runInteractiveExec(
  context: CommandContext,
  request: { runtime: string | undefined; command: string | undefined },
): Promise<number> {
  if (request.runtime === undefined) throw new UsageError("missing RUNTIME");
  if (hasFlag(context.args, "timeout"))
    throw new UsageError("--timeout is for one-shot commands, not with -it");
  return runShell(context, {
    runtime: request.runtime,
    name: "berth exec",
    ...(request.command === undefined ? {} : { firstInput: execLine(request.command) }),
  });
}

/**
 * The line that makes the shell run COMMAND as its last act, so the CLI ends with COMMAND's exit
 * code. `exec COMMAND` alone would replace the shell with COMMAND's first simple command only
 * (`echo hi; exit 5` would end with echo's 0, the rest never run) and leaves an interactive shell
 * open when the program is not found; a `-c` shell runs the whole line, as `berth exec` does
 * (bash's own when the shell is bash, sh otherwise).
 */
export function execLine(command: string): string {
  return `exec \${BASH:-sh} -c ${shellQuoted(command)}\n`;
}

/** One single-quoted shell word, whatever `text` holds (a quote is closed, escaped, reopened). */
function shellQuoted(text: string): string {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

/**
 * Attaches this terminal to a shell in the session until the shell exits. Exit codes: the
 * shell's own, 128+N when signal N ended the CLI, 125 when Berth failed (as `berth exec`).
 */
async function runShell(
  context: CommandContext,
  shell: { runtime: string; name: string; firstInput?: string },
): Promise<number> {
  const sessionId = requiredSession(context);
  const terminal = processTerminal(context.io);
  const hangUp = hangUpOnSignals();
  const restoreMode = terminal.enterRawMode();
  try {
    const target = await shellTarget(context, shell.runtime, sessionId);
    const exitCode = await attachShell({
      terminal,
      name: shell.name,
      firstInput: shell.firstInput,
      signal: hangUp.signal,
      connect: async (shellId) =>
        openShellSocket({
          ...target,
          // Fresh each time: the SDK's provider refreshes credentials that expire.
          credentials: await context.connection.data.config.credentials(),
          ...(shellId === undefined ? {} : { shellId }),
          // A new shell starts at the window's size: its first prompt is drawn for it.
          size: terminal.size(),
        }),
    });
    return hangUp.exitCode() ?? exitCode;
  } catch (error) {
    // A signal hung up: its code, whatever the connection said on its way down.
    const hungUp = hangUp.exitCode();
    if (hungUp !== undefined) return hungUp;
    restoreMode();
    const failure = describeFailure(error, context.connection.endpoint);
    context.io.stderr.write(`${shell.name}: ${failure.message}\n`);
    return exitCodes.execFailed;
  } finally {
    restoreMode();
    hangUp.stop();
  }
}

/**
 * SIGINT, SIGTERM and SIGHUP hang the shell up, as closing a terminal ends what runs in it, and
 * make the exit code 128 + the signal's number. (In raw mode Ctrl-C is a key the shell gets, not
 * a SIGINT to the CLI.)
 */
function hangUpOnSignals(): {
  signal: AbortSignal;
  exitCode(): number | undefined;
  stop(): void;
} {
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    received ??= signal;
    controller.abort();
  };
  for (const signal of signals) process.on(signal, onSignal);
  return {
    signal: controller.signal,
    exitCode: () => (received === undefined ? undefined : 128 + constants.signals[received]),
    stop: () => {
      for (const signal of signals) process.off(signal, onSignal);
    },
  };
}

/** `berth shell --print-url`: a presigned URL, for clients that cannot sign the upgrade. */
async function printShellUrl(context: CommandContext, runtime: string): Promise<number> {
  const expiresInSeconds =
    integerOption(context.args, "expires", { min: 1, max: maxPresignSeconds }) ?? 300;
  const target = await shellTarget(context, runtime, requiredSession(context));
  const url = await presignShellUrl({ ...target, expiresInSeconds });
  context.io.stdout.write(`${url}\n`);
  return exitCodes.ok;
}

async function shellTarget(
  context: CommandContext,
  ref: string,
  sessionId: string,
): Promise<ShellTarget> {
  const runtime = await resolveRuntime(context.connection, ref);
  const qualifier = optionValue(context.args, "qualifier");
  const shellId = optionValue(context.args, "shell-id");
  return {
    endpoint: context.connection.endpoint,
    region: context.connection.region,
    credentials: await context.connection.data.config.credentials(),
    runtimeArn: runtime.arn,
    sessionId,
    ...(qualifier === undefined ? {} : { qualifier }),
    ...(shellId === undefined ? {} : { shellId }),
  };
}

function requiredSession(context: CommandContext): string {
  const sessionId = optionValue(context.args, "session");
  if (sessionId === undefined)
    throw new UsageError(
      "--session is required: the session to open the shell in (`berth sessions list RUNTIME` shows running ones)",
    );
  return sessionId;
}
