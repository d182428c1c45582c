/** The separate metrics listener on loopback: GET /metrics and nothing else. */
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Registry } from "prom-client";
import { request } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listenMetrics } from "../../../src/observability/metrics-listener.ts";
import { Metrics } from "../../../src/observability/metrics.ts";

let server: Server;
let base: string;
let failScrape = false;

beforeAll(async () => {
  const metrics = new Metrics(new Registry(), { processMetrics: false });
  metrics.fills.inc({ upstream: "docker.io", result: "committed" });
  metrics.onScrape(() => {
    if (failScrape) throw new Error("state unavailable");
  });
  server = await listenMetrics(metrics, { host: "127.0.0.1", port: 0 });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

async function get(path: string, method: "GET" | "POST" | "HEAD" = "GET") {
  const res = await request(`${base}${path}`, { method });
  return { status: res.statusCode, type: res.headers["content-type"], text: await res.body.text() };
}

describe("listenMetrics", () => {
  it("answers GET /metrics with the exposition text, query string or not", async () => {
    for (const path of ["/metrics", "/metrics?name[]=mirror_fills_total"]) {
      const res = await get(path);
      expect(res.status).toBe(200);
      expect(res.type).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(res.text).toMatch(/^mirror_fills_total\{upstream="docker.io",result="committed"\} 1$/m);
    }
  });

  it.each([
    ["GET", "/"],
    ["GET", "/v2/"],
    ["GET", "/metrics/"],
    ["POST", "/metrics"],
    ["HEAD", "/metrics"],
  ] as const)("answers %s %s with 404", async (method, path) => {
    const res = await get(path, method);
    expect(res.status).toBe(404);
    if (method !== "HEAD") expect(res.text).toBe("not found\n");
  });

  it("answers 500 with the reason when the scrape fails", async () => {
    failScrape = true;
    try {
      expect(await get("/metrics")).toMatchObject({ status: 500, text: "state unavailable\n" });
    } finally {
      failScrape = false;
    }
  });
});
