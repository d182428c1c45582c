/**
 * TagsHandler with a real UpstreamClient against a loopback HTTP server standing in for the upstream, and a real
 * (in-memory) embedded metadata store: the answers a real registry will not give on demand (pages in any order,
 * next-page links to elsewhere, a link that never ends, a body that is no tag list, a 503).
 */
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import type { PageRequest } from "../../../src/oci/pagination.ts";
import { TagsHandler } from "../../../src/registry/tags-handler.ts";
import { MAX_TAG_LIST_PAGES, UpstreamClient } from "../../../src/upstream/upstream-client.ts";

let server: Server;
let origin: string;
/** What the stand-in upstream answers, by request path and query. */
let answer: (url: string) => { status?: number; headers?: IncomingHttpHeaders; body: string; hang?: boolean };
const requests: string[] = [];
const clients: UpstreamClient[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    requests.push(req.url!);
    const a = answer(req.url!);
    if (a.hang === true) return; // accepted, never answered (closed at the end of the file)
    res.writeHead(a.status ?? 200, { "content-type": "application/json", ...a.headers }).end(a.body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});
beforeEach(() => {
  requests.length = 0;
  answer = () => ({ body: JSON.stringify({ name: "team/app", tags: ["v2", "latest", "v10", "V1", "1.0"] }) });
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
});

function upstreamClient(extra: Record<string, unknown> = {}): UpstreamClient {
  const config = parseConfig({ upstreams: { up: { url: origin, retries: 0, ...extra } } });
  const client = new UpstreamClient(config.upstreams.up!);
  clients.push(client);
  return client;
}

function setup(opts: { extra?: Record<string, unknown>; maxBytes?: number } = {}) {
  const upstream = upstreamClient(opts.extra);
  const metadata = new EmbeddedMetadataStore();
  const handler = new TagsHandler({ maxBytes: opts.maxBytes ?? 1 << 20, metadata, log: pino({ level: "silent" }) });
  const list = (page: Partial<PageRequest> = {}, ns?: string) =>
    handler.handle({
      target: { upstream, repo: "team/app" },
      clientName: "up/team/app",
      page: { n: page.n, last: page.last },
      ns,
    });
  const cache = async (...tags: string[]) => {
    for (const tag of tags)
      await metadata.putTag("up", "team/app", tag, {
        digest: `sha256:${"a".repeat(64)}`,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        checkedAt: 1,
      });
  };
  return { upstream, list, cache };
}

const json = (body: unknown) => JSON.parse((body as Buffer).toString()) as { name: string; tags: string[] };
const failureOf = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (err: unknown) => err as Error & { code: string; status: number },
  );

describe("TagsHandler: order and paging", () => {
  it("answers the upstream's tags in lexical order, marked as not cached", async () => {
    const res = await setup().list();
    expect(res.status).toBe(200);
    expect(json(res.body)).toEqual({ name: "team/app", tags: ["1.0", "V1", "latest", "v10", "v2"] });
    expect(res.headers["X-Mirror-Cache"]).toBe("miss");
    expect(res.headers.Link).toBeUndefined();
    expect(res.headers["Content-Length"]).toBe(String((res.body as Buffer).length));
  });

  it("pages with n and last, linking back through the client's own name and ns", async () => {
    const { list } = setup();
    const first = await list({ n: 2 }, "up");
    expect(json(first.body).tags).toEqual(["1.0", "V1"]);
    expect(first.headers.Link).toBe('</v2/up/team/app/tags/list?n=2&last=V1&ns=up>; rel="next"');
    const second = await list({ n: 2, last: "V1" });
    expect(json(second.body).tags).toEqual(["latest", "v10"]);
    expect(second.headers.Link).toBe('</v2/up/team/app/tags/list?n=2&last=v10>; rel="next"');
    const end = await list({ n: 2, last: "v10" });
    expect(json(end.body).tags).toEqual(["v2"]);
    expect(end.headers.Link).toBeUndefined();
    const empty = await list({ n: 0 });
    expect(json(empty.body).tags).toEqual([]);
    expect(empty.headers.Link).toBeUndefined();
    // The upstream is asked for its whole list every time: the mirror pages it, never the upstream.
    expect(requests.every((r) => r === "/v2/team/app/tags/list")).toBe(true);
  });

  it("renders the tag list itself: only name and valid tags, nothing else the upstream put in the body", async () => {
    answer = () => ({ body: JSON.stringify({ name: "team/app", tags: ["v1"], extra: "<script>", child: { x: 1 } }) });
    const { list } = setup();
    expect(((await list()).body as Buffer).toString()).toBe('{"name":"team/app","tags":["v1"]}');
    answer = () => ({ body: JSON.stringify({ name: "team/app", tags: null }) });
    expect(json((await list()).body)).toEqual({ name: "team/app", tags: [] });
  });

  it.each([
    ["credentials from a metadata service", '{"AccessKeyId":"AKIA-INTERNAL","SecretAccessKey":"s3cr3t"}'],
    ["an HTML page", "<html>admin console</html>"],
    ["tags that are no tags", '{"name":"team/app","tags":["v1","../../etc"]}'],
    ["tags that are not strings", '{"name":"team/app","tags":[{"secret":"s3cr3t"}]}'],
  ])("refuses a body that is not a tag list (%s) with UPSTREAM_ERROR, relaying none of it", async (_what, body) => {
    answer = () => ({ body });
    const failure = await failureOf(setup().list());
    expect(failure?.code).toBe("UPSTREAM_ERROR");
    expect(failure?.message).toMatch(/tag list that is not one/);
    expect(JSON.stringify(failure)).not.toMatch(/s3cr3t|admin console|etc/);
  });
});

