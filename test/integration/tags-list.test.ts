/**
 * `tags/list` per the distribution spec against a real upstream (Debian's docker-registry): lexical order, `n`,
 * `last`, the `Link` walk, `n=0`, bad input, and the cached tags answering, marked stale, when the upstream is
 * stopped or the mirror is offline.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

/** Pushed in this (non-lexical) order; upper case, digits and `_` sort before lower case. */
const TAGS = ["v10", "latest", "v2", "1.0", "V1", "beta", "_x"];
const SORTED = ["1.0", "V1", "_x", "beta", "latest", "v10", "v2"];

let upstream: Registry;
let mirror: TestMirror;
const mirrors: TestMirror[] = [];

beforeAll(async () => {
  upstream = await startRegistry();
  const image = buildImage({ format: "oci", layers: [randomLayer(2_000)] });
  for (const tag of TAGS) await pushImage(upstream.url, "team/many", tag, image);
  mirror = await startTestMirror({
    upstreams: { "docker.io": { url: upstream.url, default: true, retries: 0, timeouts: { connect: "1s" } } },
  });
  mirrors.push(mirror);
});

afterAll(async () => {
  for (const m of mirrors) await m.stop();
  await upstream?.dispose();
});

type TagList = { name: string; tags: string[] };
const tagsOf = (body: Buffer) => JSON.parse(body.toString()) as TagList;

/** Follows `Link: <...>; rel="next"` from `path` to the end (bounded), returning every page. */
async function walk(base: string, path: string): Promise<Array<{ tags: string[]; link: string | undefined }>> {
  const pages: Array<{ tags: string[]; link: string | undefined }> = [];
  let next: string | undefined = path;
  while (next !== undefined && pages.length <= 20) {
    const res = await fetchRaw(`${base}${next}`);
    expect(res.status, next).toBe(200);
    const link = res.headers.link as string | undefined;
    pages.push({ tags: tagsOf(res.body).tags, link });
    next = link === undefined ? undefined : /^<([^>]+)>; rel="next"$/.exec(link)?.[1];
    if (link !== undefined) expect(next, link).toBeDefined();
  }
  return pages;
}

