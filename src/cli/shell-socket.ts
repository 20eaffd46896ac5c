import type { IncomingMessage } from "node:http";
import { WebSocket } from "ws";
import { maxSentFrameBytes, shellProtocol } from "../core/shell-channels.ts";
import { BerthApiError } from "./errors.ts";
import { signShellRequest, type ShellTarget } from "./shell-url.ts";

/**
 * An upgrade Berth answered with an HTTP error instead of a WebSocket: the AWS error it carried,
 * and its status, which says whether trying again can help.
 */
export class ShellRefusedError extends BerthApiError {
  readonly status: number;

  constructor(status: number, error: BerthApiError) {
    super(error.name, error.message);
    this.status = status;
  }
}

/**
 * Starts opening the shell's WebSocket, signed with SigV4 headers (freshly: each attempt signs
 * anew). The socket comes back connecting, so its listeners are in place before its first frame;
 * `untilOpen` waits for the handshake.
 */
export async function openShellSocket(target: ShellTarget): Promise<WebSocket> {
  const { url, headers } = await signShellRequest(target);
  return new WebSocket(url, [shellProtocol], {
    headers,
    maxPayload: maxSentFrameBytes,
    perMessageDeflate: false,
  });
}

/**
 * Resolves once the handshake is complete; rejects with ShellRefusedError when Berth answers
 * an error instead, or with the network's error.
 */
export function untilOpen(socket: WebSocket): Promise<void> {
  if (socket.readyState === socket.OPEN) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onError = (error: Error) => {
      socket.off("open", onOpen);
      reject(error);
    };
    const onOpen = () => {
      socket.off("error", onError);
      resolve();
    };
    socket.once("open", onOpen);
    socket.once("error", onError);
    socket.once("unexpected-response", (_request, response) => {
      socket.off("error", onError);
      socket.off("open", onOpen);
      // Nothing more will come of this socket: its own error at the abort is expected.
      socket.on("error", () => {});
      readRefusal(response)
        .then(reject, reject)
        .finally(() => {
          socket.terminate();
        });
    });
  });
}

/** The AWS error in a refused upgrade's JSON body. */
async function readRefusal(response: IncomingMessage): Promise<ShellRefusedError> {
  const chunks: Buffer[] = [];
  for await (const chunk of response) chunks.push(chunk as Buffer);
  const status = response.statusCode ?? 0;
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
  } catch {
    // Not Berth's JSON (a proxy's page): the status alone says what happened.
  }
  return new ShellRefusedError(status, BerthApiError.fromAnswer({ status, json }));
}
