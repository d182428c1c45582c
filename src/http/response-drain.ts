/**
 * Client responses in progress, for a graceful shutdown: each request counts from its arrival until its response
 * has closed (sent to the end, or cut). Once the shutdown has begun, `settled` waits, bounded, for the count to
 * reach zero, and every answer from then on carries `Connection: close`.
 *
 * Why those answers are served rather than refused: once the listener is closed, a request can only arrive on a
 * connection that was busy when the shutdown began (idle ones are closed at once), that is from a client in the
 * middle of a pull. Answering it lets that pull go on; `Connection: close` ends the connection after the answer,
 * so the client's next request opens a new one, which a mirror that is still accepting takes.
 */
import type Koa from "koa";
import { timerDelay } from "../config/timer-delay.ts";

export class ResponseDrain {
  private open = 0;
  private closing = false;
  private waiters: Array<() => void> = [];

  /** Client responses in progress now. */
  get inFlight(): number {
    return this.open;
  }

  /** Whether the shutdown has begun (readiness fails from then on). */
  get shuttingDown(): boolean {
    return this.closing;
  }

  /** The outermost middleware: counts the request, and marks an answer given during the shutdown. */
  middleware<S>(): Koa.Middleware<S> {
    return async (ctx, next) => {
      this.open++;
      ctx.res.once("close", () => this.closed());
      try {
        await next();
      } finally {
        // Set last, after the error middleware (which drops a failed answer's headers), before Koa sends them.
        if (this.closing && !ctx.headerSent) ctx.set("Connection", "close");
      }
    };
  }

  /** The shutdown begins. */
  begin(): void {
    this.closing = true;
  }

  /** Waits until no response is in progress, or `timeoutMs` has passed; resolves with those still in progress. */
  async settled(timeoutMs: number): Promise<number> {
    if (this.open > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => this.waiters.push(resolve)),
        new Promise<void>((resolve) => (timer = setTimeout(resolve, timerDelay(timeoutMs)))),
      ]);
      clearTimeout(timer);
    }
    return this.open;
  }

  private closed(): void {
    this.open--;
    if (this.open > 0) return;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}
