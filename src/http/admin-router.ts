/**
 * The admin API, `/admin/v1/...`, JSON in and out, behind a bearer token compared in constant time. Absent
 * from the router entirely when no token is configured; closed to everyone (401) while the token is disabled
 * (`admin.tokenFile` holds no usable token, see secret-file.ts). Documented in docs/admin-api.md.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import Router, { type RouterContext } from "@koa/router";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { AdminHandler } from "../registry/admin-handler.ts";
import { readCappedBody } from "../upstream/response-body.ts";
import type { RequestState } from "./request-context.ts";

const MAX_BODY = 64 * 1024;
/** Job ids as the prefetcher makes them (UUIDs), checked on the path as the client sent it. */
const JOB_ID = /^[A-Za-z0-9-]{1,64}$/;

type AdminContext = RouterContext<RequestState>;

/** `tokenDigest` is the sha256 of the admin token's bytes, or undefined while the token is disabled. */
export function adminRouter(
  handler: AdminHandler,
  tokenDigest: () => Buffer | undefined,
): Koa.Middleware<RequestState> {
  // Paths match exactly as written: case matters and a trailing slash makes another path.
  const router = new Router<RequestState>({ prefix: "/admin/v1", strict: true, sensitive: true });
  const route = (
    method: "GET" | "POST" | "DELETE",
    path: string,
    run: (ctx: AdminContext) => unknown,
    status = 200,
  ) => {
    router.register(path, [method], async (ctx, next) => {
      // @koa/router answers HEAD with a GET route; the admin API has no HEAD.
      if (ctx.method !== method) {
        await next();
        return;
      }
      const result = await run(ctx);
      ctx.status = status;
      ctx.body = result;
    });
  };
  const query = (ctx: AdminContext) => new URLSearchParams(ctx.querystring);
  // Path parameters as the client wrote them (the router's params are percent-decoded): the handler's checks
  // see what was sent.
  const segment = (ctx: AdminContext) => ctx.captures![0]!;

  route("POST", "/purge", async (ctx) => handler.purge(await readJson(ctx)));
  route("POST", "/refresh", async (ctx) => handler.refresh(await readJson(ctx)));
  route("POST", "/prefetch", async (ctx) => handler.prefetch(await readJson(ctx)), 202);
  route("GET", "/jobs/:id", (ctx) => {
    if (!JOB_ID.test(segment(ctx))) throw noEndpoint(ctx);
    return handler.job(segment(ctx));
  });
  route("GET", "/totals", () => handler.totals());
  route("GET", "/repositories", (ctx) => handler.repositories(query(ctx)));
  route("GET", "/tags", (ctx) => handler.tags(query(ctx)));
  route("GET", "/blobs", (ctx) => handler.blobs(query(ctx)));
  route("DELETE", "/blobs/:digest", (ctx) => handler.deleteBlob(segment(ctx)));
  route("POST", "/import", (ctx) => handler.import(ctx.req as AsyncIterable<Buffer>, query(ctx)));
  route("GET", "/inventory", () => handler.inventory());
  const routes = router.routes() as unknown as Koa.Middleware<RequestState>;

  return async (ctx, next) => {
    if (!ctx.path.startsWith("/admin/")) {
      await next();
      return;
    }
    checkToken(ctx, tokenDigest());
    await routes(ctx, async () => {
      throw noEndpoint(ctx);
    });
  };
}

function noEndpoint(ctx: Koa.Context): RegistryError {
  return new RegistryError("UNSUPPORTED", `no admin endpoint ${ctx.method} ${ctx.path.slice(0, 200)}`, { status: 404 });
}

/** Every /admin/ path, known or not, needs the token first. */
function checkToken(ctx: Koa.Context, expected: Buffer | undefined): void {
  const presented = /^Bearer (.+)$/.exec(ctx.get("authorization"))?.[1] ?? "";
  // Both sides hashed, so the comparison is constant-time whatever the lengths; the header's bytes as sent (Node
  // hands them over as latin1), to compare with the token's UTF-8 bytes.
  if (
    expected === undefined ||
    !timingSafeEqual(createHash("sha256").update(Buffer.from(presented, "latin1")).digest(), expected)
  ) {
    throw new RegistryError("UNAUTHORIZED", "admin API requires the configured admin token", {
      headers: { "WWW-Authenticate": 'Bearer realm="registry-mirror-admin"' },
    });
  }
}

async function readJson(ctx: Koa.Context): Promise<unknown> {
  const bytes = await readCappedBody(
    ctx.req,
    MAX_BODY,
    () => new RegistryError("SIZE_INVALID", `request body over ${MAX_BODY} bytes`, { status: 413 }),
  );
  if (bytes.length === 0) return {};
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new RegistryError("UNSUPPORTED", "request body must be JSON", { status: 400 });
  }
}
