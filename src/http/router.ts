/**
 * Routes: the API version check, probes, and every `/v2/<name>/...` endpoint. The distribution endpoints are
 * parsed once (distribution-request.ts), resolved to an upstream, handed to their protocol handler, and the
 * handler's answer is written here.
 */
import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { Readable } from "node:stream";
import Router from "./koa-router.ts";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import { parsePageRequest } from "../oci/pagination.ts";
import { isValidName } from "../oci/reference.ts";
import type { BlobHandler } from "../registry/blob-handler.ts";
import type { CatalogHandler } from "../registry/catalog-handler.ts";
import type { ManifestHandler } from "../registry/manifest-handler.ts";
import type { RegistryResponse } from "../registry/response.ts";
import type { Metrics } from "../observability/metrics.ts";
import { ANONYMOUS, CHALLENGE, type AccessPolicy, type Identity } from "../registry/access-policy.ts";
import { clientKey } from "./client-address.ts";
import type { ClientAuth } from "./client-auth.ts";
import type { TagsHandler } from "../registry/tags-handler.ts";
import type { ReferrersHandler } from "../registry/referrers-handler.ts";
import type { UpstreamResolver } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { listQuery, NO_QUERY, parseDistributionRequest } from "./distribution-request.ts";
import type { RequestState } from "./request-context.ts";
import { errorMessage } from "../caught-errors.ts";

export interface RouterDeps {
  /** Client authentication, when `access` is configured (otherwise every client is anonymous). */
  clientAuth: ClientAuth | undefined;
  policy: AccessPolicy;
  /** Serves GET /metrics on the registry port (false when metrics have their own listener). */
  metrics: Metrics | undefined;
  /** Extra readiness checks (e.g. the metadata store); each returns a problem, or undefined when fine. */
  readiness: Array<() => { ready: boolean; reason: string } | undefined>;
  resolver: UpstreamResolver<UpstreamClient>;
  manifests: ManifestHandler;
  blobs: BlobHandler;
  tags: TagsHandler;
  catalog: CatalogHandler;
  referrers: ReferrersHandler;
  storagePath: string;
}

