import { randomUUID } from "node:crypto";
import type { IncomingMessage, RequestListener, Server, ServerResponse } from "node:http";
import { shuttingDown } from "../core/sessions.ts";
import { sendError } from "./http.ts";

/**
 * Admission of requests, so that a shutdown can stop taking new ones and wait for those in
 * flight. Once draining, a request that still arrives (on a connection opened before) is
 * answered ThrottlingException, which the SDKs retry, and its connection closes; every answer
 * in flight closes its connection when it is done.
 */
export class RequestDrain {
  private readonly inFlight = new Set<ServerResponse>();
  private draining = false;
  private readonly emptied = new Set<() => void>();

  /** The request listener to give the HTTP server: `handler`, behind the drain's door. */
  admit(handler: RequestListener): RequestListener {
    return (incoming: IncomingMessage, outgoing: ServerResponse) => {
      if (this.draining) {
        refuse(outgoing);
        return;
      }
      this.inFlight.add(outgoing);
      outgoing.once("close", () => {
        this.inFlight.delete(outgoing);
        if (this.inFlight.size === 0) for (const wake of this.emptied) wake();
      });
      handler(incoming, outgoing);
    };
  }

  /** Whether a shutdown has begun: new requests (and WebSocket upgrades) are refused. */
  get isDraining(): boolean {
    return this.draining;
  }

  get requestsInFlight(): number {
    return this.inFlight.size;
  }

  /**
   * Stops taking requests (the server stops listening; new connections are refused) and
   * resolves once none is in flight, or when `until` aborts, whichever comes first.
   */
  async drain(server: Server, until: AbortSignal): Promise<void> {
    if (!this.draining) {
      this.draining = true;
      server.close();
      // Connections between requests are closed now; the others once their answer is out.
      server.closeIdleConnections();
      for (const outgoing of this.inFlight) closeWhenAnswered(outgoing);
    }
    if (this.inFlight.size === 0 || until.aborted) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.emptied.delete(done);
        until.removeEventListener("abort", done);
        resolve();
      };
      this.emptied.add(done);
      until.addEventListener("abort", done, { once: true });
    });
  }
}

/** After its answer, the connection closes: no further request will be taken on it. */
function closeWhenAnswered(outgoing: ServerResponse): void {
  if (!outgoing.headersSent) {
    outgoing.shouldKeepAlive = false;
    return;
  }
  outgoing.once("finish", () => {
    outgoing.socket?.destroySoon();
  });
}

function refuse(outgoing: ServerResponse): void {
  outgoing.shouldKeepAlive = false;
  sendError(outgoing, shuttingDown(), randomUUID());
}
