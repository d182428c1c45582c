/**
 * The admin router on a real Koa app behind the outermost error middleware, over loopback HTTP, with a recording
 * stand-in for the AdminHandler: which requests reach which handler method with which arguments, the bearer token
 * check in front of every /admin/ path, the JSON body rules, and the 404 for everything the API does not have.
 */
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { pino } from "pino";
import { request } from "undici";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { adminRouter } from "../../../src/http/admin-router.ts";
import { errorMiddleware } from "../../../src/http/error-middleware.ts";
import type { RequestState } from "../../../src/http/request-context.ts";
import type { AdminHandler } from "../../../src/registry/admin-handler.ts";

const TOKEN = "admin-token-for-unit-tests-ü"; // a non-ASCII byte: compared as the bytes the client sent
const digestOf = (token: string) => createHash("sha256").update(token).digest();

/** Every call the router made, as [method, ...arguments]; query strings as plain text. */
const calls: unknown[][] = [];
const record =
  (name: string, answer: unknown = { answered: name }) =>
  (...args: unknown[]) => {
    calls.push([name, ...args.map((a) => (a instanceof URLSearchParams ? a.toString() : a))]);
    return answer;
  };
const handler = {
  purge: record("purge"),
  refresh: record("refresh"),
  prefetch: record("prefetch"),
  job: record("job"),
  totals: record("totals"),
  repositories: record("repositories"),
  tags: record("tags"),
  blobs: record("blobs"),
  deleteBlob: record("deleteBlob"),
  inventory: record("inventory"),
  async import(bundle: AsyncIterable<Buffer>, query: URLSearchParams) {
    let bytes = 0;
    for await (const chunk of bundle) bytes += chunk.length;
    calls.push(["import", bytes, query.toString()]);
    return { imported: bytes };
  },
} as unknown as AdminHandler;

let tokenDigest: Buffer | undefined = digestOf(TOKEN);
let server: Server;
let base: string;

beforeAll(async () => {
  const app = new Koa<RequestState>();
  app.use(async (ctx, next) => {
    ctx.state.log = pino({ level: "silent" });
    await next();
  });
  app.use(errorMiddleware());
  app.use(adminRouter(handler, () => tokenDigest));
  app.use((ctx) => {
    ctx.body = { passedOn: ctx.path };
  });
  server = createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});
beforeEach(() => {
  calls.length = 0;
  tokenDigest = digestOf(TOKEN);
});

