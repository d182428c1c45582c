/**
 * The request context on a real Koa app over loopback HTTP, its log captured: the access line names the client
 * (and the one a trusted proxy forwarded for) and its user agent; probes and scrapes are logged at debug; and
 * only content answers count as bytes sent, so a `/v2/` ping, a scrape or an error is no byte "from upstream".
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { pino } from "pino";
import { Registry } from "prom-client";
import { request } from "undici";
import { afterEach, describe, expect, it } from "vitest";
import { TrustedProxies } from "../../../src/http/client-address.ts";
import { requestContext, type RequestState } from "../../../src/http/request-context.ts";
import { Metrics } from "../../../src/observability/metrics.ts";

interface AccessLine {
  level: number;
  msg: string;
  path: string;
  client?: string;
  forwardedFor?: string;
  userAgent?: string;
}

const DEBUG = 20;
const INFO = 30;

let server: Server | undefined;
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

/** An app with a ping, a probe, a scrape, a content answer (a cache hit) and a miss, behind requestContext. */
async function start(trusted: string[]): Promise<{ base: string; lines: AccessLine[]; metrics: Metrics }> {
  const lines: AccessLine[] = [];
  const log = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line) as AccessLine) });
  const metrics = new Metrics(new Registry(), { processMetrics: false });
  const app = new Koa<RequestState>();
  app.use(requestContext(log, metrics, new TrustedProxies(trusted)));
  app.use(async (ctx) => {
    switch (ctx.path) {
      case "/v2/":
      case "/healthz":
      case "/metrics":
        ctx.body = "{}";
        break;
      case "/v2/team/app/blobs/hit":
        Object.assign(ctx.state, { kind: "blob", upstream: "docker.io", cache: "hit" });
        ctx.body = Buffer.alloc(1000);
        break;
      case "/v2/team/app/blobs/miss":
        Object.assign(ctx.state, { kind: "blob", upstream: "docker.io", cache: "miss" });
        ctx.body = Buffer.alloc(300);
        break;
      default:
        ctx.status = 404;
        ctx.body = '{"errors":[]}';
    }
  });
  server = createServer(app.callback());
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return { base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, lines, metrics };
}

async function get(url: string, headers: Record<string, string> = {}): Promise<void> {
  const res = await request(url, { headers });
  await res.body.arrayBuffer();
}

/** The access line of `path`, once the response's close has logged it (bounded wait). */
async function lineOf(lines: AccessLine[], path: string): Promise<AccessLine> {
  for (let i = 0; i < 100; i++) {
    const line = lines.find((l) => l.msg === "request" && l.path === path);
    if (line) return line;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`no access line for ${path}`);
}

describe("requestContext", () => {
  it("logs the client's address and user agent, and ignores X-Forwarded-For from a peer it does not trust", async () => {
    const { base, lines } = await start([]);
    await get(`${base}/v2/team/app/blobs/hit`, { "user-agent": "skopeo/1.9.3", "x-forwarded-for": "198.51.100.4" });
    const line = await lineOf(lines, "/v2/team/app/blobs/hit");
    expect(line).toMatchObject({ level: INFO, client: "127.0.0.1", userAgent: "skopeo/1.9.3" });
    expect(line.forwardedFor).toBeUndefined();
  });

  it("logs the forwarded client when a trusted proxy sent the request", async () => {
    const { base, lines } = await start(["127.0.0.0/8"]);
    await get(`${base}/v2/team/app/blobs/hit`, { "x-forwarded-for": "203.0.113.50, 198.51.100.4" });
    expect(await lineOf(lines, "/v2/team/app/blobs/hit")).toMatchObject({
      client: "127.0.0.1",
      forwardedFor: "198.51.100.4",
    });
  });

  it("caps a long user agent", async () => {
    const { base, lines } = await start([]);
    await get(`${base}/v2/`, { "user-agent": "x".repeat(5000) });
    expect((await lineOf(lines, "/v2/")).userAgent).toBe("x".repeat(256));
  });

  it("logs /metrics, /healthz and /readyz at debug, everything else at info", async () => {
    const { base, lines } = await start([]);
    for (const path of ["/metrics", "/healthz", "/readyz", "/v2/"]) await get(`${base}${path}`);
    expect((await lineOf(lines, "/metrics")).level).toBe(DEBUG);
    expect((await lineOf(lines, "/healthz")).level).toBe(DEBUG);
    expect((await lineOf(lines, "/readyz")).level).toBe(DEBUG);
    expect((await lineOf(lines, "/v2/")).level).toBe(INFO);
  });

  it("counts only content answers as bytes sent: a ping, a scrape or an error comes from neither cache nor upstream", async () => {
    const { base, lines, metrics } = await start([]);
    for (const path of ["/v2/", "/metrics", "/nothing", "/v2/team/app/blobs/hit", "/v2/team/app/blobs/miss"]) {
      await get(`${base}${path}`);
      await lineOf(lines, path);
    }
    const sent = (await metrics.sentBytes.get()).values.map((v) => [v.labels.kind, v.labels.source, v.value]);
    expect(sent.sort()).toEqual([
      ["blob", "cache", 1000],
      ["blob", "upstream", 300],
    ]);
    // Still counted as requests, as kind "other" with result "none".
    const other = (await metrics.requests.get()).values.filter((v) => v.labels.kind === "other");
    expect(other.every((v) => v.labels.result === "none")).toBe(true);
    expect(other.reduce((sum, v) => sum + v.value, 0)).toBe(3);
  });
});
