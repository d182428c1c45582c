/**
 * Cache policy against a real upstream registry (issue 24): idle expiry (`storage.maxIdle`) with pins exempt,
 * and per-repository rules: `immutable` tags never revalidated, `cache: false` passed through verified with
 * nothing stored, a rule's `maxIdle`. Upstream traffic is counted in the upstream's own log.
 */
import { createHash } from "node:crypto";
import { mkdtemp, readdir, rm, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { BlobStore } from "../../src/storage/blob-store.ts";
import { SNAPSHOT_FILE } from "../../src/storage/index-snapshot.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const ADMIN_TOKEN = "cache-policy-admin-token";
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
});

const image = (label: string): BuiltImage =>
  buildImage({ format: "oci", layers: [randomLayer(50_000)], labels: { label } });
/** The manifest, config and layers of an image: everything a pull stores. */
const contentOf = (i: BuiltImage) => [i.digest, ...i.blobs().map((b) => b.digest)];

async function mirrorWith(extra: Record<string, unknown>, upstreamOptions: Record<string, unknown> = {}) {
  return teardown.track(
    await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true, ...upstreamOptions } },
      extra: { admin: { token: ADMIN_TOKEN }, ...extra },
    }),
  );
}

/** Pulls a tag as dockerd does (manifest by tag, then every blob), checking every byte against its digest. */
async function pull(m: TestMirror, repo: string, tag: string, i: BuiltImage): Promise<string[]> {
  const manifest = await fetchRaw(`${m.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(manifest.status).toBe(200);
  expect(sha256(manifest.body)).toBe(i.digest);
  const results = [manifest.headers["x-mirror-cache"] as string];
  for (const blob of i.blobs()) {
    const res = await fetchRaw(`${m.url}/v2/${repo}/blobs/${blob.digest}`);
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(blob.digest);
    results.push(res.headers["x-mirror-cache"] as string);
  }
  return results;
}

async function adminTags(m: TestMirror, repository: string): Promise<string[]> {
  const res = await fetchRaw(`${m.url}/admin/v1/tags?upstream=docker.io&repository=${repository}`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  expect(res.status).toBe(200);
  return (JSON.parse(res.body.toString()) as { tags: Array<{ tag: string }> }).tags.map((t) => t.tag);
}

async function upstreamCount(repo: string): Promise<number> {
  await upstream.sync();
  return upstream.requests().filter((r) => r.repo === repo).length;
}

describe("idle expiry (storage.maxIdle)", () => {
  it("expires content nobody pulled for maxIdle with its tag pointer, keeps pinned content, counts reason=idle", async () => {
    const kept = image("kept");
    const idle = image("idle");
    await pushImage(upstream.url, "idle/kept", "v1", kept);
    await pushImage(upstream.url, "idle/gone", "v1", idle);
    const m = await mirrorWith({ storage: { maxIdle: "2s", checkInterval: "1s", pinned: ["docker.io/idle/kept:v1"] } });
    await pull(m, "idle/kept", "v1", kept);
    await pull(m, "idle/gone", "v1", idle);
    const store = m.mirror.blobStore;
    expect([...contentOf(kept), ...contentOf(idle)].every((d) => store.index.has(d))).toBe(true);
    expect(await adminTags(m, "idle/gone")).toEqual(["v1"]);

    await waitFor(async () => contentOf(idle).every((d) => !store.index.has(d)), {
      timeoutMs: 20_000,
      what: "the idle image to be expired",
    });
    // Gone from the disk too, not only from the index; the pinned image, just as idle, stays whole.
    const files = (await readdir(join(m.dataDir, "blobs", "sha256"), { recursive: true })).map(String);
    for (const d of contentOf(idle)) expect(files.some((f) => f.endsWith(d.slice(7)))).toBe(false);
    expect(contentOf(kept).every((d) => store.index.has(d))).toBe(true);
    await waitFor(async () => (await adminTags(m, "idle/gone")).length === 0, {
      timeoutMs: 5_000,
      what: "the tag pointer to the expired manifest to be forgotten",
    });
    expect(await adminTags(m, "idle/kept")).toEqual(["v1"]);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    const idleEvictions = Number(/^mirror_evictions_total\{reason="idle"\} (\d+)$/m.exec(metrics)?.[1]);
    expect(idleEvictions).toBeGreaterThanOrEqual(contentOf(idle).length);
    expect(metrics).not.toMatch(/mirror_evictions_total\{reason="budget"\}/);

    // Pulled again, it comes from the upstream, verified.
    upstream.clearRequests();
    expect(await pull(m, "idle/gone", "v1", idle)).not.toContain("hit");
    expect(await upstreamCount("idle/gone")).toBeGreaterThan(0);
  });

  it("keeps content a rule gives maxIdle: 0 while storage.maxIdle expires the rest", async () => {
    const forever = image("forever");
    const other = image("other");
    await pushImage(upstream.url, "base/forever", "v1", forever);
    await pushImage(upstream.url, "apps/other", "v1", other);
    const m = await mirrorWith({
      storage: { maxIdle: "2s", checkInterval: "1s" },
      rules: [{ match: "docker.io/base/*", maxIdle: 0 }],
    });
    await pull(m, "base/forever", "v1", forever);
    await pull(m, "apps/other", "v1", other);
    const store = m.mirror.blobStore;
    await waitFor(async () => contentOf(other).every((d) => !store.index.has(d)), {
      timeoutMs: 20_000,
      what: "content without a rule to be expired",
    });
    expect(contentOf(forever).every((d) => store.index.has(d))).toBe(true);
  });
});

describe("idle expiry and warm-up sets", () => {
  it("keeps what a warm-up set holds, however long nobody pulls it, while the rest expires", async () => {
    const warm = image("warm");
    const cold = image("cold");
    await pushImage(upstream.url, "warm/kept", "v1", warm);
    await pushImage(upstream.url, "warm/other", "v1", cold);
    const m = await mirrorWith({
      storage: { maxIdle: "2s", checkInterval: "1s" },
      warmup: [{ name: "base", every: "1h", firstRunAfter: 0, images: ["docker.io/warm/kept:v1"] }],
    });
    const store = m.mirror.blobStore;
    await waitFor(async () => contentOf(warm).every((d) => store.index.has(d)), {
      timeoutMs: 20_000,
      what: "the warm-up set's first run",
    });
    await pull(m, "warm/other", "v1", cold);
    await waitFor(async () => contentOf(cold).every((d) => !store.index.has(d)), {
      timeoutMs: 20_000,
      what: "the pulled image nobody pulls again to be expired",
    });
    // Fetched by the warm-up before the other image was even pulled, and never pulled since: still whole.
    expect(contentOf(warm).every((d) => store.index.has(d))).toBe(true);
  });
});

describe("idle expiry across a restart", () => {
  it("reads last pulls and rule limits back: time stopped counts, a rule's longer limit still holds", async () => {
    const plain = image("restart-plain");
    const kept = image("restart-kept");
    await pushImage(upstream.url, "restart/plain", "v1", plain);
    await pushImage(upstream.url, "keep/long", "v1", kept);
    const dataDir = await mkdtemp(join(tmpdir(), "cache-policy-"));
    teardown.add("restart data dir", () => rm(dataDir, { recursive: true, force: true }));
    const start = () =>
      startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        dataDir,
        extra: { storage: { maxIdle: "1h" }, rules: [{ match: "docker.io/keep/*", maxIdle: "3h" }] },
      });
    const first = await start();
    await pull(first, "restart/plain", "v1", plain);
    await pull(first, "keep/long", "v1", kept);
    const firstStore = first.mirror.blobStore;
    if (!(firstStore instanceof BlobStore)) throw new Error("expected the filesystem content store");
    const pathOf = (d: string) => firstStore.pathOf(d);
    const all = [...contentOf(plain), ...contentOf(kept)];
    const paths = new Map(all.map((d) => [d, pathOf(d)]));
    await first.stop();
    // Two hours pass while the mirror is stopped: every recorded last pull is two hours old. The test makes them
    // so by rewriting the files' times, which only a scan reads: the index snapshot of the clean stop holds the
    // times as they were (index-snapshot.ts), so it is removed, as after a crash.
    await rm(join(dataDir, SNAPSHOT_FILE));
    const then = (Date.now() - 2 * 3_600_000) / 1000;
    for (const path of paths.values()) await utimes(path, then, then);
    const second = teardown.track(await start());
    // The check at start-up expired what was idle past storage.maxIdle; the rule's 3 h came back from disk.
    const store = second.mirror.blobStore;
    expect(contentOf(plain).filter((d) => store.index.has(d))).toEqual([]);
    expect(contentOf(kept).every((d) => store.index.has(d))).toBe(true);
  });
});

describe("per-repository rules", () => {
  it("an immutable rule makes zero upstream requests after the TTL; a tag its regex does not fit is revalidated", async () => {
    const release = image("release");
    const latest = image("latest");
    await pushImage(upstream.url, "library/tool", "1.2.3", release);
    await pushImage(upstream.url, "library/tool", "latest", latest);
    const m = await mirrorWith(
      { rules: [{ match: "docker.io/library/*", tags: "^v?[0-9]+(\\.[0-9]+)*$", immutable: true }] },
      { tagTtl: "300ms" },
    );
    expect(await pull(m, "library/tool", "1.2.3", release)).toContain("miss");
    await pull(m, "library/tool", "latest", latest);
    // Past the upstream's TTL several times over.
    await new Promise((r) => setTimeout(r, 1_000));
    upstream.clearRequests();
    expect(await pull(m, "library/tool", "1.2.3", release)).toEqual(contentOf(release).map(() => "hit"));
    expect(await upstreamCount("library/tool")).toBe(0);
    // The same repository's `latest` is not immutable: past its TTL, the upstream is asked.
    const res = await fetchRaw(`${m.url}/v2/library/tool/manifests/latest`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(res.headers["x-mirror-cache"]).toBe("revalidated");
    expect(await upstreamCount("library/tool")).toBe(1);
  });

  it("a rule's tagTtl replaces the upstream's", async () => {
    const i = image("ttl");
    await pushImage(upstream.url, "ttl/app", "v1", i);
    const m = await mirrorWith({ rules: [{ match: "docker.io/ttl/*", tagTtl: "1h" }] }, { tagTtl: "200ms" });
    await pull(m, "ttl/app", "v1", i);
    await new Promise((r) => setTimeout(r, 500));
    upstream.clearRequests();
    const res = await fetchRaw(`${m.url}/v2/ttl/app/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(res.headers["x-mirror-cache"]).toBe("hit");
    expect(await upstreamCount("ttl/app")).toBe(0);
  });

  it("cache: false serves verified bytes and leaves nothing in the store, every pull going upstream", async () => {
    const passed = image("passed");
    const cached = image("cached");
    await pushImage(upstream.url, "private/passed", "v1", passed);
    await pushImage(upstream.url, "public/cached", "v1", cached);
    const m = await mirrorWith({ rules: [{ match: "docker.io/private/**", cache: false }] });
    for (let round = 0; round < 2; round++) {
      upstream.clearRequests();
      expect(await pull(m, "private/passed", "v1", passed)).toEqual(["miss", ...passed.blobs().map(() => "uncached")]);
      // Every manifest and blob came from the upstream, in every round.
      await upstream.sync();
      expect(upstream.count({ method: "GET", kind: "blobs", repo: "private/passed" })).toBe(passed.blobs().length);
      expect(upstream.count({ method: "GET", kind: "manifests", repo: "private/passed" })).toBe(1);
    }
    // A digest request and a HEAD pass through too.
    const byDigest = await fetchRaw(`${m.url}/v2/private/passed/manifests/${passed.digest}`, {
      headers: { accept: ALL_MANIFEST_TYPES },
    });
    expect(sha256(byDigest.body)).toBe(passed.digest);
    const layer = passed.layers[0]!;
    const head = await fetchRaw(`${m.url}/v2/private/passed/blobs/${layer.digest}`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers["content-length"]).toBe(String(layer.bytes.length));
    // Referrers lists (rendered as an index, stored for other repositories) are not kept either.
    const referrers = await fetchRaw(`${m.url}/v2/private/passed/referrers/${passed.digest}`);
    expect(referrers.status).toBe(200);
    expect(JSON.parse(referrers.body.toString())).toMatchObject({ manifests: [] });
    const store = m.mirror.blobStore;
    expect(store.index.objects).toBe(0);
    expect(contentOf(passed).some((d) => store.index.has(d))).toBe(false);
    expect(await adminTags(m, "private/passed")).toEqual([]);
    // Another repository, without the rule, is cached as usual: the store is not simply broken.
    await pull(m, "public/cached", "v1", cached);
    expect(contentOf(cached).every((d) => store.index.has(d))).toBe(true);
    const files = (await readdir(join(m.dataDir, "blobs", "sha256"), { recursive: true })).map(String);
    for (const d of contentOf(passed)) expect(files.some((f) => f.endsWith(d.slice(7)))).toBe(false);
    expect(files.filter((f) => /[0-9a-f]{64}$/.test(f))).toHaveLength(contentOf(cached).length);
  });
});
