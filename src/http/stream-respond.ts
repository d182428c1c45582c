/**
 * Sends a Node stream body itself, as Koa would, without Koa's `respond`. Koa tests a body against the globals
 * `Blob`, `ReadableStream` and `Response` before it gets to "a Node stream", and the first look at `Response`
 * loads Node's bundled undici: ~55-80 ms of CPU here, paid by the first blob response after start-up before its
 * headers left. Traced in the bench's S1 (a cold 64 MiB blob, a fresh mirror per repetition, load ~6): from the
 * blob handler's answer to the body being piped 55-75 ms, under 1 ms with `Response` already loaded; TTFB
 * 113-147 ms against 31-51 ms.
 *
 * The outermost middleware: it acts once every other one has finished with the response (the drain's
 * `Connection: close` included), where Koa's `respond` would. Anything that is not a Node stream, a HEAD, an
 * answer without a body, or a response already being sent is left to Koa.
 */
import { Readable, pipeline } from "node:stream";
import type Koa from "koa";

/** Statuses whose responses have no body (Koa's `statuses.empty`). */
const EMPTY_STATUSES = new Set([204, 205, 304]);

export function streamRespond<S>(): Koa.Middleware<S> {
  return async (ctx, next) => {
    await next();
    const body: unknown = ctx.body;
    if (!(body instanceof Readable) || ctx.respond === false || ctx.method === "HEAD") return;
    if (!ctx.writable || EMPTY_STATUSES.has(ctx.status)) return;
    ctx.respond = false;
    // What Koa's respond does with a stream body.
    pipeline(body, ctx.res, (err) => {
      if (err && ctx.app.listenerCount("error") > 0) ctx.onerror(err);
    });
  };
}
