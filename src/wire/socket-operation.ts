import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import type { WebSocket } from "ws";
import type { WireRequest } from "./http.ts";
import type { SessionScope } from "./operation.ts";

/**
 * What a WebSocket operation gets once the upgrade request is authenticated (SigV4 headers or a
 * presigned URL, see sigv4.ts) and matched: the request, its path parameters, and the handshake
 * still to complete.
 */
export interface SocketOperationInput {
  request: WireRequest;
  params: Record<string, string>;
  /** The node that forwarded this upgrade (its signature checked), as OperationInput.forwardedBy. */
  forwardedBy: string | undefined;
  /**
   * Completes the WebSocket handshake and gives the open socket. Until it is called, an error the
   * handler throws is answered as an ordinary AWS error response (JSON, status and code); after
   * it, the handler closes the socket itself with a close code and reason. `protocol` picks the
   * subprotocol (one the client offered) instead of SocketOperation.protocols.
   */
  accept(options?: { protocol?: string | undefined }): Promise<WebSocket>;
  /** Aborts when Berth shuts down: the handler closes its socket (1001, going away). */
  shutdown: AbortSignal;
  /** The upgrade as it arrived, for a node that passes it on to the session's owner unopened. */
  raw: { incoming: IncomingMessage; socket: Duplex; head: Buffer };
}

/** An operation reached by `GET` with `Upgrade: websocket`. */
export interface SocketOperation {
  name: string;
  /** Path segments, as Operation.path. */
  path: readonly string[];
  /**
   * The subprotocols (Sec-WebSocket-Protocol) it speaks, preferred first: the first the client
   * offers is chosen; a client offering none gets none.
   */
  protocols?: readonly string[];
  /** The largest message the client may send; a larger one closes the socket (1009). */
  maxMessageBytes: number;
  /** Set on an operation on one session: in a cluster it runs on the node that owns the session. */
  session?: SessionScope;
  /** Resolves when the conversation is over (the socket closed). */
  handle(input: SocketOperationInput): Promise<void>;
}
