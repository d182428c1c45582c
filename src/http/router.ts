/**
 * Routes: the API version check, probes, and every `/v2/<name>/...` endpoint. The distribution endpoints are
 * parsed once (distribution-request.ts), resolved to an upstream, handed to their protocol handler, and the
 * handler's answer is written here.
 */
import { constants } from "node:fs";
import { access } from "node:fs/promises";
import { Readable } from "node:stream";
import Router from "@koa/router";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { BlobHandler } from "../registry/blob-handler.ts";
import type { ManifestHandler } from "../registry/manifest-handler.ts";
import type { RegistryResponse } from "../registry/response.ts";
import type { TagsHandler } from "../registry/tags-handler.ts";
import type { UpstreamResolver } from "../registry/upstream-resolver.ts";
import { parseDistributionRequest } from "./distribution-request.ts";
import type { RequestState } from "./request-context.ts";

export interface RouterDeps {
  resolver: UpstreamResolver;
  manifests: ManifestHandler;
  blobs: BlobHandler;
  tags: TagsHandler;
  storagePath: string;
}

export function createRouter(deps: RouterDeps): Koa.Middleware<RequestState> {
  const router = new Router<RequestState>();

  router.all("/v2/", (ctx) => {
    if (ctx.method !== "GET" && ctx.method !== "HEAD") {
      throw new RegistryError("UNSUPPORTED", `${ctx.method} is not supported`, { headers: { Allow: "GET, HEAD" } });
    }
    ctx.status = 200;
    ctx.type = "application/json";
    ctx.body = "{}";
  });
  router.get("/healthz", (ctx) => {
    ctx.body = { status: "ok" };
  });
  router.get("/readyz", async (ctx) => {
    try {
      await access(deps.storagePath, constants.W_OK);
      ctx.body = { status: "ready" };
    } catch (err) {
      ctx.status = 503;
      ctx.body = { status: "unready", reason: `cache directory not writable: ${(err as Error).message}` };
    }
  });

  const routes = router.routes() as unknown as Koa.Middleware<RequestState>;
  return async (ctx, next) => {
    const request = parseDistributionRequest({
      method: ctx.method,
      path: ctx.path,
      query: new URLSearchParams(ctx.querystring),
      headers: ctx.headers,
    });
    if (request === undefined) {
      await routes(ctx, next);
      if (ctx.body === undefined && ctx.status === 404) throw new RegistryError("UNSUPPORTED", `no such endpoint: ${ctx.path.slice(0, 200)}`, { status: 404 });
      return;
    }
    const target = deps.resolver.resolve(request.name, request.ns);
    ctx.state.upstream = target.upstream.name;
    let response: RegistryResponse;
    switch (request.kind) {
      case "manifest":
        response = await deps.manifests.handle({ method: request.method, target, reference: request.reference, accept: request.accept });
        break;
      case "blob":
        response = await deps.blobs.handle({ method: request.method, target, digest: request.digest, range: request.range });
        break;
      case "tags":
        response = await deps.tags.handle({ target, clientName: request.name, n: request.n, last: request.last, ns: request.ns });
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
