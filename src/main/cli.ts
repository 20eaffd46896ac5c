import {
  envName,
  flagName,
  loadSettingsWithWarnings,
  settingDeclarations,
  settingParts,
  SettingsError,
} from "../config/settings.ts";
import { refuseTestPartsUnlessAllowed, TestPartsRefusedError } from "./parts.ts";
import { clientCommandLines, clientNotes, runClientCommand } from "../cli/main.ts";
import { startBerth } from "./berth.ts";
import { closeInheritedDescriptors } from "./inherited-descriptors.ts";
import { HeldElsewhereError, LostOwnershipError } from "../core/replication/fenced-head.ts";
import { ObjectStoreCheckError } from "./object-store-check.ts";
import { PostgresConnectionError } from "../adapters/postgres/connection-errors.ts";
import { NodeNameTakenError } from "./cluster.ts";
import { ObjectStoreUnavailableError } from "../core/object-store.ts";
import { ReplicaDataError } from "../core/replication/volume-replica.ts";
import { jsonLogger } from "./json-logger.ts";

const usage = `berth — a self-hosted agent runtime, wire-compatible with Amazon Bedrock AgentCore Runtime

Usage:
${`  berth serve [options]`.padEnd(26)}start the server (control plane and data plane on one port)
${clientCommandLines(24)}
${`  berth help`.padEnd(26)}show this help

${clientNotes}

Examples:
  berth serve                                  # 127.0.0.1:8787, data in /var/lib/berth
  berth serve --port 9000 --data-dir /srv/berth
  BERTH_ACCESS_KEY_ID=... BERTH_SECRET_ACCESS_KEY=... berth serve --host 0.0.0.0

serve options (each also as a BERTH_* environment variable or a key in --config FILE, a JSON object):
${Object.entries(settingParts)
  .map(
    ([part, title]) =>
      `\n ${title}:\n` +
      Object.entries(settingDeclarations)
        .filter(([, declaration]) => declaration.part === part)
        .map(
          ([name, declaration]) =>
            `  ${flagName(name).padEnd(30)} ${declaration.doc} [${envName(name)}]`,
        )
        .join("\n"),
  )
  .join("\n")}

  --config FILE                  JSON file of settings (lowest precedence after defaults) [BERTH_CONFIG]
`;

/**
 * Returns the process exit code: 0 success, 2 bad usage or settings (an object store that cannot
 * be used among them), 1 failure (a Berth that stopped because another took its object store).
 */
export async function runCli(args: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  if (command !== "serve") {
    const io = { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env };
    const code = await runClientCommand(args, io);
    if (code !== undefined) return code;
    process.stderr.write(`berth: unknown command "${command}"\n\n${usage}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(usage);
    return 0;
  }
  return serve(rest, env);
}

/** Set to 1 by Berth's own test suite, and nothing else, to serve on test-only parts. */
const allowTestPartsVariable = "BERTH_ALLOW_TEST_PARTS";

/** How soon after the first a SIGINT counts as the same Ctrl-C, relayed by npx. */
const duplicateSignalMs = 1000;

async function serve(args: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  let loaded;
  try {
    loaded = loadSettingsWithWarnings(args, env);
  } catch (error) {
    if (error instanceof SettingsError) {
      process.stderr.write(`berth serve: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  const { settings, warnings } = loaded;
  const allowTestParts = env[allowTestPartsVariable] === "1";
  try {
    refuseTestPartsUnlessAllowed(settings, allowTestParts);
  } catch (error) {
    if (error instanceof TestPartsRefusedError) {
      process.stderr.write(`berth serve: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  const log = jsonLogger(process.stdout);
  for (const warning of warnings) log.warn(warning);
  const closed = closeInheritedDescriptors();
  if (closed.length > 0) log.info("closed inherited descriptors", { descriptors: closed });
  // Listen before starting, so a signal that arrives during start-up still shuts down cleanly.
  // Losing the object store to another Berth stops this one the same way (fail-stop): two must
  // never serve, sweep and checkpoint the same runtimes.
  const stop = Promise.withResolvers<NodeJS.Signals | LostOwnershipError>();
  process.once("SIGTERM", stop.resolve);
  process.once("SIGINT", stop.resolve);
  let berth;
  try {
    berth = await startBerth(settings, {
      log,
      console: process.stderr,
      allowTestParts,
      onMetadataLost: stop.resolve,
    });
  } catch (error) {
    // The object store is unreachable, refuses these credentials, lacks the bucket, or ignores
    // conditional writes: a setting to fix, said in one line.
    if (
      error instanceof ObjectStoreCheckError ||
      error instanceof PostgresConnectionError ||
      error instanceof NodeNameTakenError
    ) {
      process.stderr.write(`berth serve: ${error.message}\n`);
      return 2;
    }
    // Another live Berth holds what these settings share (the object store): a setting to fix.
    if (error instanceof HeldElsewhereError) {
      process.stderr.write(
        `berth serve: ${error.message}: stop that one first, or give this one another --object-store-url (a bucket or prefix of its own)\n`,
      );
      return 2;
    }
    // The object store failed after the check (gone down, a snapshot it cannot give back whole):
    // nothing to fix in the settings, and no stack trace to read either.
    if (error instanceof ObjectStoreUnavailableError || error instanceof ReplicaDataError) {
      process.stderr.write(
        `berth serve: the object store failed while Berth started: ${error.message}\n`,
      );
      return 1;
    }
    throw error;
  }
  const reason = await stop.promise;
  const lost = reason instanceof LostOwnershipError;
  if (lost) {
    log.error(
      "another Berth took over this object store's metadata: shutting down, as on SIGTERM, so that only that one serves it",
      { error: reason.message, shutdownGraceSeconds: settings.shutdownGraceSeconds },
    );
  } else {
    log.info("shutting down", {
      signal: reason,
      shutdownGraceSeconds: settings.shutdownGraceSeconds,
    });
  }
  // Requests in flight get the grace period; a second signal says not to wait for them. A SIGINT
  // within a second of the first is the same Ctrl-C twice (the terminal sends it to npx and to
  // Berth, and npx passes its copy on), not a second request.
  const firstSignalAt = performance.now();
  const hurry = new AbortController();
  const hurryUp = (again: NodeJS.Signals) => {
    if (again === "SIGINT" && performance.now() - firstSignalAt < duplicateSignalMs) return;
    log.info("ending the grace period at once", { signal: again });
    hurry.abort();
    process.off("SIGTERM", hurryUp);
    process.off("SIGINT", hurryUp);
  };
  process.on("SIGTERM", hurryUp);
  process.on("SIGINT", hurryUp);
  await berth.close({ graceMs: settings.shutdownGraceSeconds * 1000, hurry: hurry.signal });
  log.info("stopped");
  return lost ? 1 : 0;
}