describe("tags/list", () => {
  it("answers every tag in lexical order, without a Link, marked as not cached", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/team/many/tags/list`);
    expect(res.status).toBe(200);
    expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
    expect(tagsOf(res.body)).toEqual({ name: "team/many", tags: SORTED });
    expect(res.headers.link).toBeUndefined();
    expect(res.headers["x-mirror-cache"]).toBe("miss");
  });

  it("walks n/last/Link to the end, every tag exactly once, each page full but the last", async () => {
    for (const n of [1, 3, 7]) {
      const pages = await walk(mirror.url, `/v2/team/many/tags/list?n=${n}`);
      expect(
        pages.flatMap((p) => p.tags),
        `n=${n}`,
      ).toEqual(SORTED);
      for (const page of pages.slice(0, -1)) expect(page.tags.length).toBe(n);
      expect(pages.at(-1)!.link).toBeUndefined();
    }
    const [first] = await walk(mirror.url, "/v2/team/many/tags/list?n=3");
    expect(first!.link).toBe('</v2/team/many/tags/list?n=3&last=_x>; rel="next"');
  });

  it("keeps the client's route in the Link: a path prefix, and containerd's ns", async () => {
    const prefixed = await walk(mirror.url, "/v2/docker.io/team/many/tags/list?n=4");
    expect(prefixed[0]!.link).toBe('</v2/docker.io/team/many/tags/list?n=4&last=beta>; rel="next"');
    expect(prefixed.flatMap((p) => p.tags)).toEqual(SORTED);
    const ns = await walk(mirror.url, "/v2/team/many/tags/list?n=4&ns=docker.io");
    expect(ns[0]!.link).toBe('</v2/team/many/tags/list?n=4&last=beta&ns=docker.io>; rel="next"');
    expect(ns.flatMap((p) => p.tags)).toEqual(SORTED);
  });

  it("answers tags strictly after last, with or without n", async () => {
    const after = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?last=beta`);
    expect(tagsOf(after.body).tags).toEqual(["latest", "v10", "v2"]);
    expect(after.headers.link).toBeUndefined();
    const notATagHere = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?n=2&last=c`);
    expect(tagsOf(notATagHere.body).tags).toEqual(["latest", "v10"]);
    const past = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?n=2&last=zzz`);
    expect(tagsOf(past.body).tags).toEqual([]);
    expect(past.headers.link).toBeUndefined();
  });

  it("answers n=0 with an empty list and no Link", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?n=0`);
    expect(res.status).toBe(200);
    expect(res.body.toString()).toBe('{"name":"team/many","tags":[]}');
    expect(res.headers.link).toBeUndefined();
  });

  it.each([
    ["n=-1", 400, "UNSUPPORTED"],
    ["n=abc", 400, "UNSUPPORTED"],
    ["n=1.5", 400, "UNSUPPORTED"],
    ["n=", 400, "UNSUPPORTED"],
    [`last=${"a".repeat(129)}`, 400, "TAG_INVALID"],
    ["last=.hidden", 400, "TAG_INVALID"],
    ["n=2&last=a%2Fb", 400, "TAG_INVALID"],
  ])("refuses %s with %i %s as OCI error JSON, asking no upstream", async (query, status, code) => {
    await upstream.sync();
    upstream.clearRequests();
    const res = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?${query}`);
    expect(res.status).toBe(status);
    expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
    expect(errorCode(res)).toBe(code);
    await upstream.sync();
    expect(upstream.count({ kind: "tags" })).toBe(0);
  });

  it("clamps a very large n to 10 000", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/team/many/tags/list?n=${"9".repeat(30)}`);
    expect(res.status).toBe(200);
    expect(tagsOf(res.body).tags).toEqual(SORTED);
    expect(res.headers.link).toBeUndefined();
  });

  it("keeps an upstream 404 as NAME_UNKNOWN", async () => {
    const res = await fetchRaw(`${mirror.url}/v2/team/never-pushed/tags/list`);
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe("NAME_UNKNOWN");
  });
});

describe("tags/list when the upstream cannot answer", () => {
  const pulled = ["v2", "latest", "1.0"];

  it("answers the cached tags, sorted and paged, marked stale, while the upstream is stopped", async () => {
    for (const tag of pulled) {
      const res = await fetchRaw(`${mirror.url}/v2/team/many/manifests/${tag}`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(res.status).toBe(200);
    }
    await upstream.stop();
    try {
      const res = await fetchRaw(`${mirror.url}/v2/team/many/tags/list`);
      expect(res.status).toBe(200);
      expect(tagsOf(res.body)).toEqual({ name: "team/many", tags: ["1.0", "latest", "v2"] });
      expect(res.headers["x-mirror-cache"]).toBe("stale");
      expect(res.headers.warning).toBe('110 - "Response is Stale"');
      const pages = await walk(mirror.url, "/v2/team/many/tags/list?n=2");
      expect(pages.map((p) => p.tags)).toEqual([["1.0", "latest"], ["v2"]]);
      expect(pages[0]!.link).toBe('</v2/team/many/tags/list?n=2&last=latest>; rel="next"');
      // Nothing cached for this repository: the upstream's failure stands.
      const uncached = await fetchRaw(`${mirror.url}/v2/team/other/tags/list`);
      expect(uncached.status).toBe(503);
      expect(errorCode(uncached)).toBe("UNAVAILABLE");
    } finally {
      await upstream.start();
    }
  });

  it("offline by configuration: the cached tags, stale, without asking; NAME_UNKNOWN for a repository with none", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "tags-offline-"));
    const online = await startTestMirror({ upstreams: { "docker.io": { url: upstream.url, default: true } }, dataDir });
    mirrors.push(online);
    for (const tag of ["beta", "V1"])
      await fetchRaw(`${online.url}/v2/team/many/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
    await online.stop();
    const offline = await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, offline: true } },
      dataDir,
    });
    mirrors.push(offline);
    await upstream.sync();
    upstream.clearRequests();
    const res = await fetchRaw(`${offline.url}/v2/team/many/tags/list`);
    expect(res.status).toBe(200);
    expect(tagsOf(res.body).tags).toEqual(["V1", "beta"]);
    expect(res.headers["x-mirror-cache"]).toBe("stale");
    const none = await fetchRaw(`${offline.url}/v2/team/other/tags/list`);
    expect(none.status).toBe(404);
    expect(errorCode(none)).toBe("NAME_UNKNOWN");
    await upstream.sync();
    expect(upstream.requests()).toEqual([]);
  });
});
