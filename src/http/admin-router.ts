/**
 * The admin API, `/admin/v1/...`, JSON in and out, behind a bearer token compared in constant time. Absent
 * from the router entirely when no token is configured; closed to everyone (401) while the token is disabled
 * (`admin.tokenFile` holds no usable token, see secret-file.ts). Documented in docs/admin-api.md.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import { Readable } from "node:stream";
import Router, { type RouterContext } from "./koa-router.ts";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { AdminHandler, ExportBundle } from "../registry/admin-handler.ts";
import { readCappedBody } from "../upstream/response-body.ts";
import type { RequestState } from "./request-context.ts";

const MAX_BODY = 64 * 1024;
/** An export request may carry the destination's inventory (about 100 bytes per object it holds). */
const MAX_EXPORT_BODY = 64 * 1024 * 1024;
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
  route("GET", "/warmup", () => handler.warmupSets());
  route("GET", "/warmup/:name", (ctx) => handler.warmupSet(segment(ctx)));
  route("POST", "/warmup/:name", (ctx) => handler.runWarmup(segment(ctx)), 202);
  route("GET", "/totals", () => handler.totals());
  route("GET", "/repositories", (ctx) => handler.repositories(query(ctx)));
  route("GET", "/tags", (ctx) => handler.tags(query(ctx)));
  route("GET", "/blobs", (ctx) => handler.blobs(query(ctx)));
  route("DELETE", "/blobs/:digest", (ctx) => handler.deleteBlob(segment(ctx)));
  route("POST", "/import", (ctx) => handler.import(ctx.req as AsyncIterable<Buffer>, query(ctx)));
  route("GET", "/inventory", () => handler.inventory());
  route("GET", "/pins", () => handler.pins());
  route("POST", "/pin", async (ctx) => handler.pin(await readJson(ctx)));
  route("POST", "/unpin", async (ctx) => handler.unpin(await readJson(ctx)));
  // A bundle, streamed (docs/admin-api.md): GET for references in the query, POST for a JSON body (a delta's inventory).
  router.register("/export", ["GET", "POST"], async (ctx, next) => {
    if (ctx.method !== "GET" && ctx.method !== "POST") {
      await next();
      return;
    }
    const request =
      ctx.method === "POST"
        ? handler.exportBody(await readJson(ctx, MAX_EXPORT_BODY))
        : handler.exportQuery(query(ctx));
    sendBundle(ctx, await handler.exportBundle(request));
  });
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

/**
 * Streams a bundle with its exact length. Once bytes flow no error can be answered: a failure (a blob that cannot
 * be fetched, content that does not match its digest) destroys the response, so the client sees a broken
 * transfer, short of its Content-Length, and never a tar that looks complete.
 */
function sendBundle(ctx: AdminContext, bundle: ExportBundle): void {
  // Bytes, not objects: at most about 1 MiB waits in the stream for a slow client (padding may be empty: skipped).
  const body = Readable.from(nonEmpty(bundle.chunks), { objectMode: false, highWaterMark: 1024 * 1024 });
  body.once("error", () => ctx.res.destroy());
  ctx.status = 200;
  ctx.type = "application/x-tar";
  ctx.set("Content-Disposition", 'attachment; filename="bundle.tar"');
  ctx.body = body;
  ctx.length = bundle.size;
}

async function* nonEmpty(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of chunks) if (chunk.length > 0) yield chunk;
}

async function readJson(ctx: Koa.Context, max = MAX_BODY): Promise<unknown> {
  const bytes = await readCappedBody(
    ctx.req,
    max,
    () => new RegistryError("SIZE_INVALID", `request body over ${max} bytes`, { status: 413 }),
  );
  if (bytes.length === 0) return {};
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch {
    throw new RegistryError("UNSUPPORTED", "request body must be JSON", { status: 400 });
  }
}
