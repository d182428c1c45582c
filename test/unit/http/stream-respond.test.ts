/**
 * streamRespond on a real Koa app over loopback HTTP: a stream body is sent as Koa sends it (status, headers,
 * bytes; a broken source breaks the response; HEAD and other bodies are Koa's), and, in a fresh Node process,
 * without loading Node's bundled undici, which Koa's own `respond` loads for the first stream body it sends.
 */
import { execFile } from "node:child_process";
import { createServer, get, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { resolve } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { pathToFileURL } from "node:url";
import { promisify } from "node:util";
import Koa from "koa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { streamRespond } from "../../../src/http/stream-respond.ts";

let server: Server;
let base: string;
let broken: PassThrough | undefined;
let endless: PassThrough | undefined;
/** What reached `app.on("error")`, by path. */
const appErrors: Array<{ path: string; err: Error }> = [];

beforeAll(async () => {
  const app = new Koa();
  app.silent = true; // the broken source below is expected
  app.on("error", (err: Error, ctx?: Koa.Context) => appErrors.push({ path: ctx?.path ?? "", err }));
  app.use(streamRespond());
  app.use((ctx) => {
    if (ctx.path === "/stream") {
      ctx.status = 206;
      ctx.set("X-Test", "yes");
      ctx.set("Content-Length", "6");
      ctx.body = Readable.from([Buffer.from("abc"), Buffer.from("def")]);
    } else if (ctx.path === "/broken") {
      broken = new PassThrough();
      broken.write("partial");
      ctx.set("Content-Length", "100");
      ctx.body = broken;
    } else if (ctx.path === "/endless") {
      endless = new PassThrough();
      endless.write("first bytes");
      ctx.set("Content-Length", "1000000");
      ctx.body = endless;
    } else {
      ctx.body = { ok: true };
    }
  });
  server = createServer(app.callback());
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

/** A GET (or HEAD): status, headers, body, and whether the body arrived whole. */
function fetchRaw(
  path: string,
  method = "GET",
): Promise<{ status: number; headers: Record<string, unknown>; body: Buffer; complete: boolean }> {
  return new Promise((done, fail) => {
    const req = get(`${base}${path}`, { method }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      const finish = (complete: boolean) =>
        done({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), complete });
      res.on("end", () => finish(true));
      res.on("aborted", () => finish(false));
      res.on("error", () => finish(false));
    });
    req.on("error", fail);
  });
}

describe("streamRespond", () => {
  it("sends a stream body with the status and headers set", async () => {
    const res = await fetchRaw("/stream");
    expect(res.status).toBe(206);
    expect(res.headers["x-test"]).toBe("yes");
    expect(res.body.toString()).toBe("abcdef");
    expect(res.complete).toBe(true);
  });

  it("answers HEAD without a body, and leaves other bodies to Koa", async () => {
    const head = await fetchRaw("/stream", "HEAD");
    expect(head.status).toBe(206);
    expect(head.body.length).toBe(0);
    const json = await fetchRaw("/json");
    expect(json.status).toBe(200);
    expect(JSON.parse(json.body.toString())).toEqual({ ok: true });
  });

  it("breaks the response when the source fails", async () => {
    const pending = fetchRaw("/broken");
    await new Promise((r) => setTimeout(r, 50));
    broken!.destroy(new Error("upstream went away"));
    const res = await pending;
    expect(res.body.toString()).toBe("partial");
    expect(res.complete).toBe(false);
  });

  it("destroys the body when the client leaves before the end, and reports that once", async () => {
    await new Promise<void>((done, fail) => {
      const req = get(`${base}/endless`, (res) => res.once("data", () => req.destroy()));
      req.on("error", () => done()); // the client's own side of leaving
      req.on("close", () => done());
      setTimeout(() => fail(new Error("no response")), 5_000);
    });
    for (let i = 0; i < 200 && !endless?.destroyed; i++) await new Promise((r) => setTimeout(r, 10));
    expect(endless?.destroyed).toBe(true); // what it held (a file handle) is released
    await new Promise((r) => setTimeout(r, 50));
    expect(appErrors.filter((e) => e.path === "/endless")).toHaveLength(1);
  });

  it("reports a source that fails once", async () => {
    const before = appErrors.filter((e) => e.path === "/broken").length;
    const pending = fetchRaw("/broken");
    await new Promise((r) => setTimeout(r, 50));
    broken!.destroy(new Error("source failed"));
    await pending;
    await new Promise((r) => setTimeout(r, 50));
    const reported = appErrors.filter((e) => e.path === "/broken").slice(before);
    expect(reported.map((e) => e.err.message)).toEqual(["source failed"]);
  });

  /** Serves one stream body in a fresh process (with or without streamRespond); whether Node's bundled undici got loaded. */
  async function bundledUndiciLoaded(withMiddleware: boolean): Promise<boolean> {
    const script = `
      import Koa from "koa";
      import { Readable } from "node:stream";
      // Not an import of node:http: its ES module view loads Node's bundled undici itself (src/http/server.ts).
      const { get } = process.getBuiltinModule("node:http");
      import { streamRespond } from ${JSON.stringify(pathToFileURL(resolve("src/http/stream-respond.ts")).href)};
      const app = new Koa();
      if (${withMiddleware}) app.use(streamRespond());
      app.use((ctx) => { ctx.body = Readable.from([Buffer.from("x")]); });
      const server = app.listen(0, "127.0.0.1", () => {
        get("http://127.0.0.1:" + server.address().port + "/", (res) => {
          res.resume();
          res.on("end", () => {
            server.close();
            process.stdout.write(JSON.stringify(process.moduleLoadList.includes("NativeModule internal/deps/undici/undici")));
          });
        });
      });
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], {
      cwd: resolve("."),
      timeout: 30_000,
    });
    return JSON.parse(stdout) as boolean;
  }

  it("does not load Node's bundled undici, which Koa's respond does for a stream body", async () => {
    expect(await bundledUndiciLoaded(false)).toBe(true); // the control: Koa alone loads it
    expect(await bundledUndiciLoaded(true)).toBe(false);
  });
});
