/**
 * The admin API, `/admin/v1/...`, JSON in and out, behind a bearer token compared in constant time. Absent
 * from the router entirely when no token is configured. Documented in docs/admin-api.md.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { AdminHandler } from "../registry/admin-handler.ts";
import type { RequestState } from "./request-context.ts";

const MAX_BODY = 64 * 1024;

export function adminRouter(handler: AdminHandler, token: string): Koa.Middleware<RequestState> {
  // Hash both sides so the comparison is constant-time whatever the lengths.
  const expected = createHash("sha256").update(token).digest();
  const routes: Record<string, (body: unknown) => Promise<unknown>> = {
    "POST /admin/v1/purge": (body) => handler.purge(body),
    "POST /admin/v1/refresh": (body) => handler.refresh(body),
  };
  return async (ctx, next) => {
    if (!ctx.path.startsWith("/admin/")) {
      await next();
      return;
    }
    const presented = /^Bearer (.+)$/.exec(ctx.get("authorization"))?.[1] ?? "";
    if (!timingSafeEqual(createHash("sha256").update(presented).digest(), expected)) {
      throw new RegistryError("UNAUTHORIZED", "admin API requires the configured admin token", { headers: { "WWW-Authenticate": 'Bearer realm="registry-mirror-admin"' } });
    }
    const route = routes[`${ctx.method} ${ctx.path}`];
    if (!route) throw new RegistryError("UNSUPPORTED", `no admin endpoint ${ctx.method} ${ctx.path.slice(0, 200)}`, { status: 404 });
    ctx.body = await route(await readJson(ctx));
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
