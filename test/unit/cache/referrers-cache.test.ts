// ReferrersCache.get() and record(): where a referrers list comes from (the upstream's API, else its fallback tag,
// else none), how long it is trusted, when the last known list is served stale, and what each way leaves in the
// stores. Real manifest and metadata stores on a temp dir; the upstream client and the manifest cache (through
// which the fallback tag is read) are fakes that answer what the test says and record what they were asked.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ManifestCache, ManifestResult } from "../../../src/cache/manifest-cache.ts";
import { ReferrersCache, referrersKey } from "../../../src/cache/referrers-cache.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { Metrics } from "../../../src/observability/metrics.ts";
import { digestOf } from "../../../src/oci/digest.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import type { ManifestReference } from "../../../src/oci/reference.ts";
import { renderReferrersIndex, type ReferrerDescriptor } from "../../../src/oci/referrers.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

const INDEX = "application/vnd.oci.image.index.v1+json";
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const TTL_MS = 60_000;
const SUBJECT = `sha256:${"5".repeat(64)}`;
const FALLBACK_TAG = `sha256-${"5".repeat(64)}`;
const ref = (n: number, artifactType = "application/vnd.x.sig"): ReferrerDescriptor => ({
  mediaType: MANIFEST,
  digest: `sha256:${String(n).repeat(64).slice(0, 64)}`,
  size: 100 + n,
  artifactType,
});

/** The upstream's referrers API: a list, "no-api" (404), or a failure; each call recorded. */
class FakeUpstream {
  readonly name = "u";
  readonly config = { tagTtl: TTL_MS, offline: false, revalidateTimeout: 2_000, staleWhileRevalidate: false };
  readonly asked: string[] = [];
  answer: ReferrerDescriptor[] | "no-api" | RegistryError = "no-api";
  during: () => Promise<void> | void = () => undefined;

  get client(): UpstreamClient {
    return this as unknown as UpstreamClient;
  }

  async getReferrers(repo: string, digest: string) {
    this.asked.push(`referrers ${repo} ${digest}`);
    await this.during();
    if (this.config.offline) throw new RegistryError("UNAVAILABLE", "offline by configuration");
    if (this.answer instanceof RegistryError) throw this.answer;
    return this.answer === "no-api"
      ? ({ kind: "no-api" } as const)
      : ({ kind: "index", referrers: this.answer } as const);
  }
}

/** The manifest cache as the fallback path sees it: a tag answers a manifest (marked as the test says), or fails. */
class FakeManifestCache {
  readonly asked: string[] = [];
  fallback: { bytes: Buffer; source: ManifestResult["source"] } | RegistryError = new RegistryError("MANIFEST_UNKNOWN");

  get cache(): ManifestCache {
    return this as unknown as ManifestCache;
  }

  async get(_upstream: UpstreamClient, repo: string, reference: ManifestReference): Promise<ManifestResult> {
    this.asked.push(`${repo} ${reference.kind === "tag" ? reference.tag : reference.digest}`);
    if (this.fallback instanceof RegistryError) throw this.fallback;
    const { bytes, source } = this.fallback;
    return { manifest: { digest: digestOf(bytes), mediaType: INDEX, bytes }, source };
  }
}

let dir: string;
let blobs: BlobStore;
let manifests: ManifestStore;
let metadata: EmbeddedMetadataStore;
let metrics: Metrics;
let clock: number;
let up: FakeUpstream;
let manifestCache: FakeManifestCache;
let cache: ReferrersCache;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "referrers-cache-"));
  blobs = new BlobStore(dir);
  await blobs.init();
  manifests = new ManifestStore(blobs);
  await manifests.init();
  metadata = new EmbeddedMetadataStore();
  metrics = new Metrics(new Registry(), { processMetrics: false });
  clock = 1_700_000_000_000;
  up = new FakeUpstream();
  manifestCache = new FakeManifestCache();
  cache = new ReferrersCache({
    manifestCache: manifestCache.cache,
    manifests,
    metadata,
    maxBytes: 1 << 20,
    now: () => clock,
    metrics,
  });
});
afterEach(async () => {
  await metadata.close();
  await rm(dir, { recursive: true, force: true });
});

const get = () => cache.get(up.client, "app", SUBJECT);

/** Polls `check` until it holds, at most 2 s. */
async function waitUntil(check: () => Promise<boolean>): Promise<void> {
  for (const started = Date.now(); Date.now() - started < 2_000; await new Promise((r) => setTimeout(r, 10)))
    if (await check()) return;
  throw new Error("condition not met within 2 s");
}

