/**
 * Tag freshness against a real upstream registry: TTLs, HEAD-only revalidation, stale-on-error, offline mode
 * and negative caching. Upstream requests are counted at the upstream.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

let upstream: Registry;
const mirrors: TestMirror[] = [];
const image = (n: string): BuiltImage => buildImage({ format: "oci", layers: [randomLayer(10_000)], labels: { n } });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  upstream = await startRegistry();
});
afterAll(async () => {
  for (const m of mirrors) await m.stop();
  await upstream?.dispose();
});

async function mirrorWith(
  upstreamOptions: Record<string, unknown>,
  extra?: Record<string, unknown>,
): Promise<TestMirror> {
  const m = await startTestMirror({
    upstreams: { "docker.io": { url: upstream.url, default: true, ...upstreamOptions } },
    extra,
  });
  mirrors.push(m);
  return m;
}

const getTag = (m: TestMirror, repo: string, tag: string) =>
  fetchRaw(`${m.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });

async function upstreamCounts(repo: string) {
  await upstream.sync();
  return {
    head: upstream.count({ method: "HEAD", kind: "manifests", repo }),
    get: upstream.count({ method: "GET", kind: "manifests", repo }),
  };
}

describe("tag freshness", () => {
  it("serves the old digest within the TTL with zero upstream requests, and the new one after it", async () => {
    const m = await mirrorWith({ tagTtl: "1500ms" });
    const v1 = image("retag-1");
    const v2 = image("retag-2");
    await pushImage(upstream.url, "team/retag", "latest", v1);
    expect((await getTag(m, "team/retag", "latest")).headers["docker-content-digest"]).toBe(v1.digest);
    await pushImage(upstream.url, "team/retag", "latest", v2);
    await upstream.sync();
    upstream.clearRequests();
    const within = await getTag(m, "team/retag", "latest");
    expect(within.headers["docker-content-digest"]).toBe(v1.digest);
    expect(within.headers["x-mirror-cache"]).toBe("hit");
    expect(await upstreamCounts("team/retag")).toEqual({ head: 0, get: 0 });
    await sleep(1600);
    const after = await getTag(m, "team/retag", "latest");
    expect(after.headers["docker-content-digest"]).toBe(v2.digest);
    expect(after.body.equals(v2.manifest)).toBe(true);
    expect(after.headers["x-mirror-cache"]).toBe("miss");
  });

  it("revalidates an unchanged tag with a HEAD only", async () => {
    const m = await mirrorWith({ tagTtl: "300ms" });
    await pushImage(upstream.url, "team/steady", "v1", image("steady"));
    await getTag(m, "team/steady", "v1");
    await sleep(350);
    await upstream.sync();
    upstream.clearRequests();
    const res = await getTag(m, "team/steady", "v1");
    expect(res.headers["x-mirror-cache"]).toBe("revalidated");
    expect(await upstreamCounts("team/steady")).toEqual({ head: 1, get: 0 });
  });

  it("serves the last known digest, marked stale, when the upstream is down past the TTL", async () => {
    const m = await mirrorWith({ tagTtl: "200ms", timeouts: { connect: "1s" } });
    const v1 = image("stale");
    await pushImage(upstream.url, "team/stale", "v1", v1);
    await getTag(m, "team/stale", "v1");
    await sleep(250);
    await upstream.stop();
    try {
      const res = await getTag(m, "team/stale", "v1");
      expect(res.status).toBe(200);
      expect(res.body.equals(v1.manifest)).toBe(true);
      expect(res.headers["x-mirror-cache"]).toBe("stale");
      expect(res.headers.warning).toBe('110 - "Response is Stale"');
      const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
      expect(metrics).toMatch(/mirror_stale_served_total\{upstream="docker.io",reason="UNAVAILABLE"\} 1/);
    } finally {
      await upstream.start();
    }
  });

  it("offline: true never contacts the upstream, serves what is cached, and says MANIFEST_UNKNOWN for the rest, quickly", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "offline-"));
    const online = await startTestMirror({ upstreams: { "docker.io": { url: upstream.url, default: true } }, dataDir });
    const v1 = image("offline");
    await pushImage(upstream.url, "team/offline", "v1", v1);
    await pushImage(upstream.url, "team/offline", "v2", image("offline-2"));
    await getTag(online, "team/offline", "v1");
    for (const blob of v1.blobs()) await fetchRaw(`${online.url}/v2/team/offline/blobs/${blob.digest}`);
    await online.stop();
    // A restart over the same cache directory, now offline: tags and links come back from the journal.
    const offline = await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, offline: true } },
      dataDir,
    });
    mirrors.push(offline);
    await upstream.sync();
    upstream.clearRequests();
    const cached = await getTag(offline, "team/offline", "v1");
    expect(cached.status).toBe(200);
    expect(cached.body.equals(v1.manifest)).toBe(true);
    for (const blob of v1.blobs())
      expect((await fetchRaw(`${offline.url}/v2/team/offline/blobs/${blob.digest}`)).status).toBe(200);
    const started = Date.now();
    const missing = await getTag(offline, "team/offline", "v2");
    expect(missing.status).toBe(404);
    expect(errorCode(missing)).toBe("MANIFEST_UNKNOWN");
    expect(missing.body.toString()).toMatch(/offline/);
    expect(Date.now() - started).toBeLessThan(1000);
    const blob = await fetchRaw(`${offline.url}/v2/team/offline/blobs/sha256:${"1".repeat(64)}`);
    expect(errorCode(blob)).toBe("BLOB_UNKNOWN");
    await upstream.sync();
    expect(upstream.requests()).toEqual([]);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("a restarted mirror (embedded store) serves its cached tags with the upstream stopped", async () => {
    const dataDir = await mkdtemp(join(tmpdir(), "restart-"));
    const v1 = image("restart");
    await pushImage(upstream.url, "team/restart", "v1", v1);
    const first = await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "1ms", timeouts: { connect: "1s" } } },
      dataDir,
    });
    await getTag(first, "team/restart", "v1");
    for (const blob of v1.blobs()) await fetchRaw(`${first.url}/v2/team/restart/blobs/${blob.digest}`);
    await first.stop();
    await upstream.stop();
    try {
      const second = await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "1ms", timeouts: { connect: "1s" } } },
        dataDir,
      });
      mirrors.push(second);
      const res = await getTag(second, "team/restart", "v1");
      expect(res.status).toBe(200);
      expect(res.body.equals(v1.manifest)).toBe(true);
      expect(res.headers["x-mirror-cache"]).toBe("stale");
      for (const blob of v1.blobs())
        expect((await fetchRaw(`${second.url}/v2/team/restart/blobs/${blob.digest}`)).status).toBe(200);
    } finally {
      await upstream.start();
    }
    await rm(dataDir, { recursive: true, force: true });
  });

  it("remembers an upstream 404 for negativeTtl, so a storm of misses reaches the upstream once", async () => {
    const m = await mirrorWith({ negativeTtl: "1s" });
    await upstream.sync();
    upstream.clearRequests();
    const results = [];
    for (let i = 0; i < 10; i++) results.push(await getTag(m, "team/ghost", "nope"));
    expect(results.every((r) => r.status === 404 && errorCode(r) === "MANIFEST_UNKNOWN")).toBe(true);
    const first = await upstreamCounts("team/ghost");
    expect(first.head + first.get).toBe(1);
    // Once the negative entry expires, a tag that now exists is found.
    await pushImage(upstream.url, "team/ghost", "nope", image("ghost"));
    await sleep(1100);
    expect((await getTag(m, "team/ghost", "nope")).status).toBe(200);
  });

  it("digest references never expire: served from cache with the upstream down, whatever the TTL", async () => {
    const m = await mirrorWith({ tagTtl: "1ms" });
    const v1 = image("digest-forever");
    await pushImage(upstream.url, "team/forever", "v1", v1);
    await getTag(m, "team/forever", "v1");
    await upstream.stop();
    try {
      const res = await getTag(m, "team/forever", v1.digest);
      expect(res.status).toBe(200);
      expect(res.headers["x-mirror-cache"]).toBe("hit");
    } finally {
      await upstream.start();
    }
  });
});
