/**
 * `GET /v2/_catalog` against two real upstream registries (Debian's docker-registry): the repositories the
 * mirror holds, named so that each pulls back through the mirror from the same upstream, paged like tags/list,
 * filtered by the client access rules, without asking any upstream.
 */
import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import bcrypt from "bcryptjs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());

const CI_TOKEN = "ci-token-abcdefghijklmnop";
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
const ALICE = basic("alice", "alice-secret-pw");

let hub: Registry;
let ghcr: Registry;
/** `<upstream> <repository>` → the image pushed there under tag v1. */
const pushed = new Map<string, BuiltImage>();
/** How a client pulls each pushed repository through the mirror (path prefix or ns for ghcr.io). */
const PULLS: Array<{ upstream: "docker.io" | "ghcr.io"; repo: string; path: string }> = [
  { upstream: "docker.io", repo: "library/alpine", path: "/v2/alpine/manifests/v1" },
  { upstream: "docker.io", repo: "team/app", path: "/v2/team/app/manifests/v1" },
  { upstream: "docker.io", repo: "team/secret", path: "/v2/team/secret/manifests/v1" },
  { upstream: "ghcr.io", repo: "team/tool", path: "/v2/ghcr.io/team/tool/manifests/v1" },
  { upstream: "ghcr.io", repo: "org/x", path: "/v2/org/x/manifests/v1?ns=ghcr.io" },
];
const ALL = ["ghcr.io/org/x", "ghcr.io/team/tool", "library/alpine", "team/app", "team/secret"];

let htpasswd: string;

beforeAll(async () => {
  hub = teardown.track(await startRegistry());
  ghcr = teardown.track(await startRegistry());
  for (const { upstream, repo } of PULLS) {
    const image = buildImage({ format: "oci", layers: [randomLayer(1_000)], labels: { upstream, repo } });
    await pushImage((upstream === "ghcr.io" ? ghcr : hub).url, repo, "v1", image);
    pushed.set(`${upstream} ${repo}`, image);
  }
  // Pushed but never pulled: not held by the mirror, so never listed.
  await pushImage(hub.url, "team/unpulled", "v1", buildImage({ format: "oci", layers: [randomLayer(500)] }));
  const dir = await mkdtemp(join(tmpdir(), "catalog-"));
  htpasswd = join(dir, "htpasswd");
  await writeFile(htpasswd, `alice:${bcrypt.hashSync("alice-secret-pw", 4)}\n`);
});

const upstreams = () => ({
  "docker.io": { url: hub.url, default: true, libraryPrefix: "library" },
  "ghcr.io": { url: ghcr.url },
});

async function mirrorWith(access?: Record<string, unknown>): Promise<TestMirror> {
  const m = await startTestMirror({
    upstreams: upstreams(),
    extra: access ? { access: { htpasswdFile: htpasswd, tokens: [{ name: "ci", token: CI_TOKEN }], ...access } } : {},
  });
  teardown.add("mirror", () => m.stop());
  return m;
}

async function pullAll(m: TestMirror, authorization?: string): Promise<void> {
  for (const pull of PULLS) {
    const res = await fetchRaw(`${m.url}${pull.path}`, {
      headers: { accept: ALL_MANIFEST_TYPES, ...(authorization ? { authorization } : {}) },
    });
    expect(res.status, pull.path).toBe(200);
  }
}

const catalogOf = async (m: TestMirror, query = "", authorization?: string) => {
  const res = await fetchRaw(`${m.url}/v2/_catalog${query}`, { headers: authorization ? { authorization } : {} });
  return { res, repositories: (JSON.parse(res.body.toString()) as { repositories?: string[] }).repositories };
};

