import type { ServerResponse } from "node:http";
import {
  CommandRun,
  readCommandRequest,
  type CommandEvent,
  type CommandRequest,
} from "../core/commands.ts";
import type { CoreContext } from "../core/context.ts";
import { BerthError } from "../core/errors.ts";
import type { Logger } from "../core/logger.ts";
import { noObserver, type Observer } from "../core/observer.ts";
import type { SessionLease, SessionManager } from "../core/sessions.ts";
import { encodeCommandEvent, encodeExceptionEvent } from "./event-stream.ts";
import { onSession, streamingOperation, type Operation, type OperationInput } from "./operation.ts";
import {
  invocationTargetOf,
  requireSessionId,
  sessionResponseHeaders,
} from "./data-plane-request.ts";

export interface CommandOptions {
  /** After a command's timeout, how long its processes get between SIGTERM and SIGKILL. */
  killGraceMs: number;
  log: Logger;
  /**
   * Aborts when Berth, shutting down, stops waiting for requests in flight: a command still
   * streaming then ends with the signal's reason as its stream's last (exception) event.
   */
  shutdown: AbortSignal;
  /** Told of each command's run (traces); none by default. */
  observer?: Observer;
}

/** InvokeAgentRuntimeCommand: a shell command in the session's sandbox, streamed as events. */
export function commandOperation(
  context: CoreContext,
  sessions: SessionManager,
  options: CommandOptions,
): Operation {
  return onSession(
    streamingOperation(
      "InvokeAgentRuntimeCommand",
      "/runtimes/:runtimeArn/commands",
      "json",
      (input) => executeCommand(context, sessions, options, input),
    ),
    { place: true },
  );
}

async function executeCommand(
  context: CoreContext,
  sessions: SessionManager,
  options: CommandOptions,
  input: OperationInput,
): Promise<void> {
  const sessionId = requireSessionId(input.request.headers);
  const request = readCommandRequest(input.body);
  const target = await invocationTargetOf(context, input);
  const lease = await sessions.acquire(target.runtime, target.version, sessionId);
  try {
    const ids = { runtimeId: target.runtime.id, sessionId };
    await (options.observer ?? noObserver).step("command.run", ids, () =>
      runAndStream(lease, request, input, options, ids),
    );
  } finally {
    lease.release();
  }
}

/** Runs the command in the session and streams its events as the response. */
async function runAndStream(
  lease: SessionLease,
  request: CommandRequest,
  input: OperationInput,
  options: CommandOptions,
  ids: { runtimeId: string; sessionId: string },
): Promise<void> {
  const { incoming, outgoing } = input.raw;
  // Until here failures are ordinary error answers; from the first event on they are in-stream.
  const run = await CommandRun.start(lease, request, { killGraceMs: options.killGraceMs });
  outgoing.writeHead(200, {
    "content-type": "application/vnd.amazon.eventstream",
    ...sessionResponseHeaders(incoming.headers, ids.sessionId, input.request.requestId),
  });
  // No flushHeaders(): contentStart follows at once and leaves in the same packet.
  const sink = new EventStreamResponse(outgoing);
  try {
    const outcome = await run.streamTo(sink, { signal: options.shutdown });
    // Logged once the stream has ended: the caller is not kept waiting for the log line.
    options.log.info("command finished", {
      ...ids,
      requestId: input.request.requestId,
      ...outcome,
      callerGone: sink.gone,
    });
  } catch (error) {
    sink.fail(inStreamError(error, input.request.requestId, options.log));
  } finally {
    sink.end();
  }
}

function inStreamError(error: unknown, requestId: string, log: Logger): BerthError {
  if (BerthError.isInstance(error)) return error;
  log.error("command failed", { requestId, error: String((error as Error).stack ?? error) });
  return new BerthError(
    "InternalServerException",
    `Berth failed while running the command; see the server log for request id ${requestId}`,
  );
}

/**
 * The HTTP response as an event sink. Writes report backpressure; once the caller has gone,
 * events are dropped so the command can run to its end.
 */
class EventStreamResponse {
  gone = false;
  private readonly outgoing: ServerResponse;

  constructor(outgoing: ServerResponse) {
    this.outgoing = outgoing;
    outgoing.once("close", () => {
      if (!outgoing.writableFinished) this.gone = true;
    });
  }

  send(event: CommandEvent): boolean {
    if (this.gone) return true;
    return this.writeParts(encodeCommandEvent(event));
  }

  /**
   * One write (writev) for an event's parts; true while the response can take more. Whether it
   * can is the connection's to say: write() answers while corked, before uncork() hands the
   * parts to the kernel, and a "false" then is followed by no 'drain' if they all went at once.
   */
  private writeParts(parts: readonly Buffer[]): boolean {
    this.outgoing.cork();
    for (const part of parts) this.outgoing.write(part);
    this.outgoing.uncork();
    return this.outgoing.socket?.writableNeedDrain !== true;
  }

  drained(): Promise<void> {
    if (this.gone) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.outgoing.off("drain", done);
        this.outgoing.off("close", done);
        resolve();
      };
      this.outgoing.on("drain", done);
      this.outgoing.on("close", done);
    });
  }

  fail(error: BerthError): void {
    if (!this.gone) this.outgoing.write(encodeExceptionEvent(error));
  }

  /** Ends the response, with a last event if given; ending twice is harmless. */
  end(last?: CommandEvent): void {
    if (this.gone || this.outgoing.writableEnded) return;
    // The last event leaves with the response's end, in one write. (Not by corking around end():
    // Node then sends the end of the body before what was written while corked.)
    if (last === undefined) this.outgoing.end();
    else this.outgoing.end(Buffer.concat(encodeCommandEvent(last)));
  }
}
