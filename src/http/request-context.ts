/**
 * Per-request context: an id (echoed as `X-Request-Id`), a child logger carrying it, and one access line per
 * request when the response has finished or the client went away: with the client's address (and the one a
 * trusted proxy forwarded for), its user agent, and at debug level for the probes and scrapes, which would
 * otherwise fill the log.
 */
import { randomUUID } from "node:crypto";
import type Koa from "koa";
import type { Logger } from "pino";
import { FROM_CACHE, statusClass, type CacheResult, type Metrics, type RequestKind } from "../observability/metrics.ts";
import { plainAddress, TrustedProxies } from "./client-address.ts";

export interface RequestState {
  log: Logger;
  requestId: string;
  /** Set by the router: which endpoint, which upstream served it and how (hit, miss, coalesced, ...). */
  kind?: RequestKind;
  /** The logged-in user's name (never their credentials), when there is one. */
  user?: string;
  upstream?: string;
  cache?: CacheResult;
}

/** Asked every few seconds by monitoring: logged at debug, not info. */
const QUIET_PATHS: ReadonlySet<string> = new Set(["/metrics", "/healthz", "/readyz"]);
/** The most of a User-Agent header logged. */
const MAX_USER_AGENT = 256;

const REQUEST_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

export function requestContext(
  log: Logger,
  metrics: Metrics,
  trustedProxies: TrustedProxies = new TrustedProxies([]),
): Koa.Middleware<RequestState> {
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
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const bytes = sentBytes(ctx);
      const kind = ctx.state.kind ?? "other";
      const result = ctx.state.cache ?? "none";
      const upstream = ctx.state.upstream ?? "none";
      metrics.requests.inc({ upstream, kind, result, status_class: statusClass(status) });
      metrics.requestDuration.observe({ kind, result }, seconds);
      // Content bytes only: a ping, a catalog, a probe or an error came from neither the cache nor an upstream.
      if (bytes > 0 && status < 300 && result !== "none")
        metrics.sentBytes.inc({ upstream, kind, source: FROM_CACHE.has(result) ? "cache" : "upstream" }, bytes);
      const peer = ctx.req.socket.remoteAddress;
      const line = {
        method: ctx.method,
        path: ctx.path,
        ns: ctx.querystring === "" ? undefined : ctx.query.ns,
        status,
        bytes,
        completed: ctx.res.writableFinished,
        ms: Math.round(seconds * 1e6) / 1e3,
        upstream: ctx.state.upstream,
        cache: ctx.state.cache,
        user: ctx.state.user,
        client: plainAddress(peer),
        forwardedFor: trustedProxies.forwardedClient(peer, ctx.get("x-forwarded-for") || undefined),
        userAgent: ctx.get("user-agent").slice(0, MAX_USER_AGENT) || undefined,
      };
      if (QUIET_PATHS.has(ctx.path)) ctx.state.log.debug(line, "request");
      else if (status >= 500) ctx.state.log.error(line, "request");
      else ctx.state.log.info(line, "request");
    });
    await next();
  };
}

/**
 * Body bytes that reached the client: the whole length when the response finished, otherwise what the body
 * stream handed over before the client left (fs streams and fill readers both count `bytesRead`).
 */
function sentBytes(ctx: Koa.ParameterizedContext<RequestState>): number {
  if (ctx.method === "HEAD") return 0;
  if (ctx.res.writableFinished) return ctx.response.length ?? 0;
  const body = ctx.body as { bytesRead?: unknown } | null | undefined;
  return typeof body?.bytesRead === "number" ? body.bytesRead : 0;
}