async function send(
  method: "GET" | "HEAD" | "POST" | "DELETE" | "PUT",
  path: string,
  opts: { body?: string | Buffer; authorization?: string | null } = {},
): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; json: unknown }> {
  const authorization = opts.authorization === undefined ? `Bearer ${TOKEN}` : opts.authorization;
  const res = await request(`${base}${path}`, {
    method,
    headers: authorization !== null ? { authorization: Buffer.from(authorization, "utf8").toString("latin1") } : {},
    body: opts.body,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: text === "" ? undefined : JSON.parse(text) };
}

const error = (code: string, message?: string) => ({
  errors: [{ code, ...(message !== undefined ? { message } : {}) }],
});

describe("admin router", () => {
  it.each([
    [
      "POST",
      "/admin/v1/purge",
      '{"upstream":"u","repository":"r"}',
      200,
      ["purge", { upstream: "u", repository: "r" }],
    ],
    [
      "POST",
      "/admin/v1/refresh",
      '{"upstream":"u","repository":"r","tag":"t"}',
      200,
      ["refresh", { upstream: "u", repository: "r", tag: "t" }],
    ],
    ["POST", "/admin/v1/prefetch", '{"reference":"u/r:t"}', 202, ["prefetch", { reference: "u/r:t" }]],
    ["POST", "/admin/v1/purge", undefined, 200, ["purge", {}]],
    ["GET", "/admin/v1/jobs/0f3c-Ab9", undefined, 200, ["job", "0f3c-Ab9"]],
    ["GET", `/admin/v1/jobs/${"a".repeat(64)}`, undefined, 200, ["job", "a".repeat(64)]],
    ["GET", "/admin/v1/totals", undefined, 200, ["totals"]],
    ["GET", "/admin/v1/repositories?upstream=docker.io", undefined, 200, ["repositories", "upstream=docker.io"]],
    ["GET", "/admin/v1/tags?upstream=u&repository=a%2Fb", undefined, 200, ["tags", "upstream=u&repository=a%2Fb"]],
    ["GET", "/admin/v1/blobs?limit=5", undefined, 200, ["blobs", "limit=5"]],
    ["DELETE", "/admin/v1/blobs/sha256:abc", undefined, 200, ["deleteBlob", "sha256:abc"]],
    // The path segment as sent: the handler's digest check sees what the client wrote.
    ["DELETE", "/admin/v1/blobs/sha256%3Aabc", undefined, 200, ["deleteBlob", "sha256%3Aabc"]],
    ["GET", "/admin/v1/inventory", undefined, 200, ["inventory"]],
    ["POST", "/admin/v1/import?pin=true", "x".repeat(100_000), 200, ["import", 100_000, "pin=true"]],
  ] as const)("%s %s reaches its handler method", async (method, path, body, status, call) => {
    const res = await send(method, path, { body });
    expect(calls).toEqual([call]);
    expect(res.status).toBe(status);
    expect(res.json).toEqual(call[0] === "import" ? { imported: 100_000 } : { answered: call[0] });
  });

  it.each([
    ["POST", "/admin/v1/totals"],
    ["HEAD", "/admin/v1/totals"],
    ["GET", "/admin/v1/purge"],
    ["PUT", "/admin/v1/blobs/sha256:abc"],
    ["GET", "/admin/v1/totals/"],
    ["GET", "/admin/v1/Totals"],
    ["GET", "/admin/v1/jobs/"],
    ["GET", "/admin/v1/jobs/has%20space"],
    ["GET", "/admin/v1/jobs/under_score"],
    ["GET", `/admin/v1/jobs/${"a".repeat(65)}`],
    ["DELETE", "/admin/v1/blobs/"],
    ["DELETE", "/admin/v1/blobs/a/b"],
    ["GET", "/admin/v2/totals"],
    ["GET", "/admin/"],
  ] as const)("%s %s is no admin endpoint", async (method, path) => {
    const res = await send(method, path);
    expect(calls).toEqual([]);
    expect(res.status).toBe(404);
    if (method !== "HEAD") expect(res.json).toEqual(error("UNSUPPORTED", `no admin endpoint ${method} ${path}`));
  });

  it.each([
    ["no Authorization header", null],
    ["another token", "Bearer admin-token-for-unit-tests-u"],
    ["the token under another scheme", `Basic ${TOKEN}`],
    ["the token and one more character", `Bearer ${TOKEN}x`],
  ] as const)("refuses %s with 401 and a challenge, before routing", async (_what, authorization) => {
    for (const [method, path] of [
      ["GET", "/admin/v1/totals"],
      ["GET", "/admin/v1/no-such-endpoint"],
    ] as const) {
      const res = await send(method, path, { authorization });
      expect(res.status).toBe(401);
      expect(res.headers["www-authenticate"]).toBe('Bearer realm="registry-mirror-admin"');
      expect(res.json).toEqual(error("UNAUTHORIZED", "admin API requires the configured admin token"));
    }
    expect(calls).toEqual([]);
  });

  it("refuses every request, the right token included, while the token is disabled", async () => {
    tokenDigest = undefined;
    const res = await send("GET", "/admin/v1/totals");
    expect(res.status).toBe(401);
    expect(calls).toEqual([]);
  });

  it("leaves paths outside /admin/ to the next middleware, without asking for a token", async () => {
    for (const path of ["/v2/", "/admin", "/administrator/v1/totals"]) {
      const res = await send("GET", path, { authorization: null });
      expect(res).toMatchObject({ status: 200, json: { passedOn: path } });
    }
    expect(calls).toEqual([]);
  });

  it("answers 400 to a body that is not JSON", async () => {
    const res = await send("POST", "/admin/v1/purge", { body: "{not json" });
    expect(res.status).toBe(400);
    expect(res.json).toEqual(error("UNSUPPORTED", "request body must be JSON"));
    expect(calls).toEqual([]);
  });

  it("takes a JSON body of 64 KiB and refuses one byte more with 413", async () => {
    const fits = JSON.stringify({ upstream: "u", pad: "" });
    const exactly = JSON.stringify({ upstream: "u", pad: "x".repeat(64 * 1024 - fits.length) });
    expect(Buffer.byteLength(exactly)).toBe(64 * 1024);
    expect((await send("POST", "/admin/v1/purge", { body: exactly })).status).toBe(200);
    expect(calls).toHaveLength(1);
    calls.length = 0;
    const over = JSON.stringify({ upstream: "u", pad: "x".repeat(64 * 1024 - fits.length + 1) });
    const res = await send("POST", "/admin/v1/purge", { body: over });
    expect(res.status).toBe(413);
    expect(res.json).toEqual(error("SIZE_INVALID", "request body over 65536 bytes"));
    expect(calls).toEqual([]);
  });
});
