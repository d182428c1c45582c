/**
 * The web console at `/console/` (docs/console.md): sign-in with the admin token, pages, their assets, and a
 * proxy to the admin API. The console is a client of the admin API, not a second implementation: every list and
 * every action the pages show goes to `/admin/v1/...` through `/console/api/...`, which adds the session's admin
 * token and passes the API's answer, errors included, through unchanged.
 *
 * Access: a session cookie (HttpOnly, SameSite=Strict, Secure on TLS) made by signing in with the admin token;
 * every request that changes something carries the session's CSRF token (a header for the API, a form field for
 * sign-out), and sign-in refuses a cross-origin form. Every page answers with a Content-Security-Policy that
 * allows only this origin's scripts and styles, none inline; all assets are served from here (no CDN).
 */
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import type Koa from "koa";
import { AuthFailureLimit } from "../http/auth-failure-limit.ts";
import { clientKey } from "../http/client-address.ts";
import { RegistryError } from "../oci/errors.ts";
import { readCappedBody } from "../upstream/response-body.ts";
import type { RequestState } from "../http/request-context.ts";
import type { ConsoleHistory } from "./console-history.ts";
import { appPage, loginPage, type ConsolePage } from "./console-pages.ts";
import { ConsoleSessions, csrfMatches, tokenMatches } from "./console-sessions.ts";
import { consoleStatus, type StatusSources } from "./console-status.ts";

export const COOKIE = "mirror_console";
/** Idle time after which a session ends. */
const SESSION_IDLE_MS = 8 * 3_600_000;
const MAX_FORM = 4096;
/** Wrong tokens one client address (IPv6: its /64) may try per window before sign-in answers 429 unchecked. */
const SIGN_IN_FAILURES = { max: 10, windowMs: 60_000 };
/** Admin API paths the proxy passes on: an endpoint name and at most one segment (a job id, a digest). */
const API_PATH = /^[a-z]+(?:\/[A-Za-z0-9:._-]{1,200})?$/;
const SPANS: Record<string, number> = { hour: 3_600_000, day: 86_400_000, month: 30 * 86_400_000 };

const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const require = createRequire(import.meta.url);
/** The only files served under /console/assets/: a fixed table, never a path from the request. */
const ASSETS: Record<string, { path: string; type: string }> = {
  "console.js": { path: fileURLToPath(new URL("./assets/console.js", import.meta.url)), type: "text/javascript" },
  "console.css": { path: fileURLToPath(new URL("./assets/console.css", import.meta.url)), type: "text/css" },
  "uPlot.iife.min.js": { path: require.resolve("uplot/dist/uPlot.iife.min.js"), type: "text/javascript" },
  "uPlot.min.css": { path: require.resolve("uplot/dist/uPlot.min.css"), type: "text/css" },
};

export interface ConsoleOptions {
  /** The admin API's middleware: the proxy hands it the rewritten request. */
  admin: Koa.Middleware<RequestState>;
  /** The admin token's sha256 now, or undefined while it is disabled (as the admin API checks it). */
  tokenDigest: () => Buffer | undefined;
  status: StatusSources;
  history: ConsoleHistory;
}

