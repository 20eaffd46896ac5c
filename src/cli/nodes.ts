import { requirePositionals } from "./args.ts";
import type { CliCommand, CommandContext } from "./command.ts";
import { exitCodes, printJson, table } from "./output.ts";

/** `berth nodes …`: the nodes of a cluster (a lone Berth shows itself). */
export const nodeCommands: CliCommand[] = [
  {
    name: "nodes list",
    summary: "list the cluster's nodes: state, running sessions, capacity, last heartbeat",
    usage: "nodes list",
    options: {},
    examples: ["berth nodes list", "berth nodes list --json"],
    run: async (context) => {
      const nodes = (await context.connection.berthApi("GET", "/berth/v1/nodes"))["nodes"] as
        Record<string, unknown>[] | undefined;
      if (context.json) printJson(context.io, { nodes: nodes ?? [] });
      else
        context.io.stdout.write(
          table(
            (nodes ?? []).map((node) => ({
              name: String(node["name"]),
              state: String(node["state"]),
              sessions: `${String(node["runningSessions"])}/${String(node["maxSessions"])}`,
              url: String(node["url"]),
              heartbeat: String(node["heartbeatAt"]),
            })),
            ["name", "state", "sessions", "url", "heartbeat"],
            "No nodes.",
          ),
        );
      return exitCodes.ok;
    },
  },
  {
    name: "nodes drain",
    summary:
      "stop placing new sessions on a node; its sessions move to other nodes once idle (their next request starts them elsewhere from their storage)",
    usage: "nodes drain NAME",
    options: {},
    examples: ["berth nodes drain node-2", "berth nodes resume node-2"],
    run: (context) => setDraining(context, true),
  },
  {
    name: "nodes resume",
    summary: "let a drained node take new sessions again",
    usage: "nodes resume NAME",
    options: {},
    examples: ["berth nodes resume node-2"],
    run: (context) => setDraining(context, false),
  },
];

async function setDraining(context: CommandContext, draining: boolean): Promise<number> {
  const { NAME } = requirePositionals(context.args, ["NAME"]);
  const action = draining ? "drain" : "resume";
  await context.connection.berthApi(
    "POST",
    `/berth/v1/nodes/${encodeURIComponent(NAME)}/${action}`,
  );
  if (context.json) printJson(context.io, { name: NAME, state: draining ? "draining" : "active" });
  else
    context.io.stdout.write(
      draining
        ? `Draining ${NAME}: it takes no new sessions, and its idle sessions move.\n`
        : `${NAME} takes new sessions again.\n`,
    );
  return exitCodes.ok;
}