export function createRouter(deps: RouterDeps): Koa.Middleware<RequestState> {
  const router = new Router<RequestState>();

  router.all("/v2/", async (ctx) => {
    if (ctx.method !== "GET" && ctx.method !== "HEAD") {
      throw new RegistryError("UNSUPPORTED", `${ctx.method} is not supported`, { headers: { Allow: "GET, HEAD" } });
    }
    // The ping is where clients learn they must log in (docker login checks it).
    const who = await identify(ctx);
    if (who.kind === "anonymous" && !deps.policy.anonymousAllowedAnywhere) {
      throw new RegistryError("UNAUTHORIZED", "authentication required", {
        headers: { "WWW-Authenticate": CHALLENGE },
      });
    }
    ctx.status = 200;
    ctx.type = "application/json";
    ctx.body = "{}";
  });
  // Not a repository path: `_catalog` is no valid name, so parseDistributionRequest leaves it to this router.
  router.all("/v2/_catalog", async (ctx) => {
    if (ctx.method !== "GET")
      throw new RegistryError("UNSUPPORTED", "_catalog answers GET only", { headers: { Allow: "GET" } });
    const page = parsePageRequest(
      listQuery(new URLSearchParams(ctx.querystring)),
      isValidName,
      (last) =>
        new RegistryError("NAME_INVALID", `last must be a repository name: ${JSON.stringify(last.slice(0, 300))}`),
    );
    const who = await identify(ctx);
    if (who.kind === "anonymous" && !deps.policy.anonymousAllowedAnywhere) {
      throw new RegistryError("UNAUTHORIZED", "authentication required", {
        headers: { "WWW-Authenticate": CHALLENGE },
      });
    }
    send(ctx, await deps.catalog.handle({ who, page }));
  });
  router.get("/healthz", (ctx) => {
    probeBody(ctx, { status: "ok" });
  });
  router.get("/readyz", async (ctx) => {
    const problems: Array<{ ready: boolean; reason: string }> = [];
    try {
      await access(deps.storagePath, constants.W_OK);
    } catch (err) {
      problems.push({ ready: false, reason: `cache directory not writable: ${errorMessage(err)}` });
    }
    for (const check of deps.readiness) {
      const problem = check();
      if (problem) problems.push(problem);
    }
    const ready = problems.every((p) => p.ready);
    ctx.status = ready ? 200 : 503;
    // Degraded-but-serving (e.g. Redis down, answering from the embedded store) stays ready, with the reason.
    probeBody(ctx, {
      status: !ready ? "unready" : problems.length > 0 ? "degraded" : "ready",
      reasons: problems.map((p) => p.reason),
    });
  });
  if (deps.metrics) {
    const metrics = deps.metrics;
    router.get("/metrics", async (ctx) => {
      ctx.type = metrics.registry.contentType;
      ctx.body = await metrics.render();
    });
  }

  const routes = router.routes() as unknown as Koa.Middleware<RequestState>;

  async function identify(ctx: Koa.ParameterizedContext<RequestState>): Promise<Identity> {
    if (!deps.clientAuth) return ANONYMOUS;
    const who = await deps.clientAuth.identify(
      ctx.get("authorization") || undefined,
      clientKey(ctx.req.socket.remoteAddress),
    );
    if (who.kind === "user") ctx.state.user = who.name;
    return who;
  }
  return async (ctx, next) => {
    const request = parseDistributionRequest({
      method: ctx.method,
      path: ctx.path,
      query: ctx.querystring === "" ? NO_QUERY : new URLSearchParams(ctx.querystring),
      headers: ctx.headers,
    });
    if (request === undefined) {
      await routes(ctx, next);
      if (ctx.body === undefined && ctx.status === 404)
        throw new RegistryError("UNSUPPORTED", `no such endpoint: ${ctx.path.slice(0, 200)}`, { status: 404 });
      return;
    }
    ctx.state.kind = request.kind;
    const who = await identify(ctx);
    const target = deps.resolver.resolve(request.name, request.ns);
    ctx.state.upstream = target.upstream.name;
    deps.policy.check(who, target.upstream.name, target.repo);
    let response: RegistryResponse;
    switch (request.kind) {
      case "manifest":
        response = await deps.manifests.handle({
          method: request.method,
          target,
          reference: request.reference,
          accept: request.accept,
        });
        break;
      case "blob":
        response = await deps.blobs.handle({
          method: request.method,
          target,
          digest: request.digest,
          range: request.range,
          host: ctx.get("host") || undefined,
          authorization: ctx.get("authorization") !== "",
        });
        break;
      case "tags":
        response = await deps.tags.handle({
          target,
          clientName: request.name,
          page: request.page,
          ns: request.ns,
        });
        break;
      case "referrers":
        response = await deps.referrers.handle({ target, digest: request.digest, artifactType: request.artifactType });
        break;
    }
    send(ctx, response);
  };
}

function send(ctx: Koa.ParameterizedContext<RequestState>, response: RegistryResponse): void {
  ctx.state.cache = response.cache;
  ctx.status = response.status;
  ctx.set(response.headers);
  const body = response.body;
  if (ctx.method === "HEAD" || body === undefined) {
    if (body instanceof Readable) body.destroy();
    return;
  }
  if (body instanceof Readable) {
    // Koa cannot render an error once bytes are flowing; a broken source must break the client's transfer.
    body.once("error", () => ctx.res.destroy());
  }
  ctx.body = body;
}

/**
 * A probe's JSON answer, serialized here rather than by Koa: Koa tells an object body from a fetch Response by
 * `instanceof Response`, and the first look at that global loads Node's bundled undici (~50 ms of CPU). The
 * first readiness probe would pay that before it could say "ready" (test/integration/lazy-loading.test.ts).
 */
function probeBody(ctx: Koa.Context, value: unknown): void {
  ctx.type = "json";
  ctx.body = JSON.stringify(value);
}
