/**
 * UpstreamClient against a loopback HTTP server standing in for one upstream: the cases a real registry will
 * not produce on demand (oversized manifests, missing Content-Type, 429 with Retry-After, a stalled answer).
 */
import { createServer, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

let server: Server;
let client: UpstreamClient;
/** The same upstream with a 1 s overall deadline (and the default one-minute body-idle timeout). */
let hurried: UpstreamClient;
const routes = new Map<string, (res: ServerResponse) => void>();

beforeAll(async () => {
  server = createServer((req, res) => {
    const route = routes.get(`${req.method} ${req.url}`);
    if (route) route(res);
    else res.writeHead(404, { "content-type": "application/json" }).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}');
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const config = parseConfig({ upstreams: { up: { url, timeouts: { headers: "300ms" } } } });
  client = new UpstreamClient(config.upstreams.up!);
  hurried = new UpstreamClient(parseConfig({ upstreams: { up: { url, timeouts: { total: "1s" } } } }).upstreams.up!);
});
afterAll(async () => {
  await client.close();
  await hurried.close();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

/** Answers `status`, then one byte of `body` every 100 ms: never idle for long, never done in time. */
const trickle = (status: number, body: string) => (res: ServerResponse) => {
  res.writeHead(status, { "content-type": "application/vnd.oci.image.manifest.v1+json" });
  let i = 0;
  const timer = setInterval(() => (i < body.length ? res.write(body[i++]) : res.end()), 100);
  res.on("close", () => clearInterval(timer));
};

describe("UpstreamClient", () => {
  it("refuses a manifest larger than the cap, streamed without Content-Length", async () => {
    routes.set("GET /v2/a/manifests/big", (res) => {
      res.writeHead(200, { "content-type": "application/vnd.oci.image.manifest.v1+json" });
      const chunk = Buffer.alloc(1024 * 1024, 0x20);
      for (let i = 0; i < 6; i++) res.write(chunk);
      res.end();
    });
    await expect(client.getManifest("a", "big", 4 * 1024 * 1024)).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      status: 502,
      message: expect.stringMatching(/larger than the limit of 4194304 bytes/) as string,
    });
  });

  it("refuses a tag list larger than the cap", async () => {
    routes.set("GET /v2/a/tags/list", (res) => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ name: "a", tags: Array.from({ length: 200 }, (_, i) => `t${i}`) }));
    });
    await expect(client.getTags("a", 1000)).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      status: 502,
      message: "upstream up sent a tag list larger than the limit of 1000 bytes",
    });
  });

  it("maps an error body over 16 KiB by its status alone, without reading it all", async () => {
    const envelope = (pad: number) => JSON.stringify({ errors: [{ code: "DENIED", message: "x".repeat(pad) }] });
    routes.set("GET /v2/a/manifests/denied-small", (res) =>
      res.writeHead(403, { "content-type": "application/json" }).end(envelope(100)),
    );
    routes.set("GET /v2/a/manifests/denied-large", (res) =>
      res.writeHead(403, { "content-type": "application/json" }).end(envelope(16 * 1024)),
    );
    await expect(client.getManifest("a", "denied-small", 1 << 20)).rejects.toMatchObject({
      code: "DENIED",
      detail: { upstream: "up", status: 403, upstreamErrors: ["DENIED"] },
    });
    const large = await client.getManifest("a", "denied-large", 1 << 20).catch((err: unknown) => err);
    expect(large).toMatchObject({
      code: "DENIED",
      message: "upstream up denied access",
      detail: { upstream: "up", status: 403 },
    });
    expect((large as { detail: object }).detail).not.toHaveProperty("upstreamErrors");
  });

  it("refuses a manifest without a media type", async () => {
    routes.set("GET /v2/a/manifests/untyped", (res) => res.writeHead(200).end("{}"));
    await expect(client.getManifest("a", "untyped", 1 << 20)).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
  });

  it("refuses a manifest whose type is not a manifest type", async () => {
    routes.set("GET /v2/a/manifests/json", (res) =>
      res.writeHead(200, { "content-type": "application/json" }).end('{"AccessKeyId":"AKIA"}'),
    );
    await expect(client.getManifest("a", "json", 1 << 20)).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      message: "upstream up sent a manifest of type application/json, which is not a manifest type",
    });
  });

  it("maps 404 to the request's own code and keeps the upstream's error codes as detail", async () => {
    await expect(client.headManifest("a", "missing")).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN", status: 404 });
    await expect(client.getManifest("a", "missing", 1 << 20)).rejects.toMatchObject({
      detail: { upstreamErrors: ["MANIFEST_UNKNOWN"] },
    });
  });

  it("passes 429 on as TOOMANYREQUESTS with Retry-After", async () => {
    routes.set("HEAD /v2/a/manifests/limited", (res) => res.writeHead(429, { "retry-after": "30" }).end());
    await expect(client.headManifest("a", "limited")).rejects.toMatchObject({
      code: "TOOMANYREQUESTS",
      headers: { "Retry-After": "30" },
    });
  });

  it.each([
    ["a manifest body", "GET /v2/a/manifests/trickle", () => hurried.getManifest("a", "trickle", 1 << 20), 200],
    [
      "an error body",
      "GET /v2/a/manifests/trickle-error",
      () => hurried.getManifest("a", "trickle-error", 1 << 20),
      500,
    ],
    ["a tag list", "GET /v2/a/tags/list", () => hurried.getTags("a", 1 << 20), 200],
  ] as const)(
    "cuts off %s trickling in under the idle timeout at timeouts.total",
    async (_what, route, call, status) => {
      routes.set(route, trickle(status, JSON.stringify({ errors: [{ code: "UNKNOWN", message: "x".repeat(200) }] })));
      await expect(call()).rejects.toMatchObject({
        code: "UNAVAILABLE",
        status: 503,
        message: "upstream up did not finish answering within 1 s (timeouts.total)",
      });
    },
  );

  it("gives UNAVAILABLE when the upstream does not answer within the headers timeout", async () => {
    routes.set("HEAD /v2/a/manifests/stall", () => undefined); // never answers
    const started = Date.now();
    await expect(client.headManifest("a", "stall")).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
