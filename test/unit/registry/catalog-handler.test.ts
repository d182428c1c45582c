/**
 * CatalogHandler over a real (in-memory) embedded metadata store, the real resolver and access policy, and
 * upstream clients that are never asked anything (the catalog is what the mirror holds).
 */
import { pino } from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { parseConfig } from "../../../src/config/load.ts";
import { UpstreamResolver } from "../../../src/config/upstream-resolver.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import type { PageRequest } from "../../../src/oci/pagination.ts";
import { AccessPolicy, ANONYMOUS, type Identity } from "../../../src/registry/access-policy.ts";
import { CatalogHandler } from "../../../src/registry/catalog-handler.ts";
import { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

const config = parseConfig({
  upstreams: {
    // Unreachable on purpose: the catalog never asks an upstream.
    "docker.io": { url: "http://127.0.0.1:9", default: true, repositories: { deny: ["blocked/**"] } },
    "ghcr.io": { url: "http://127.0.0.1:9" },
    "registry.local:5000": { url: "http://127.0.0.1:9", aliases: ["local"] },
    "noprefix:1": { url: "http://127.0.0.1:9" },
  },
  access: {
    anonymous: true,
    rules: [
      { subjects: ["anonymous"], upstreams: ["ghcr.io"], action: "deny" },
      { subjects: ["bob"], repositories: ["team/**"], action: "deny" },
    ],
  },
});
const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u));
afterAll(async () => {
  for (const u of upstreams) await u.close();
});
const resolver = new UpstreamResolver(upstreams);
const metadata = new EmbeddedMetadataStore();
const handler = new CatalogHandler({
  upstreams,
  resolver,
  metadata,
  policy: new AccessPolicy(config),
  log: pino({ level: "silent" }),
});

/** upstream → repositories with a tag pointer. */
const HELD: Record<string, string[]> = {
  "docker.io": ["library/alpine", "team/app", "ghcr.io/odd", "blocked/thing", "library/zlib"],
  "ghcr.io": ["team/tool", "library/alpine"],
  "registry.local:5000": ["x/y"],
  "noprefix:1": ["only/by-ns"],
};
for (const [upstream, repos] of Object.entries(HELD)) {
  for (const repo of repos)
    await metadata.putTag(upstream, repo, "v1", {
      digest: `sha256:${"a".repeat(64)}`,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      checkedAt: 1,
    });
}

const catalog = async (who: Identity = ANONYMOUS, page: Partial<PageRequest> = {}) => {
  const res = await handler.handle({ who, page: { n: page.n, last: page.last } });
  return {
    res,
    repositories: (JSON.parse((res.body as Buffer).toString()) as { repositories: string[] }).repositories,
  };
};
const alice: Identity = { kind: "user", name: "alice" };

describe("CatalogHandler", () => {
  it("lists what the mirror holds, in lexical order, named as clients pull it, filtered by access", async () => {
    const { res, repositories } = await catalog(alice);
    expect(res.status).toBe(200);
    expect(res.headers["Content-Type"]).toBe("application/json");
    expect(repositories).toEqual([
      "docker.io/ghcr.io/odd",
      "ghcr.io/library/alpine",
      "ghcr.io/team/tool",
      "library/alpine",
      "library/zlib",
      "local/x/y",
      "team/app",
    ]);
    // Anonymous clients may not pull from ghcr.io; bob may not pull team/**; nobody may pull blocked/**.
    expect((await catalog()).repositories).toEqual([
      "docker.io/ghcr.io/odd",
      "library/alpine",
      "library/zlib",
      "local/x/y",
      "team/app",
    ]);
    expect((await catalog({ kind: "user", name: "bob" })).repositories).toEqual([
      "docker.io/ghcr.io/odd",
      "ghcr.io/library/alpine",
      "library/alpine",
      "library/zlib",
      "local/x/y",
    ]);
  });

  it("gives only names that resolve back to the same upstream and repository", async () => {
    const { repositories } = await catalog(alice);
    const back = repositories.map((name) => {
      const { upstream, repo } = resolver.resolve(name, undefined);
      return `${upstream.name} ${repo}`;
    });
    const held = Object.entries(HELD).flatMap(([u, repos]) => repos.map((r) => `${u} ${r}`));
    for (const pair of back) expect(held).toContain(pair);
    // Everything alice may pull is listed, except the repository of an upstream no path can name.
    expect(back.sort()).toEqual(
      held.filter((p) => !p.startsWith("docker.io blocked/") && !p.startsWith("noprefix:1 ")).sort(),
    );
  });

  it("pages like tags/list: n, last, a Link while names follow, n=0 empty", async () => {
    const all = (await catalog(alice)).repositories;
    const walked: string[] = [];
    let last: string | undefined;
    for (let i = 0; i < 10; i++) {
      const { res, repositories } = await catalog(alice, { n: 3, last });
      walked.push(...repositories);
      if (res.headers.Link === undefined) break;
      last = repositories.at(-1);
      expect(res.headers.Link).toBe(
        `</v2/_catalog?${new URLSearchParams({ n: "3", last: last! }).toString()}>; rel="next"`,
      );
    }
    expect(walked).toEqual(all);
    const empty = await catalog(alice, { n: 0 });
    expect(empty.repositories).toEqual([]);
    expect(empty.res.headers.Link).toBeUndefined();
    expect((await catalog(alice, { last: "library/zlib" })).repositories).toEqual(["local/x/y", "team/app"]);
  });
});