describe("TagsHandler: the upstream's own pages", () => {
  /** Three upstream pages, out of order, linked the ways registries write links. */
  const paged = (links: [string, string]) => (url: string) => {
    const q = new URL(url, origin).searchParams;
    const last = q.get("last");
    if (last === null)
      return { headers: { link: links[0] }, body: JSON.stringify({ name: "team/app", tags: ["v9", "b"] }) };
    if (last === "b")
      return { headers: { link: links[1] }, body: JSON.stringify({ name: "team/app", tags: ["a", "v9", "c"] }) };
    return { body: JSON.stringify({ name: "team/app", tags: ["A"] }) };
  };

  it("follows relative and absolute same-origin next links and sorts everything they lead to", async () => {
    answer = paged([
      '</v2/team/app/tags/list?n=2&last=b>; rel="next"',
      `<${origin}/v2/team/app/tags/list?last=c&n=3&evil=1>; rel="next"`,
    ]);
    const res = await setup().list();
    expect(json(res.body).tags).toEqual(["A", "a", "b", "c", "v9"]);
    // Only n and last come from a link, in the mirror's own order, on the repository's own path.
    expect(requests).toEqual([
      "/v2/team/app/tags/list",
      "/v2/team/app/tags/list?n=2&last=b",
      "/v2/team/app/tags/list?n=3&last=c",
    ]);
  });

  it.each([
    ["another host", '<http://169.254.169.254/v2/team/app/tags/list?last=b>; rel="next"'],
    ["another port of the same host", '<http://127.0.0.1:1/v2/team/app/tags/list?last=b>; rel="next"'],
    ["another repository", '</v2/team/other/tags/list?last=b>; rel="next"'],
    ["a path that climbs out", '</v2/team/app/tags/list/../../../other/tags/list?last=b>; rel="next"'],
    ["a last that is no tag", '</v2/team/app/tags/list?last=..%2Fx>; rel="next"'],
    ["no last", '</v2/team/app/tags/list?n=2>; rel="next"'],
    ["an n that is no number", '</v2/team/app/tags/list?n=-1&last=b>; rel="next"'],
    ["a URL that does not parse", '<http://[x>; rel="next"'],
  ])("refuses a next link to %s with UPSTREAM_ERROR, following none of it", async (_what, link) => {
    answer = paged([link, ""]);
    const failure = await failureOf(setup().list());
    expect(failure).toMatchObject({ code: "UPSTREAM_ERROR", status: 502 });
    expect(failure?.message).toMatch(/^upstream up sent a next-page link/);
    expect(requests).toEqual(["/v2/team/app/tags/list"]);
  });

  it(`reads at most ${MAX_TAG_LIST_PAGES} pages of an upstream whose list never ends`, async () => {
    answer = (url) => {
      const page = Number(new URL(url, origin).searchParams.get("last")?.slice(1) ?? 0) + 1;
      return {
        headers: { link: `</v2/team/app/tags/list?last=t${page}>; rel="next"` },
        body: JSON.stringify({ name: "team/app", tags: [`t${page}`] }),
      };
    };
    const failure = await failureOf(setup().list());
    expect(failure).toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(/more than 100 pages/) as string,
    });
    expect(requests.length).toBe(MAX_TAG_LIST_PAGES);
  });

  it("refuses a next link back to a page already read", async () => {
    answer = () => ({
      headers: { link: '</v2/team/app/tags/list?last=b>; rel="next"' },
      body: JSON.stringify({ name: "team/app", tags: ["b"] }),
    });
    const failure = await failureOf(setup().list());
    expect(failure).toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(/repeats an earlier page/) as string,
    });
    expect(requests.length).toBe(2);
  });

  it("caps the bytes of all pages together", async () => {
    const tags = (from: number) => Array.from({ length: 30 }, (_, i) => `tag-${from + i}`);
    answer = (url) =>
      new URL(url, origin).searchParams.get("last") === null
        ? {
            headers: { link: '</v2/team/app/tags/list?last=tag-29>; rel="next"' },
            body: JSON.stringify({ name: "team/app", tags: tags(0) }),
          }
        : { body: JSON.stringify({ name: "team/app", tags: tags(30) }) };
    const onePage = JSON.stringify({ name: "team/app", tags: tags(0) }).length;
    expect((await setup({ maxBytes: 2 * onePage + 10 }).list()).status).toBe(200);
    const failure = await failureOf(setup({ maxBytes: onePage + 10 }).list());
    expect(failure).toMatchObject({
      code: "UPSTREAM_ERROR",
      message: expect.stringMatching(/larger than the limit/) as string,
    });
  });
});

