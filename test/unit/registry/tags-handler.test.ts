/**
 * TagsHandler with a real UpstreamClient against a loopback HTTP server standing in for the upstream: the
 * answers a real registry will not give on demand (a broken `Link` header, a body that is no tag list).
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Writable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { TagsHandler } from "../../../src/registry/tags-handler.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

let server: Server;
let upstream: UpstreamClient;
let answer: { headers: IncomingHttpHeaders; body: string };
const logLines: Array<{ level: number; msg: string } & Record<string, unknown>> = [];

beforeAll(async () => {
  server = createServer((_req, res) => res.writeHead(200, answer.headers).end(answer.body));
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const config = parseConfig({
    upstreams: { up: { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` } },
  });
  upstream = new UpstreamClient(config.upstreams.up!);
});
afterAll(async () => {
  await upstream.close();
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});
beforeEach(() => {
  logLines.length = 0;
  answer = {
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name: "team/app", tags: ["v1", "v2"] }),
  };
});

const sink = new Writable({
  write(chunk: Buffer, _enc, cb) {
    logLines.push(JSON.parse(chunk.toString()) as (typeof logLines)[number]);
    cb();
  },
});
const handler = new TagsHandler({ maxBytes: 1 << 20, log: pino({ level: "info" }, sink) });
const list = (query: { n?: string; last?: string; ns?: string } = {}) =>
  handler.handle({
    target: { upstream, repo: "team/app" },
    clientName: "team/app",
    n: query.n,
    last: query.last,
    ns: query.ns,
  });

describe("TagsHandler", () => {
  it("points the upstream's next-page link at this mirror, keeping only n and last", async () => {
    answer.headers.link = '<https://upstream.example/v2/team/app/tags/list?n=2&last=v2&evil=1>; rel="next"';
    const res = await list({ n: "2", ns: "up" });
    expect(res.status).toBe(200);
    expect(res.headers.Link).toBe('</v2/team/app/tags/list?n=2&last=v2&ns=up>; rel="next"');
  });

  it("renders the tag list itself: only name and valid tags, nothing else the upstream put in the body", async () => {
    answer.body = JSON.stringify({ name: "team/app", tags: ["v1"], extra: "<script>", child: { x: 1 } });
    const res = await list();
    expect((res.body as Buffer).toString()).toBe('{"name":"team/app","tags":["v1"]}');
    expect(res.headers["Content-Length"]).toBe(String((res.body as Buffer).length));
    answer.body = JSON.stringify({ name: "team/app", tags: null });
    expect(JSON.parse(((await list()).body as Buffer).toString())).toEqual({ name: "team/app", tags: [] });
  });

  it.each([
    ["credentials from a metadata service", '{"AccessKeyId":"AKIA-INTERNAL","SecretAccessKey":"s3cr3t"}'],
    ["an HTML page", "<html>admin console</html>"],
    ["tags that are no tags", '{"name":"team/app","tags":["v1","../../etc"]}'],
    ["tags that are not strings", '{"name":"team/app","tags":[{"secret":"s3cr3t"}]}'],
  ])("refuses a body that is not a tag list (%s) with UPSTREAM_ERROR, relaying none of it", async (_what, body) => {
    answer.body = body;
    const failure = await list().then(
      () => undefined,
      (err: unknown) => err as Error & { code: string },
    );
    expect(failure?.code).toBe("UPSTREAM_ERROR");
    expect(failure?.message).toMatch(/tag list that is not one/);
    expect(JSON.stringify(failure)).not.toMatch(/s3cr3t|admin console|etc/);
  });

  it("treats a malformed Link header as absent, and says so in the log", async () => {
    answer.headers.link = '<http://[x>; rel="next"';
    const res = await list();
    expect(res.status).toBe(200);
    expect(res.headers.Link).toBeUndefined();
    expect(JSON.parse((res.body as Buffer).toString())).toEqual({ name: "team/app", tags: ["v1", "v2"] });
    const warning = logLines.find((l) => /Link/.test(l.msg));
    expect(warning, JSON.stringify(logLines)).toMatchObject({
      level: 40,
      upstream: "up",
      link: '<http://[x>; rel="next"',
    });
  });
});
