/**
 * The start-up check (src/upstream/upstream-check.ts): once the mirror listens, one GET /v2/ per upstream that
 * is not offline, logged. Real upstreams: distribution without auth and with token auth; a port nobody listens
 * on; a plain HTTP server that is not a registry; a TCP server that accepts and never answers.
 */
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer as createHttpServer } from "node:http";
import { createServer as createTcpServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMirror, type Mirror } from "../../src/app.ts";
import { parseConfig } from "../../src/config/load.ts";
import { freePort, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startTokenServer, type TokenServer } from "../harness/token-server.ts";
import { fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

interface LogLine {
  level: number;
  msg: string;
  upstream?: string;
  status?: number;
  auth?: string;
  reason?: string;
}

/** A mirror over these upstreams, its log lines collected. */
async function mirrorOver(upstreams: Record<string, Record<string, unknown>>): Promise<{
  mirror: Mirror;
  url: string;
  lines: LogLine[];
  checkLines: () => LogLine[];
}> {
  const dir = await mkdtemp(join(tmpdir(), "upstream-check-"));
  teardown.add("data dir", () => rm(dir, { recursive: true, force: true }));
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split("\n")) if (line !== "") lines.push(JSON.parse(line) as LogLine);
      cb();
    },
  });
  const config = parseConfig({ listen: "127.0.0.1:0", storage: { path: dir }, shutdownGrace: "1s", upstreams });
  const mirror = await createMirror(config, { log: pino({ level: "info" }, sink), processMetrics: false });
  teardown.add("mirror", () => mirror.close());
  const address = await mirror.listen();
  return {
    mirror,
    url: `http://127.0.0.1:${address.port}`,
    lines,
    checkLines: () => lines.filter((l) => l.msg.startsWith("upstream ") && l.upstream !== undefined),
  };
}

const INFO = 30;
const WARN = 40;

describe("start-up check of the upstreams", () => {
  let registry: Registry;
  let tokens: TokenServer;
  let tokenRegistry: Registry;

  beforeAll(async () => {
    registry = teardown.track(await startRegistry());
    tokens = teardown.track(await startTokenServer({ users: { admin: "admin-pw" }, admins: ["admin"] }));
    tokenRegistry = teardown.track(await startRegistry({ auth: { token: tokens } }));
  });

  it("sends one GET /v2/ to each upstream and logs the answer: 200 open, 401 with the scheme, no token fetched", async () => {
    // The harness's own requests (readiness) may still be on their way into the logs: let them land first.
    await registry.sync();
    await tokenRegistry.sync();
    registry.clearRequests();
    tokenRegistry.clearRequests();
    tokens.clearRequests();
    const m = await mirrorOver({
      open: { url: registry.url, default: true },
      locked: { url: tokenRegistry.url, aliases: ["locked.example"], authHosts: [new URL(tokens.url).host] },
    });
    await m.mirror.upstreamsChecked;
    const byUpstream: Record<string, LogLine> = Object.fromEntries(m.checkLines().map((l) => [l.upstream!, l]));
    expect(byUpstream["open"]).toMatchObject({
      level: INFO,
      msg: "upstream answers",
      status: 200,
      apiVersion: "registry/2.0",
    });
    expect(byUpstream["locked"]).toMatchObject({
      level: INFO,
      msg: "upstream answers",
      status: 401,
      auth: "Bearer",
      apiVersion: "registry/2.0",
    });
    await registry.sync();
    await tokenRegistry.sync();
    expect(registry.requests().map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual(["GET /v2/ 200"]);
    expect(tokenRegistry.requests().map((r) => `${r.method} ${r.path} ${r.status}`)).toEqual(["GET /v2/ 401"]);
    // A 401 on /v2/ is the answer expected of a registry with auth, not a challenge to answer now.
    expect(tokens.count()).toBe(0);
  });

  it("warns when an upstream cannot be reached, and serves anyway", async () => {
    const closedPort = await freePort();
    const m = await mirrorOver({ gone: { url: `http://127.0.0.1:${closedPort}`, default: true } });
    await m.mirror.upstreamsChecked;
    expect(m.checkLines()).toEqual([
      expect.objectContaining({
        level: WARN,
        upstream: "gone",
        msg: "upstream not reachable at start-up: content not in the cache cannot be fetched from it until it answers",
        reason: `upstream gone is unavailable (ECONNREFUSED): connect ECONNREFUSED 127.0.0.1:${closedPort}`,
      }),
    ]);
    expect((await fetchRaw(`${m.url}/readyz`)).status).toBe(200);
    // The check is not a pull: the upstream's health is left to real traffic.
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/^mirror_upstream_up\{upstream="gone"\} 1$/m);
  });

  it("warns when the url answers 404 to GET /v2/: a web server, not a registry's API endpoint", async () => {
    const web = createHttpServer((_req, res) => {
      res.writeHead(404, { "content-type": "text/html" }).end("<h1>Not Found</h1>");
    });
    web.listen(0, "127.0.0.1");
    await once(web, "listening");
    teardown.add("web server", () => new Promise<void>((resolve) => web.close(() => resolve())));
    const port = (web.address() as { port: number }).port;
    const m = await mirrorOver({ site: { url: `http://127.0.0.1:${port}`, default: true } });
    await m.mirror.upstreamsChecked;
    expect(m.checkLines()).toEqual([
      expect.objectContaining({
        level: WARN,
        upstream: "site",
        status: 404,
        msg: "upstream answered 404 to GET /v2/: its url is not a registry's API endpoint, so pulls through it will fail",
      }),
    ]);
  });

  it("gives up on a silent upstream after timeouts.total, and shutdown does not wait for a check", async () => {
    const sockets = new Set<Socket>();
    const silent = createTcpServer((s) => {
      sockets.add(s); // accepted, never answered
      s.on("error", () => undefined);
    });
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    teardown.add("silent server", async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => silent.close(() => resolve()));
    });
    const url = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;

    const short = await mirrorOver({ mute: { url, default: true, timeouts: { total: "1s" } } });
    await short.mirror.upstreamsChecked;
    expect(short.checkLines()).toEqual([
      expect.objectContaining({ level: WARN, upstream: "mute", reason: "no answer within 1000 ms" }),
    ]);

    const long = await mirrorOver({ mute: { url, default: true, timeouts: { total: "10m" } } });
    await new Promise((resolve) => setTimeout(resolve, 300)); // the check is waiting on the silent server
    const started = performance.now();
    await long.mirror.close();
    expect(performance.now() - started).toBeLessThan(5_000);
    await long.mirror.upstreamsChecked;
    expect(long.checkLines()).toEqual([]);
  });

  it("leaves offline upstreams alone", async () => {
    await registry.sync();
    registry.clearRequests();
    const m = await mirrorOver({ kept: { url: registry.url, default: true, offline: true } });
    await m.mirror.upstreamsChecked;
    await registry.sync();
    expect(registry.requests()).toEqual([]);
    expect(
      m.checkLines().filter((l) => l.msg !== "upstream is offline by configuration: serving cached content only"),
    ).toEqual([]);
  });
});