describe("TagsHandler: when the upstream cannot answer", () => {
  it("answers the cached tags, sorted and paged, marked stale, when the upstream fails with a 5xx", async () => {
    answer = () => ({ status: 503, body: '{"errors":[{"code":"UNAVAILABLE"}]}' });
    const { list, cache } = setup();
    await cache("v2", "latest", "v1");
    const res = await list({ n: 2 });
    expect(json(res.body)).toEqual({ name: "team/app", tags: ["latest", "v1"] });
    expect(res.headers).toMatchObject({ "X-Mirror-Cache": "stale", Warning: '110 - "Response is Stale"' });
    expect(res.headers.Link).toBe('</v2/up/team/app/tags/list?n=2&last=v1>; rel="next"');
    expect(res.cache).toBe("stale");
  });

  it("answers the cached tags, stale, when the upstream has not answered within revalidateTimeout", async () => {
    answer = () => ({ hang: true, body: "" });
    const { list, cache } = setup({ extra: { revalidateTimeout: 50 } });
    await cache("v2", "latest");
    const res = await list();
    expect(json(res.body)).toEqual({ name: "team/app", tags: ["latest", "v2"] });
    expect(res.headers).toMatchObject({ "X-Mirror-Cache": "stale" });
    expect(requests).toEqual(["/v2/team/app/tags/list"]); // asked, and not waited for
  });

  it("passes the upstream's failure on when nothing is cached", async () => {
    answer = () => ({ status: 500, body: "" });
    expect(await failureOf(setup().list())).toMatchObject({ code: "UPSTREAM_ERROR", status: 502 });
    // A 503 is a temporary unavailability, passed on as one with the upstream's Retry-After (upstream-errors.ts).
    answer = () => ({ status: 503, headers: { "retry-after": "30" }, body: "" });
    expect(await failureOf(setup().list())).toMatchObject({
      code: "UNAVAILABLE",
      status: 503,
      headers: { "Retry-After": "30" },
    });
    answer = () => ({ status: 429, headers: { "retry-after": "7" }, body: "" });
    expect(await failureOf(setup().list())).toMatchObject({ code: "TOOMANYREQUESTS", headers: { "Retry-After": "7" } });
  });

  it("keeps an upstream 404 as NAME_UNKNOWN even when tags of the repository are cached", async () => {
    answer = () => ({ status: 404, body: '{"errors":[{"code":"NAME_UNKNOWN"}]}' });
    const { list, cache } = setup();
    await cache("v1");
    expect(await failureOf(list())).toMatchObject({ code: "NAME_UNKNOWN", status: 404 });
  });

  it("offline by configuration: answers the cached tags without asking, and NAME_UNKNOWN when none are cached", async () => {
    const { list, cache } = setup({ extra: { offline: true } });
    const missing = await failureOf(list());
    expect(missing).toMatchObject({
      code: "NAME_UNKNOWN",
      status: 404,
      message: expect.stringMatching(/offline/) as string,
    });
    await cache("v1", "v0");
    const res = await list();
    expect(json(res.body).tags).toEqual(["v0", "v1"]);
    expect(res.headers["X-Mirror-Cache"]).toBe("stale");
    expect(requests).toEqual([]);
  });
});
