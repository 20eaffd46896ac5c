import { WebSocket } from "ws";

/**
 * Pings `socket` every `intervalMs` (every client answers a ping by itself) and ends it when it
 * answered none of an interval's pings: a client whose network died silently would otherwise
 * hold its session active until the session's max lifetime. A socket Berth has paused (its
 * other side is behind) reads no pongs, so no verdict is taken while it is paused. Returns what
 * stops the watch; it also stops when the socket closes.
 */
export function watchLiveness(socket: WebSocket, intervalMs: number): () => void {
  let answered = true;
  const onPong = (): void => {
    answered = true;
  };
  socket.on("pong", onPong);
  const timer = setInterval(() => {
    if (socket.readyState !== WebSocket.OPEN) return;
    if (!answered && !socket.isPaused) {
      socket.terminate();
      return;
    }
    answered = socket.isPaused; // while paused, the next interval judges afresh
    socket.ping();
  }, intervalMs);
  timer.unref();
  const stop = (): void => {
    clearInterval(timer);
    socket.off("pong", onPong);
  };
  socket.once("close", stop);
  return stop;
}
