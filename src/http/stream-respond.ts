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
import { Readable, finished } from "node:stream";
import type { ServerResponse } from "node:http";
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
    send(body, ctx.res, (err) => {
      if (ctx.app.listenerCount("error") > 0) ctx.onerror(err);
    });
  };
}

/**
 * What Koa's respond does with a stream body (`stream.pipeline(body, res)`): pipes it, destroys the response
 * when the body fails and the body when the response closes before it finished (the client left), and reports
 * the first error once. Not `pipeline` itself: it makes an AbortController for every call and aborts it when
 * the pipe is done, and that abort builds a DOMException with a stack trace, per response: ~3 % of the main
 * thread's time serving warm 1 MiB blobs (bench S5, --cpu-prof), for a signal nobody listens to here. (It also
 * destroyed the response with the body's error, which Koa's on-finished then reported a second time.)
 */
function send(body: Readable, res: ServerResponse, failed: (err: Error) => void): void {
  let reported = false;
  const fail = (err: Error) => {
    if (reported) return;
    reported = true;
    failed(err);
  };
  finished(res, (err) => {
    if (err === null || err === undefined) return;
    body.destroy();
    fail(err);
  });
  finished(body, (err) => {
    if (err === null || err === undefined) return;
    res.destroy();
    fail(err);
  });
  body.pipe(res);
}
