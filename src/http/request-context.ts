/**
 * Per-request context: an id (echoed as `X-Request-Id`), a child logger carrying it, and one access line per
 * request when the response has finished or the client went away.
 */
import { randomUUID } from "node:crypto";
import type Koa from "koa";
import type { Logger } from "pino";

export interface RequestState {
  log: Logger;
  requestId: string;
  /** Set by the handler: which upstream served the request and how (hit, miss, coalesced, ...). */
  upstream?: string;
  cache?: string;
}

const REQUEST_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

export function requestContext(log: Logger): Koa.Middleware<RequestState> {
  return async (ctx, next) => {
    const started = process.hrtime.bigint();
    const incoming = ctx.get("x-request-id");
    const requestId = REQUEST_ID_RE.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    ctx.state.log = log.child({ reqId: requestId });
    ctx.set("X-Request-Id", requestId);
    ctx.set("Docker-Distribution-API-Version", "registry/2.0");
    ctx.res.once("close", () => {
      const status = ctx.status;
      const line = {
        method: ctx.method,
        path: ctx.path,
        ns: ctx.query.ns,
        status,
        length: ctx.response.length,
        completed: ctx.res.writableFinished,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
        upstream: ctx.state.upstream,
        cache: ctx.state.cache,
      };
      if (status >= 500) ctx.state.log.error(line, "request");
      else if (status >= 400) ctx.state.log.info(line, "request");
      else ctx.state.log.info(line, "request");
    });
    await next();
  };
}