describe("where a list comes from", () => {
  it("the upstream's referrers API, when it has one: stored, pointed at, and trusted for the TTL", async () => {
    up.answer = [ref(1), ref(2)];
    expect(await get()).toEqual({ referrers: [ref(1), ref(2)], source: "miss" });
    const pointer = await metadata.getTag("u", "app", referrersKey(SUBJECT));
    expect(pointer).toEqual({
      digest: digestOf(renderReferrersIndex([ref(1), ref(2)])),
      mediaType: INDEX,
      checkedAt: clock,
    });
    expect((await manifests.get(pointer!.digest))?.mediaType).toBe(INDEX);
    clock += TTL_MS - 1;
    expect(await get()).toEqual({ referrers: [ref(1), ref(2)], source: "hit" });
    expect(up.asked).toHaveLength(1);
    expect(manifestCache.asked).toEqual([]);
  });

  it("an upstream without the API (404): the fallback tag's index, read through the manifest cache", async () => {
    manifestCache.fallback = { bytes: renderReferrersIndex([ref(3)]), source: "miss" };
    expect(await get()).toEqual({ referrers: [ref(3)], source: "miss" });
    expect(manifestCache.asked).toEqual([`app ${FALLBACK_TAG}`]);
    expect(await metadata.getTag("u", "app", referrersKey(SUBJECT))).toBeDefined();
  });

  it("no fallback tag (or no repository): no referrers, an empty list, remembered like any list", async () => {
    expect(await get()).toEqual({ referrers: [], source: "miss" });
    manifestCache.fallback = new RegistryError("NAME_UNKNOWN");
    clock += TTL_MS;
    expect(await get()).toEqual({ referrers: [], source: "revalidated" });
    expect(await get()).toEqual({ referrers: [], source: "hit" });
  });

  it("a fallback tag that is no referrers index is an upstream error, and nothing is recorded", async () => {
    manifestCache.fallback = { bytes: Buffer.from('{"schemaVersion":2,"config":{}}'), source: "miss" };
    await expect(get()).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
    expect(await metadata.getTag("u", "app", referrersKey(SUBJECT))).toBeUndefined();
  });

  it("a fallback tag the manifest cache could only serve stale answers stale, and is not recorded as confirmed", async () => {
    manifestCache.fallback = { bytes: renderReferrersIndex([ref(4)]), source: "stale" };
    expect(await get()).toEqual({ referrers: [ref(4)], source: "stale" });
    expect(await metadata.getTag("u", "app", referrersKey(SUBJECT))).toBeUndefined();
  });

  it("concurrent requests for one list share one upstream request", async () => {
    up.answer = [ref(1)];
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    up.during = () => held;
    const all = Promise.all([get(), get(), get()]);
    await new Promise((r) => setTimeout(r, 20));
    release();
    expect((await all).map((r) => r.referrers)).toEqual([[ref(1)], [ref(1)], [ref(1)]]);
    expect(up.asked).toHaveLength(1);
  });
});

describe("past the TTL", () => {
  beforeEach(async () => {
    up.answer = [ref(1)];
    await get();
    clock += TTL_MS;
  });

  it("asks again: an unchanged list is revalidated, a changed one replaces it", async () => {
    expect((await get()).source).toBe("revalidated");
    clock += TTL_MS;
    up.answer = [ref(1), ref(2)];
    expect(await get()).toEqual({ referrers: [ref(1), ref(2)], source: "miss" });
    expect(up.asked).toHaveLength(3);
  });

  for (const code of ["UNAVAILABLE", "UPSTREAM_ERROR", "TOOMANYREQUESTS"] as const)
    it(`serves the last known list, stale, when the upstream fails with ${code}`, async () => {
      up.answer = new RegistryError(code);
      expect(await get()).toEqual({ referrers: [ref(1)], source: "stale" });
      const { values } = await metrics.staleServed.get();
      expect(values.find((v) => v.labels.reason === code)?.value).toBe(1);
    });

  it("waits at most revalidateTimeout, then serves the known list stale; the late answer is recorded when it comes", async () => {
    up.config.revalidateTimeout = 50;
    let release!: () => void;
    up.during = () => new Promise<void>((r) => (release = r));
    up.answer = [ref(1), ref(2)];
    expect(await get()).toEqual({ referrers: [ref(1)], source: "stale" });
    const { values } = await metrics.staleServed.get();
    expect(values.find((v) => v.labels.reason === "DEADLINE")?.value).toBe(1);
    release();
    up.during = () => undefined;
    await waitUntil(async () => (await get()).source === "hit");
    expect((await get()).referrers).toEqual([ref(1), ref(2)]);
    expect(up.asked).toHaveLength(2);
  });

  it("with staleWhileRevalidate, serves the known list at once and refreshes it in the background", async () => {
    up.config.staleWhileRevalidate = true;
    up.answer = [ref(3)];
    expect(await get()).toEqual({ referrers: [ref(1)], source: "stale" });
    await waitUntil(async () => (await get()).source === "hit");
    expect((await get()).referrers).toEqual([ref(3)]);
  });

  it("passes on what is not an outage (a refusal), stale list or not", async () => {
    up.answer = new RegistryError("DENIED");
    await expect(get()).rejects.toMatchObject({ code: "DENIED" });
  });

  it("a list whose index was evicted from the store is asked again, as if never known", async () => {
    const pointer = await metadata.getTag("u", "app", referrersKey(SUBJECT));
    await blobs.delete(pointer!.digest);
    expect(await manifests.get(pointer!.digest)).toBeUndefined();
    up.answer = new RegistryError("UNAVAILABLE");
    await expect(get()).rejects.toMatchObject({ code: "UNAVAILABLE" });
  });
});

describe("an upstream that is offline by configuration", () => {
  it("answers an empty list, stale, when nothing is known; the known list otherwise", async () => {
    up.config.offline = true;
    expect(await get()).toEqual({ referrers: [], source: "stale" });
    expect(await metadata.getTag("u", "app", referrersKey(SUBJECT))).toBeUndefined();
    await cache.record("u", "app", SUBJECT, [ref(1)], clock - TTL_MS);
    expect(await get()).toEqual({ referrers: [ref(1)], source: "stale" });
  });
});

describe("record (import)", () => {
  it("adds to the known list (a digest in both takes the new descriptor) and stamps the pointer", async () => {
    up.answer = [ref(1), ref(2)];
    await get();
    const newer = { ...ref(2), annotations: { a: "b" } };
    const digest = await cache.record("u", "app", SUBJECT, [newer, ref(3)], clock + 5);
    expect(await metadata.getTag("u", "app", referrersKey(SUBJECT))).toEqual({
      digest,
      mediaType: INDEX,
      checkedAt: clock + 5,
    });
    expect(await get()).toEqual({ referrers: [ref(1), newer, ref(3)], source: "hit" });
    expect(up.asked).toHaveLength(1);
  });
});
