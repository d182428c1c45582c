/**
 * The admin API, `/admin/v1/...`, JSON in and out, behind a bearer token compared in constant time. Absent
 * from the router entirely when no token is configured; closed to everyone (401) while the token is disabled
 * (`admin.tokenFile` holds no usable token, see secret-file.ts). Documented in docs/admin-api.md.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { AdminHandler } from "../registry/admin-handler.ts";
import type { RequestState } from "./request-context.ts";

const MAX_BODY = 64 * 1024;

interface Route {
  method: string;
  path: RegExp;
  /** `body` parses a JSON body (64 KiB at most); `stream` is the raw body, for the bundle import. */
  run(input: { body: () => Promise<unknown>; stream: () => AsyncIterable<Buffer>; query: URLSearchParams; params: string[] }): unknown;
  status?: number;
}

/** `tokenDigest` is the sha256 of the admin token's bytes, or undefined while the token is disabled. */
export function adminRouter(handler: AdminHandler, tokenDigest: () => Buffer | undefined): Koa.Middleware<RequestState> {
  const routes: Route[] = [
    { method: "POST", path: /^\/admin\/v1\/purge$/, run: async ({ body }) => handler.purge(await body()) },
    { method: "POST", path: /^\/admin\/v1\/refresh$/, run: async ({ body }) => handler.refresh(await body()) },
    { method: "POST", path: /^\/admin\/v1\/prefetch$/, run: async ({ body }) => handler.prefetch(await body()), status: 202 },
    { method: "GET", path: /^\/admin\/v1\/jobs\/([A-Za-z0-9-]{1,64})$/, run: ({ params }) => handler.job(params[0]!) },
    { method: "GET", path: /^\/admin\/v1\/totals$/, run: () => handler.totals() },
    { method: "GET", path: /^\/admin\/v1\/repositories$/, run: ({ query }) => handler.repositories(query) },
    { method: "GET", path: /^\/admin\/v1\/tags$/, run: ({ query }) => handler.tags(query) },
    { method: "GET", path: /^\/admin\/v1\/blobs$/, run: ({ query }) => handler.blobs(query) },
    { method: "DELETE", path: /^\/admin\/v1\/blobs\/([^/]+)$/, run: ({ params }) => handler.deleteBlob(params[0]!) },
    { method: "POST", path: /^\/admin\/v1\/import$/, run: ({ stream, query }) => handler.import(stream(), query) },
    { method: "GET", path: /^\/admin\/v1\/inventory$/, run: () => handler.inventory() },
  ];
  return async (ctx, next) => {
    if (!ctx.path.startsWith("/admin/")) {
      await next();
      return;
    }
    const presented = /^Bearer (.+)$/.exec(ctx.get("authorization"))?.[1] ?? "";
    // Both sides hashed, so the comparison is constant-time whatever the lengths; the header's bytes as sent (Node
    // hands them over as latin1), to compare with the token's UTF-8 bytes.
    const expected = tokenDigest();
    if (expected === undefined || !timingSafeEqual(createHash("sha256").update(Buffer.from(presented, "latin1")).digest(), expected)) {
      throw new RegistryError("UNAUTHORIZED", "admin API requires the configured admin token", { headers: { "WWW-Authenticate": 'Bearer realm="registry-mirror-admin"' } });
    }
    for (const route of routes) {
      const m = route.path.exec(ctx.path);
      if (!m || route.method !== ctx.method) continue;
      const result = await route.run({ body: () => readJson(ctx), stream: () => ctx.req as AsyncIterable<Buffer>, query: new URLSearchParams(ctx.querystring), params: m.slice(1) });
      ctx.status = route.status ?? 200;
      ctx.body = result;
      return;
    }
    throw new RegistryError("UNSUPPORTED", `no admin endpoint ${ctx.method} ${ctx.path.slice(0, 200)}`, { status: 404 });
  };
}

async function readJson(ctx: Koa.Context): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of ctx.req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw new RegistryError("SIZE_INVALID", `request body over ${MAX_BODY} bytes`, { status: 413 });
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    throw new RegistryError("UNSUPPORTED", "request body must be JSON", { status: 400 });
  }
}