export function consoleRouter(opts: ConsoleOptions): Koa.Middleware<RequestState> {
  const sessions = new ConsoleSessions({ ttlMs: SESSION_IDLE_MS });
  const failures = new AuthFailureLimit(SIGN_IN_FAILURES);
  const assets = new Map<string, Buffer>();
  const asset = async (name: string) => {
    let bytes = assets.get(name);
    if (!bytes) assets.set(name, (bytes = await readFile(ASSETS[name]!.path)));
    return bytes;
  };

  return async (ctx, next) => {
    if (ctx.path !== "/console" && !ctx.path.startsWith("/console/")) {
      await next();
      return;
    }
    ctx.set("Content-Security-Policy", CSP);
    ctx.set("X-Content-Type-Options", "nosniff");
    // same-origin, not no-referrer: with no-referrer browsers send `Origin: null` on this origin's own forms.
    ctx.set("Referrer-Policy", "same-origin");
    ctx.set("X-Frame-Options", "DENY");
    ctx.set("Cache-Control", "no-store");
    const sessionId = ctx.cookies.get(COOKIE);
    const session = () => sessions.find(sessionId, opts.tokenDigest());
    const path = ctx.path.slice("/console".length);
    const method = ctx.method === "HEAD" ? "GET" : ctx.method;

    if (path.startsWith("/assets/") && method === "GET") {
      const name = path.slice("/assets/".length);
      if (!Object.hasOwn(ASSETS, name)) throw notFound(ctx);
      ctx.type = ASSETS[name]!.type;
      ctx.set("Cache-Control", "no-cache");
      ctx.body = await asset(name);
      return;
    }
    if (path === "/login" && method === "GET") {
      if (session()) return ctx.redirect("/console/");
      return html(ctx, 200, loginPage());
    }
    if (path === "/login" && method === "POST") {
      if (!sameOrigin(ctx)) throw new RegistryError("DENIED", "sign-in from another origin refused");
      const client = clientKey(ctx.req.socket.remoteAddress);
      try {
        failures.check(client);
      } catch (err) {
        const refusal = err as RegistryError;
        ctx.set(refusal.headers);
        return html(ctx, refusal.status, loginPage({ error: refusal.message }));
      }
      const token = (await readForm(ctx)).get("token") ?? "";
      if (!tokenMatches(token, opts.tokenDigest())) {
        failures.failed(client);
        ctx.state.log.info({ path: ctx.path }, "console sign-in refused: wrong admin token");
        return html(ctx, 401, loginPage({ error: "Wrong token." }));
      }
      sessions.close(sessionId);
      ctx.cookies.set(COOKIE, sessions.open(token), {
        httpOnly: true,
        sameSite: "strict",
        secure: ctx.secure,
        path: "/console",
        overwrite: true,
      });
      ctx.status = 303;
      ctx.redirect("/console/");
      return;
    }
    const current = session();
    if (path === "/logout" && method === "POST") {
      if (current && !csrfMatches((await readForm(ctx)).get("csrf") ?? undefined, current.csrf))
        throw new RegistryError("DENIED", "missing or wrong CSRF token");
      sessions.close(sessionId);
      ctx.cookies.set(COOKIE, "", {
        httpOnly: true,
        sameSite: "strict",
        secure: ctx.secure,
        path: "/console",
        maxAge: 0,
      });
      ctx.status = 303;
      ctx.redirect("/console/login");
      return;
    }
    const page = pageAt(path);
    if (page !== undefined && method === "GET") {
      if (!current) return ctx.redirect("/console/login");
      return html(ctx, 200, appPage(page, current.csrf));
    }
    if (path === "" && method === "GET") return ctx.redirect("/console/");
    // Everything below answers JSON to the pages' script, and needs a session.
    if (!current) throw new RegistryError("UNAUTHORIZED", "sign in to the console first");
    if (path === "/status.json" && method === "GET") {
      ctx.body = consoleStatus(opts.status);
      return;
    }
    if (path === "/history.json" && method === "GET") {
      const span = SPANS[ctx.query.span as string] ?? SPANS.day!;
      ctx.body = { span, samples: opts.history.since(Date.now() - span) };
      return;
    }
    if (path.startsWith("/api/")) {
      const rest = path.slice("/api/".length);
      if (!API_PATH.test(rest)) throw notFound(ctx);
      if (method !== "GET" && !csrfMatches(ctx.get("x-csrf-token") || undefined, current.csrf))
        throw new RegistryError("DENIED", "missing or wrong CSRF token");
      ctx.path = `/admin/v1/${rest}`;
      ctx.req.headers.authorization = `Bearer ${current.token}`;
      await opts.admin(ctx, async () => {
        throw notFound(ctx);
      });
      return;
    }
    throw notFound(ctx);
  };
}

function pageAt(path: string): ConsolePage | undefined {
  if (path === "/") return "overview";
  if (path === "/browse") return "browse";
  if (path === "/image") return "image";
  return undefined;
}

function html(ctx: Koa.Context, status: number, body: string): void {
  ctx.status = status;
  ctx.type = "text/html; charset=utf-8";
  ctx.body = body;
}

function notFound(ctx: Koa.Context): RegistryError {
  return new RegistryError("UNSUPPORTED", `no console page ${ctx.method} ${ctx.path.slice(0, 200)}`, { status: 404 });
}

/** A form posted from a page of this origin: browsers send Origin on every POST; a form from elsewhere is refused. */
function sameOrigin(ctx: Koa.Context): boolean {
  // Koa 3's ctx.origin is the Origin header itself: this origin is built from the request's scheme and Host.
  const origin = ctx.get("origin");
  return origin === "" || origin === `${ctx.protocol}://${ctx.host}`;
}

async function readForm(ctx: Koa.Context): Promise<URLSearchParams> {
  const bytes = await readCappedBody(
    ctx.req,
    MAX_FORM,
    () => new RegistryError("SIZE_INVALID", `form over ${MAX_FORM} bytes`, { status: 413 }),
  );
  return new URLSearchParams(bytes.toString("utf8"));
}