describe("_catalog", () => {
  let m: TestMirror;
  beforeAll(async () => {
    m = await mirrorWith();
    await pullAll(m);
  });

  it("lists the repositories pulled from both upstreams, in lexical order, without asking either", async () => {
    for (const r of [hub, ghcr]) {
      await r.sync();
      r.clearRequests();
    }
    const { res, repositories } = await catalogOf(m);
    expect(res.status).toBe(200);
    expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
    expect(repositories).toEqual(ALL);
    expect(res.headers.link).toBeUndefined();
    for (const r of [hub, ghcr]) {
      await r.sync();
      expect(r.requests()).toEqual([]);
    }
  });

  it("names every repository so that it pulls back through the mirror from the same upstream", async () => {
    const { repositories } = await catalogOf(m);
    const found = new Set<string>();
    for (const name of repositories!) {
      const res = await fetchRaw(`${m.url}/v2/${name}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      expect(res.status, name).toBe(200);
      const match = [...pushed].find(([, image]) => image.digest === res.headers["docker-content-digest"]);
      expect(match, name).toBeDefined();
      found.add(match![0]);
      // The tag list under that name is the same upstream repository's.
      const tags = await fetchRaw(`${m.url}/v2/${name}/tags/list`);
      expect(JSON.parse(tags.body.toString())).toEqual({ name: match![0].split(" ")[1], tags: ["v1"] });
    }
    expect([...found].sort()).toEqual([...pushed.keys()].sort());
  });

  it("pages with n, last and Link like tags/list: every repository once; n=0 empty", async () => {
    const walked: string[] = [];
    let next: string | undefined = "/v2/_catalog?n=2";
    const links: string[] = [];
    for (let i = 0; next !== undefined && i < 10; i++) {
      const res = await fetchRaw(`${m.url}${next}`);
      expect(res.status).toBe(200);
      const page = (JSON.parse(res.body.toString()) as { repositories: string[] }).repositories;
      walked.push(...page);
      const link = res.headers.link as string | undefined;
      if (link !== undefined) {
        expect(page.length).toBe(2);
        links.push(link);
      }
      next = link === undefined ? undefined : /^<([^>]+)>; rel="next"$/.exec(link)?.[1];
    }
    expect(walked).toEqual(ALL);
    expect(links).toEqual([
      '</v2/_catalog?n=2&last=ghcr.io%2Fteam%2Ftool>; rel="next"',
      '</v2/_catalog?n=2&last=team%2Fapp>; rel="next"',
    ]);
    const empty = await catalogOf(m, "?n=0");
    expect(empty.repositories).toEqual([]);
    expect(empty.res.headers.link).toBeUndefined();
    expect((await catalogOf(m, "?last=library/alpine")).repositories).toEqual(["team/app", "team/secret"]);
  });

  it.each([
    ["?n=-1", "GET", 400, "UNSUPPORTED"],
    ["?n=x", "GET", 400, "UNSUPPORTED"],
    ["?last=Not..A/Name", "GET", 400, "NAME_INVALID"],
    ["", "HEAD", 405, ""],
    ["", "DELETE", 405, "UNSUPPORTED"],
  ] as const)("refuses %s %s with %i %s", async (query, method, status, code) => {
    const res = await fetchRaw(`${m.url}/v2/_catalog${query}`, { method });
    expect(res.status).toBe(status);
    if (method !== "HEAD") {
      expect(String(res.headers["content-type"])).toMatch(/^application\/json/);
      expect(errorCode(res)).toBe(code);
    }
    if (status === 405) expect(res.headers.allow).toBe("GET");
  });
});

describe("_catalog and client access rules", () => {
  it("lists only what the asking client may pull", async () => {
    const m = await mirrorWith({
      anonymous: false,
      rules: [
        { subjects: ["anonymous"], repositories: ["library/*"], action: "allow" },
        { subjects: ["ci"], repositories: ["team/secret"], action: "deny" },
        { subjects: ["ci"], upstreams: ["ghcr.io"], action: "deny" },
      ],
    });
    await pullAll(m, ALICE);
    expect((await catalogOf(m)).repositories).toEqual(["library/alpine"]);
    expect((await catalogOf(m, "", ALICE)).repositories).toEqual(ALL);
    expect((await catalogOf(m, "", `Bearer ${CI_TOKEN}`)).repositories).toEqual(["library/alpine", "team/app"]);
    const wrong = await catalogOf(m, "", basic("alice", "wrong"));
    expect(wrong.res.status).toBe(401);
  });

  it("challenges anonymous clients when they may pull nothing at all", async () => {
    const m = await mirrorWith({ anonymous: false });
    await pullAll(m, ALICE);
    const { res } = await catalogOf(m);
    expect(res.status).toBe(401);
    expect(errorCode(res)).toBe("UNAUTHORIZED");
    expect(res.headers["www-authenticate"]).toBe('Basic realm="registry-mirror"');
    expect((await catalogOf(m, "", ALICE)).repositories).toEqual(ALL);
  });
});
