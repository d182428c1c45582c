// ManifestCache.get(), purge() and refresh(): every way a manifest is answered (from the store, fetched,
// revalidated, served stale) or refused, by digest and by tag, and what each way leaves in the stores (content,
// tag pointers, links, provenance, 404 records). How pointers are stamped and ordered when answers arrive late is
// in manifest-cache-revalidation.test.ts.
// Real manifest, blob and metadata stores on a temp dir; the upstream is a fake that answers from what the test
// put in it, records what it was asked, and can fail, hold or tamper with its answers.
import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ManifestCache } from "../../../src/cache/manifest-cache.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { Metrics } from "../../../src/observability/metrics.ts";
import { RegistryError, type ErrorCode } from "../../../src/oci/errors.ts";
import { isSha256Digest } from "../../../src/oci/digest.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";
import { waitFor } from "../../harness/processes.ts";

const MT = "application/vnd.oci.image.manifest.v1+json";
const TTL_MS = 60_000;
const LATEST = { kind: "tag", tag: "latest" } as const;
const UNWELL: ErrorCode[] = ["UNAVAILABLE", "UPSTREAM_ERROR", "TOOMANYREQUESTS"];

const digestOf = (bytes: Buffer | string) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
const byDigest = (digest: string) => ({ kind: "digest", digest }) as const;
const configOf = (n: number) => digestOf(`config ${n}`);
const layerOf = (n: number) => digestOf(`layer ${n}`);
/** An image manifest naming a config and a layer of its own. */
const manifest = (n: number) =>
  Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MT,
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: configOf(n), size: 10 },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: layerOf(n), size: 10 }],
    }),
  );

/**
 * An upstream that answers from the manifests and tags put in it (the same for every repository), records each
 * request as "HEAD <reference>" or "GET <reference>", and fails like the real client: MANIFEST_UNKNOWN for what
 * it does not hold, UNAVAILABLE when offline by configuration, `failure` for everything when set.
 */
class FakeUpstream {
  readonly name: string;
  /** revalidateTimeout long by default: a held request is waited for, unless a test is about the deadline. */
  readonly config = {
    tagTtl: TTL_MS,
    offline: false,
    negativeTtl: 0,
    revalidateTimeout: 60_000,
    staleWhileRevalidate: false,
  };
  readonly asked: string[] = [];
  /** When set, every request fails with it (an outage, a 5xx, a rate limit, a refusal). */
  failure: RegistryError | undefined;
  /** Runs inside every request before it answers: hold it, count it. */
  during: (request: string) => Promise<void> | void = () => undefined;
  /** HEAD answers without a Docker-Content-Digest header. */
  headWithoutDigest = false;
  /** What a GET sends instead of the stored answer: other bytes, another Docker-Content-Digest. */
  tamper: { bytes?: Buffer; digest?: string } | undefined;
  private readonly tags = new Map<string, Buffer>();
  private readonly content = new Map<string, Buffer>();

  constructor(name = "u") {
    this.name = name;
  }

  get client(): UpstreamClient {
    return this as unknown as UpstreamClient;
  }

  hold(bytes: Buffer): this {
    this.content.set(digestOf(bytes), bytes);
    return this;
  }

  tag(tag: string, bytes: Buffer): this {
    this.tags.set(tag, bytes);
    return this.hold(bytes);
  }

  untag(tag: string): void {
    this.tags.delete(tag);
  }

  async headManifest(_repo: string, reference: string) {
    const bytes = await this.answer(`HEAD ${reference}`, reference);
    return { digest: this.headWithoutDigest ? undefined : digestOf(bytes), mediaType: MT, size: bytes.length };
  }

  async getManifest(_repo: string, reference: string, _maxBytes: number) {
    const bytes = await this.answer(`GET ${reference}`, reference);
    return { bytes: this.tamper?.bytes ?? bytes, mediaType: MT, digest: this.tamper?.digest ?? digestOf(bytes) };
  }

  private async answer(request: string, reference: string): Promise<Buffer> {
    this.asked.push(request);
    await this.during(request);
    if (this.config.offline)
      throw new RegistryError("UNAVAILABLE", `upstream ${this.name} is offline by configuration`, {
        detail: { upstream: this.name, offline: true },
      });
    if (this.failure) throw this.failure;
    const bytes = isSha256Digest(reference) ? this.content.get(reference) : this.tags.get(reference);
    if (bytes === undefined)
      throw new RegistryError("MANIFEST_UNKNOWN", undefined, { detail: { upstream: this.name, status: 404 } });
    return bytes;
  }
}

/** A promise the test resolves when it chooses. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

let dir: string;
let manifests: ManifestStore;
let blobs: BlobStore;
let metadata: EmbeddedMetadataStore;
let metrics: Metrics;
let noSpace: Error[];
let clock: number;
let cache: ManifestCache;
let up: FakeUpstream;
const [m1, m2, m3] = [manifest(1), manifest(2), manifest(3)];
const [d1, d2] = [digestOf(m1), digestOf(m2)];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "manifest-cache-"));
  blobs = new BlobStore(dir);
  await blobs.init();
  manifests = new ManifestStore(blobs);
  await manifests.init();
  metadata = new EmbeddedMetadataStore();
  metrics = new Metrics(new Registry(), { processMetrics: false });
  noSpace = [];
  clock = 1_700_000_000_000;
  cache = new ManifestCache({
    manifests,
    metadata,
    maxBytes: 1 << 20,
    now: () => clock,
    metrics,
    onNoSpace: (err) => noSpace.push(err),
  });
  up = new FakeUpstream();
});
afterEach(async () => {
  vi.restoreAllMocks();
  await metadata.close();
  await rm(dir, { recursive: true, force: true });
});

/** Puts `bytes` in the store as if cached earlier, with the records given (none: content cached before provenance). */
async function cached(
  bytes: Buffer,
  records: { servedBy?: string[]; linkedIn?: Array<[upstream: string, repo: string]> } = {},
): Promise<void> {
  await manifests.put(digestOf(bytes), MT, bytes);
  for (const upstream of records.servedBy ?? []) await metadata.addProvenance(upstream, [digestOf(bytes)]);
  for (const [upstream, repo] of records.linkedIn ?? []) await metadata.addLinks(upstream, repo, [digestOf(bytes)]);
}

/** A pointer for app:`tag` of upstream u, checked `ageMs` ago. */
function pointTag(tag: string, bytes: Buffer, ageMs: number): Promise<void> {
  return metadata.putTag("u", "app", tag, { digest: digestOf(bytes), mediaType: MT, checkedAt: clock - ageMs });
}

/** mirror_stale_served_total for upstream u and `reason`. */
async function staleServed(reason: string): Promise<number> {
  const { values } = await metrics.staleServed.get();
  return values
    .filter((v) => v.labels.upstream === "u" && v.labels.reason === reason)
    .reduce((sum, v) => sum + v.value, 0);
}

/** Resolves once `count` calls to the metadata store's isMissing have answered: each caller is then past its checks. */
async function callersPastChecks(isMissing: { mock: { settledResults: unknown[] } }, count: number): Promise<void> {
  await waitFor(async () => isMissing.mock.settledResults.length >= count, {
    timeoutMs: 5_000,
    intervalMs: 10,
    what: `${count} requests to reach the upstream step`,
  });
  await new Promise((resolve) => setImmediate(resolve));
}

describe("ManifestCache.get by digest", () => {
  it("fetches a digest it does not hold, verifies and stores it, and records the repository and this upstream", async () => {
    up.hold(m1);
    const result = await cache.get(up.client, "app", byDigest(d1));
    expect(result.source).toBe("miss");
    expect(result.manifest).toEqual({ digest: d1, mediaType: MT, bytes: m1 });
    expect(up.asked).toEqual([`GET ${d1}`]);
    expect((await manifests.get(d1))?.bytes.equals(m1)).toBe(true);
    expect(await metadata.provenance(d1)).toEqual(["u"]);
    // Linked to the manifest and to what its registry had to hold in the repository to accept it.
    for (const digest of [d1, configOf(1), layerOf(1)]) expect(await metadata.hasLink("u", "app", digest)).toBe(true);
    expect(await metadata.hasLink("u", "other", d1)).toBe(false);
    expect(await metadata.listTags("u", "app")).toEqual([]);
  });

  it("serves a digest this upstream served for this repository from the store, asking nothing, whatever the tag TTL", async () => {
    up.hold(m1);
    await cache.get(up.client, "app", byDigest(d1));
    clock += 10 * TTL_MS;
    const result = await cache.get(up.client, "app", byDigest(d1));
    expect(result.source).toBe("hit");
    expect(result.manifest.bytes.equals(m1)).toBe(true);
    expect(up.asked).toEqual([`GET ${d1}`]);
  });

  it("content this upstream served for another repository is confirmed in this one by a HEAD, then linked", async () => {
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "other"]] });
    up.hold(m1);
    expect(await cache.get(up.client, "app", byDigest(d1))).toMatchObject({ source: "hit", manifest: { digest: d1 } });
    expect(up.asked).toEqual([`HEAD ${d1}`]);
    expect(await metadata.hasLink("u", "app", d1)).toBe(true);
    expect((await cache.get(up.client, "app", byDigest(d1))).source).toBe("hit");
    expect(up.asked).toHaveLength(1);
  });

  it("a HEAD saying this repository has no such manifest answers MANIFEST_UNKNOWN, though the bytes are stored", async () => {
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "other"]] });
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    expect(up.asked).toEqual([`HEAD ${d1}`]);
    expect(await metadata.hasLink("u", "app", d1)).toBe(false);
  });

  it("when the HEAD cannot confirm the repository, a GET is tried and its failure is what the client hears", async () => {
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "other"]] });
    up.failure = new RegistryError("UNAVAILABLE");
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(up.asked).toEqual([`HEAD ${d1}`, `GET ${d1}`]);
    expect(await staleServed("UNAVAILABLE")).toBe(0);
  });

  it("content this upstream never served is fetched from it, not trusted on its HEAD", async () => {
    // Another upstream served it; this one only named it (a link), which is its word, not its proof.
    await cached(m1, {
      servedBy: ["other"],
      linkedIn: [
        ["other", "app"],
        ["u", "app"],
      ],
    });
    up.hold(m1);
    const result = await cache.get(up.client, "app", byDigest(d1));
    expect(result).toMatchObject({ source: "miss", manifest: { digest: d1 } });
    expect(up.asked).toEqual([`GET ${d1}`]);
    expect((await metadata.provenance(d1)).sort()).toEqual(["other", "u"]);
    expect((await cache.get(up.client, "app", byDigest(d1))).source).toBe("hit");
  });

  it("content this upstream never served is not served for it when it does not have it, nor when it is unwell", async () => {
    await cached(m1, {
      servedBy: ["other"],
      linkedIn: [
        ["other", "app"],
        ["u", "app"],
      ],
    });
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    up.failure = new RegistryError("UNAVAILABLE");
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(up.asked).toEqual([`GET ${d1}`, `GET ${d1}`]);
    expect(await staleServed("UNAVAILABLE")).toBe(0);
  });

  it("legacy content (linked here, no upstream on record) is proven by a GET while the upstream is well", async () => {
    await cached(m1, { linkedIn: [["u", "app"]] });
    up.hold(m1);
    expect((await cache.get(up.client, "app", byDigest(d1))).source).toBe("miss");
    expect(up.asked).toEqual([`GET ${d1}`]);
    expect(await metadata.provenance(d1)).toEqual(["u"]);
  });

  it.each(UNWELL)(
    "legacy content linked here is served stale while the upstream fails with %s, and counted",
    async (code) => {
      await cached(m1, { linkedIn: [["u", "app"]] });
      up.failure = new RegistryError(code);
      const result = await cache.get(up.client, "app", byDigest(d1));
      expect(result.source).toBe("stale");
      expect(result.manifest.bytes.equals(m1)).toBe(true);
      expect(await staleServed(code)).toBe(1);
      expect(await metadata.provenance(d1)).toEqual([]);
    },
  );

  it("legacy content is not served for a repository it was never linked to, nor when the upstream refuses", async () => {
    await cached(m1, { linkedIn: [["u", "app"]] });
    up.failure = new RegistryError("UNAVAILABLE");
    await expect(cache.get(up.client, "elsewhere", byDigest(d1))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    up.failure = new RegistryError("DENIED");
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "DENIED" });
    expect(await staleServed("UNAVAILABLE")).toBe(0);
  });

  it("bytes that do not hash to the digest asked for are refused as UPSTREAM_ERROR, and nothing is stored or recorded", async () => {
    up.hold(m1);
    up.tamper = { bytes: m2, digest: d2 };
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({
      code: "UPSTREAM_ERROR",
      status: 502,
    });
    for (const digest of [d1, d2]) {
      expect(await manifests.get(digest)).toBeUndefined();
      expect(await metadata.provenance(digest)).toEqual([]);
      expect(await metadata.hasLink("u", "app", digest)).toBe(false);
    }
  });

  it("right bytes under a Docker-Content-Digest naming something else are refused as UPSTREAM_ERROR", async () => {
    up.hold(m1);
    up.tamper = { digest: d2 };
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
    expect(await manifests.get(d1)).toBeUndefined();
  });

  it("remembers a 404 for negativeTtl: asked once, refused at once meanwhile, asked again after", async () => {
    up.config.negativeTtl = 1_000;
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({
      code: "MANIFEST_UNKNOWN",
      status: 404,
    });
    expect(up.asked).toEqual([`GET ${d1}`]);
    await waitFor(async () => !(await metadata.isMissing("u", "app", d1)), {
      timeoutMs: 10_000,
      what: "the 404 record to expire",
    });
    up.hold(m1);
    expect((await cache.get(up.client, "app", byDigest(d1))).source).toBe("miss");
    expect(up.asked).toEqual([`GET ${d1}`, `GET ${d1}`]);
  });

  it("with negativeTtl 0 a 404 is not remembered", async () => {
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    expect(up.asked).toEqual([`GET ${d1}`, `GET ${d1}`]);
  });

  it("concurrent misses for one digest share one upstream request", async () => {
    const held = gate();
    up.hold(m1).during = () => held.opened;
    const isMissing = vi.spyOn(metadata, "isMissing");
    const results = Array.from({ length: 5 }, () => cache.get(up.client, "app", byDigest(d1)));
    await callersPastChecks(isMissing, 5);
    held.open();
    for (const result of await Promise.all(results))
      expect(result).toMatchObject({ source: "miss", manifest: { digest: d1 } });
    expect(up.asked).toEqual([`GET ${d1}`]);
  });

  it("an upstream offline by configuration makes a digest not cached MANIFEST_UNKNOWN (404), not an outage", async () => {
    up.config.offline = true;
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({
      code: "MANIFEST_UNKNOWN",
      status: 404,
      detail: { upstream: "u", offline: true },
    });
  });

  it("an upstream offline by configuration serves legacy content linked here from the store", async () => {
    up.config.offline = true;
    await cached(m1, { linkedIn: [["u", "app"]] });
    expect(await cache.get(up.client, "app", byDigest(d1))).toMatchObject({ source: "hit", manifest: { digest: d1 } });
    expect(up.asked).toEqual([]);
  });

  it("a digest the store holds as a blob, which the upstream answers 5xx for as a manifest: MANIFEST_UNKNOWN", async () => {
    const layer = Buffer.from("layer bytes");
    await putContent(blobs, digestOf(layer), layer);
    up.failure = new RegistryError("UPSTREAM_ERROR", "upstream u answered 500", {
      detail: { upstream: "u", status: 500 },
    });
    await expect(cache.get(up.client, "app", byDigest(digestOf(layer)))).rejects.toMatchObject({
      code: "MANIFEST_UNKNOWN",
      status: 404,
      detail: { upstream: "u", status: 500 },
    });
    // Not a blob here: the upstream's 5xx stands.
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "UPSTREAM_ERROR" });
    // Transport failures are outages whatever the store holds.
    up.failure = new RegistryError("UNAVAILABLE", "unreachable");
    await expect(cache.get(up.client, "app", byDigest(digestOf(layer)))).rejects.toMatchObject({ code: "UNAVAILABLE" });
  });

  it("with no room on disk, serves the fetched manifest uncached and reports it", async () => {
    up.hold(m1);
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    vi.spyOn(manifests, "put").mockRejectedValueOnce(enospc);
    const result = await cache.get(up.client, "app", byDigest(d1));
    expect(result).toMatchObject({ source: "miss", manifest: { digest: d1, mediaType: MT } });
    expect(result.manifest.bytes.equals(m1)).toBe(true);
    expect(noSpace).toEqual([enospc]);
    expect(await manifests.get(d1)).toBeUndefined();
    expect(await metadata.provenance(d1)).toEqual([]);
  });

  it("a storage failure other than ENOSPC fails the request", async () => {
    up.hold(m1);
    vi.spyOn(manifests, "put").mockRejectedValueOnce(
      Object.assign(new Error("EIO: i/o error, write"), { code: "EIO" }),
    );
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({ code: "EIO" });
    expect(noSpace).toEqual([]);
  });
});

describe("ManifestCache.get by tag", () => {
  it("a tag never seen: a HEAD, then a GET by the digest it named; stored with a pointer stamped when asked", async () => {
    up.tag("latest", m1);
    const result = await cache.get(up.client, "app", LATEST);
    expect(result).toMatchObject({ source: "miss", manifest: { digest: d1, mediaType: MT } });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual({ digest: d1, mediaType: MT, checkedAt: clock });
    expect(await metadata.hasLink("u", "app", d1)).toBe(true);
    expect(await metadata.provenance(d1)).toEqual(["u"]);
  });

  it("a HEAD without Docker-Content-Digest: the tag is fetched by name", async () => {
    up.tag("latest", m1).headWithoutDigest = true;
    expect((await cache.get(up.client, "app", LATEST)).manifest.digest).toBe(d1);
    expect(up.asked).toEqual(["HEAD latest", "GET latest"]);
    expect((await metadata.getTag("u", "app", "latest"))?.digest).toBe(d1);
  });

  it("a Docker-Content-Digest that does not match the bytes is refused as UPSTREAM_ERROR, with no pointer", async () => {
    up.tag("latest", m1).headWithoutDigest = true;
    up.tamper = { digest: d2 };
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "UPSTREAM_ERROR", status: 502 });
    expect(await metadata.getTag("u", "app", "latest")).toBeUndefined();
    expect(await manifests.get(d1)).toBeUndefined();
  });

  it("within its TTL a tag is answered from the store, asking nothing", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    clock += TTL_MS - 1;
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "hit", manifest: { digest: d1 } });
    expect(up.asked).toHaveLength(2);
  });

  it("a fresh pointer whose bytes are not on this node: fetched by digest, the tag not revalidated", async () => {
    // Another replica confirmed the tag in the shared store a moment ago; its disk has the bytes, ours not.
    await pointTag("latest", m1, 1_000);
    up.tag("latest", m1);
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "miss", manifest: { digest: d1 } });
    expect(up.asked).toEqual([`GET ${d1}`]);
    expect((await metadata.getTag("u", "app", "latest"))?.checkedAt).toBe(clock - 1_000);
  });

  it("a fresh pointer to bytes the upstream no longer has: the tag is revalidated", async () => {
    await pointTag("latest", m1, 1_000);
    up.tag("latest", m2);
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(up.asked).toEqual([`GET ${d1}`, "HEAD latest", `GET ${d2}`]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual({ digest: d2, mediaType: MT, checkedAt: clock });
  });

  it("past its TTL an unchanged tag is revalidated by a HEAD alone, and its pointer restamped", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    clock += TTL_MS;
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({
      source: "revalidated",
      manifest: { digest: d1 },
    });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`, "HEAD latest"]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual({ digest: d1, mediaType: MT, checkedAt: clock });
  });

  it("past its TTL a moved tag is fetched by the digest the HEAD named", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.tag("latest", m2);
    clock += TTL_MS;
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`, "HEAD latest", `GET ${d2}`]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual({ digest: d2, mediaType: MT, checkedAt: clock });
  });

  it("a tag moved to content this upstream already served here is revalidated without a GET", async () => {
    up.tag("latest", m1).hold(m2);
    await cache.get(up.client, "app", LATEST);
    await cache.get(up.client, "app", byDigest(d2));
    up.tag("latest", m2);
    clock += TTL_MS;
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({
      source: "revalidated",
      manifest: { digest: d2 },
    });
    expect(up.asked.slice(3)).toEqual(["HEAD latest"]);
    expect((await metadata.getTag("u", "app", "latest"))?.digest).toBe(d2);
  });

  it("a tag whose HEAD names content only another upstream served: the bytes are fetched, not trusted on the HEAD", async () => {
    await cached(m2, { servedBy: ["other"], linkedIn: [["other", "app"]] });
    up.tag("latest", m2);
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d2}`]);
    expect((await metadata.provenance(d2)).sort()).toEqual(["other", "u"]);
  });

  it.each(UNWELL)(
    "past its TTL, while the upstream fails with %s, the last known manifest is served stale and counted",
    async (code) => {
      up.tag("latest", m1);
      await cache.get(up.client, "app", LATEST);
      const checked = await metadata.getTag("u", "app", "latest");
      clock += TTL_MS;
      up.failure = new RegistryError(code);
      const result = await cache.get(up.client, "app", LATEST);
      expect(result.source).toBe("stale");
      expect(result.manifest.bytes.equals(m1)).toBe(true);
      expect(await staleServed(code)).toBe(1);
      expect(await metadata.getTag("u", "app", "latest")).toEqual(checked); // unconfirmed: not restamped
    },
  );

  it("an upstream that refuses (UNAUTHORIZED) is passed on, not hidden behind a stale answer", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    clock += TTL_MS;
    up.failure = new RegistryError("UNAUTHORIZED");
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "UNAUTHORIZED" });
    expect((await metrics.staleServed.get()).values).toEqual([]);
  });

  it("a stale pointer whose bytes are not on this node: the upstream's failure is passed on", async () => {
    await pointTag("latest", m1, 2 * TTL_MS);
    up.failure = new RegistryError("UNAVAILABLE");
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect(await staleServed("UNAVAILABLE")).toBe(0);
  });

  it("a tag the upstream deleted: the 404 is passed on and the pointer forgotten, so it is not served stale later", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.untag("latest");
    clock += TTL_MS;
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    expect(await metadata.getTag("u", "app", "latest")).toBeUndefined();
    up.failure = new RegistryError("UNAVAILABLE");
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "UNAVAILABLE" });
  });

  it("remembers a 404 for negativeTtl: asked once, refused at once meanwhile, asked again after", async () => {
    up.config.negativeTtl = 1_000;
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN", status: 404 });
    expect(up.asked).toEqual(["HEAD latest"]);
    await waitFor(async () => !(await metadata.isMissing("u", "app", "latest")), {
      timeoutMs: 10_000,
      what: "the 404 record to expire",
    });
    up.tag("latest", m1);
    expect((await cache.get(up.client, "app", LATEST)).source).toBe("miss");
    expect(up.asked).toEqual(["HEAD latest", "HEAD latest", `GET ${d1}`]);
  });

  it("an upstream offline by configuration: a tag never seen is MANIFEST_UNKNOWN, a known one is served stale", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    clock += TTL_MS;
    up.config.offline = true;
    await expect(cache.get(up.client, "app", { kind: "tag", tag: "new" })).rejects.toMatchObject({
      code: "MANIFEST_UNKNOWN",
      status: 404,
      detail: { offline: true },
    });
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "stale", manifest: { digest: d1 } });
    expect(await staleServed("UNAVAILABLE")).toBe(1);
  });

  it("with no room on disk, serves the fetched manifest uncached, without a pointer to bytes it does not have", async () => {
    up.tag("latest", m1);
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    vi.spyOn(manifests, "put").mockRejectedValueOnce(enospc);
    const result = await cache.get(up.client, "app", LATEST);
    expect(result).toMatchObject({ source: "miss", manifest: { digest: d1 } });
    expect(result.manifest.bytes.equals(m1)).toBe(true);
    expect(noSpace).toEqual([enospc]);
    expect(await metadata.getTag("u", "app", "latest")).toBeUndefined();
    expect(await manifests.get(d1)).toBeUndefined();
    // With room again, the next pull fetches and keeps it.
    expect((await cache.get(up.client, "app", LATEST)).source).toBe("miss");
    expect((await metadata.getTag("u", "app", "latest"))?.digest).toBe(d1);
  });

  it("concurrent misses for one tag share one upstream request", async () => {
    const held = gate();
    up.tag("latest", m1).during = () => held.opened;
    const isMissing = vi.spyOn(metadata, "isMissing");
    const results = Array.from({ length: 5 }, () => cache.get(up.client, "app", LATEST));
    await callersPastChecks(isMissing, 5);
    held.open();
    for (const result of await Promise.all(results))
      expect(result).toMatchObject({ source: "miss", manifest: { digest: d1 } });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`]);
  });

  it("replicas sharing a store: the lock holder revalidates, another waits for its answer and serves it", async () => {
    // Two replicas over one metadata store (what Redis is to them), on the real clock: the waiting replica's
    // patience is measured in it.
    const replicaA = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    const replicaB = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "app"]] });
    await metadata.putTag("u", "app", "latest", { digest: d1, mediaType: MT, checkedAt: Date.now() - 2 * TTL_MS });
    const held = gate();
    const upstreamOfA = new FakeUpstream().tag("latest", m2);
    upstreamOfA.during = () => held.opened;
    const upstreamOfB = new FakeUpstream().tag("latest", m3); // what B would hear, had it asked
    const tryLock = vi.spyOn(metadata, "tryLock");
    const getTag = vi.spyOn(metadata, "getTag");

    const aDone = replicaA.get(upstreamOfA.client, "app", LATEST);
    await waitFor(async () => upstreamOfA.asked.length === 1, { timeoutMs: 5_000, what: "A's HEAD to be sent" });
    const bDone = replicaB.get(upstreamOfB.client, "app", LATEST);
    await waitFor(async () => tryLock.mock.settledResults.length === 2, {
      timeoutMs: 5_000,
      intervalMs: 10,
      what: "B to try the lock",
    });
    expect(tryLock.mock.settledResults[1]).toEqual({ type: "fulfilled", value: undefined }); // held by A
    // B looks in the shared store a few times, finding only the old pointer, before A's answer lands.
    const looked = getTag.mock.calls.length;
    await waitFor(async () => getTag.mock.calls.length >= looked + 3, {
      timeoutMs: 5_000,
      intervalMs: 10,
      what: "B to look for A's answer",
    });
    held.open();

    expect(await aDone).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(await bDone).toMatchObject({ source: "hit", manifest: { digest: d2 } });
    expect(upstreamOfA.asked).toEqual(["HEAD latest", `GET ${d2}`]);
    expect(upstreamOfB.asked).toEqual([]);
  });
  it("the lock holder releases the lock when done: the next revalidation, by any replica, takes it at once", async () => {
    const replicaA = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    const replicaB = new ManifestCache({ manifests, metadata, maxBytes: 1 << 20 });
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "app"]] });
    up.tag("latest", m1);
    const pastTtl = async () => {
      await metadata.deleteTag("u", "app", "latest");
      await metadata.putTag("u", "app", "latest", { digest: d1, mediaType: MT, checkedAt: Date.now() - 2 * TTL_MS });
    };
    const tryLock = vi.spyOn(metadata, "tryLock");
    await pastTtl();
    expect((await replicaA.get(up.client, "app", LATEST)).source).toBe("revalidated");
    await pastTtl();
    expect((await replicaB.get(up.client, "app", LATEST)).source).toBe("revalidated");
    expect(tryLock.mock.settledResults.map((r) => typeof r.value)).toEqual(["string", "string"]); // a token each time
  });
});

describe("ManifestCache: a cached answer does not wait on the upstream beyond revalidateTimeout", () => {
  /** An upstream that, once `hang()` is called, holds every request until `release()`. */
  function hanging(): { hang: () => void; release: () => void } {
    let held: ReturnType<typeof gate> | undefined;
    up.during = () => held?.opened;
    return {
      hang: () => (held = gate()),
      release: () => {
        held?.open();
        held = undefined;
      },
    };
  }

  /** The revalidation left running in the background moves latest to `digest`; the next request is a hit on it. */
  async function backgroundMovesLatestTo(digest: string): Promise<void> {
    await waitFor(async () => (await metadata.getTag("u", "app", "latest"))?.digest === digest, {
      timeoutMs: 5_000,
      intervalMs: 10,
      what: "the background revalidation to move the tag",
    });
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "hit", manifest: { digest } });
  }

  /** Whether `pending` has not settled after `ms` (several deadlines: a request with nothing to serve waits). */
  async function stillPendingAfter(pending: Promise<unknown>, ms: number): Promise<boolean> {
    let settled = false;
    void pending.then(
      () => (settled = true),
      () => (settled = true),
    );
    await new Promise((resolve) => setTimeout(resolve, ms));
    return !settled;
  }

  it("past its TTL, a tag whose revalidation hangs is served stale at the deadline; the revalidation lands later", async () => {
    const upstream = hanging();
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.tag("latest", m2);
    clock += TTL_MS;
    up.config.revalidateTimeout = 50;
    upstream.hang();
    const result = await cache.get(up.client, "app", LATEST);
    expect(result).toMatchObject({ source: "stale", manifest: { digest: d1 } });
    expect(await staleServed("DEADLINE")).toBe(1);
    expect(up.asked.slice(2)).toEqual(["HEAD latest"]); // asked, not answered yet
    // The upstream answers afterwards: the background revalidation moves the tag, for the next request.
    upstream.release();
    await backgroundMovesLatestTo(d2);
  });

  it("requests arriving while a revalidation hangs share it: one upstream request, each answered stale", async () => {
    const upstream = hanging();
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    clock += TTL_MS;
    up.config.revalidateTimeout = 50;
    upstream.hang();
    expect((await cache.get(up.client, "app", LATEST)).source).toBe("stale");
    const later = await Promise.all([1, 2, 3].map(() => cache.get(up.client, "app", LATEST)));
    expect(later.map((r) => r.source)).toEqual(["stale", "stale", "stale"]);
    expect(later.every((r) => r.manifest.digest === d1)).toBe(true);
    expect(up.asked.slice(2)).toEqual(["HEAD latest"]);
    expect(await staleServed("DEADLINE")).toBe(4);
    upstream.release();
  });

  it("an upstream answering within the deadline is waited for: a revalidated answer, not a stale one", async () => {
    const upstream = hanging();
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.tag("latest", m2);
    clock += TTL_MS;
    up.config.revalidateTimeout = 5_000;
    upstream.hang();
    const pending = cache.get(up.client, "app", LATEST);
    await waitFor(async () => up.asked.length === 3, { timeoutMs: 5_000, intervalMs: 5, what: "the HEAD" });
    upstream.release();
    expect(await pending).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(await staleServed("DEADLINE")).toBe(0);
  });

  it("a tag never cached waits for the upstream whatever the deadline", async () => {
    const upstream = hanging();
    up.tag("latest", m1);
    up.config.revalidateTimeout = 20;
    upstream.hang();
    const pending = cache.get(up.client, "app", LATEST);
    expect(await stillPendingAfter(pending, 100)).toBe(true); // five deadlines: nothing to serve, so still waiting
    upstream.release();
    expect(await pending).toMatchObject({ source: "miss", manifest: { digest: d1 } });
  });

  it("an upstream failing fast within the deadline still gets its own error handling (a deleted tag is not served)", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.untag("latest");
    clock += TTL_MS;
    up.config.revalidateTimeout = 5_000;
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    expect(await metadata.getTag("u", "app", "latest")).toBeUndefined();
  });

  it("staleWhileRevalidate: past its TTL the cached pointer is served at once, and the revalidation moves it after", async () => {
    const upstream = hanging();
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.tag("latest", m2);
    clock += TTL_MS;
    up.config.staleWhileRevalidate = true;
    upstream.hang();
    expect(await cache.get(up.client, "app", LATEST)).toMatchObject({ source: "stale", manifest: { digest: d1 } });
    expect(await staleServed("BACKGROUND")).toBe(1);
    upstream.release();
    await backgroundMovesLatestTo(d2);
  });

  it("a stored digest that needs this repository confirmed: UNAVAILABLE at the deadline; the HEAD's answer is kept", async () => {
    const upstream = hanging();
    await cached(m1, { servedBy: ["u"], linkedIn: [["u", "other"]] });
    up.hold(m1);
    up.config.revalidateTimeout = 50;
    upstream.hang();
    await expect(cache.get(up.client, "app", byDigest(d1))).rejects.toMatchObject({
      code: "UNAVAILABLE",
      detail: { timeout: "revalidateTimeout" },
    });
    expect(up.asked).toEqual([`HEAD ${d1}`]);
    upstream.release();
    await waitFor(async () => metadata.hasLink("u", "app", d1), {
      timeoutMs: 5_000,
      intervalMs: 10,
      what: "the late HEAD to link the repository",
    });
    expect(await cache.get(up.client, "app", byDigest(d1))).toMatchObject({ source: "hit" });
    expect(up.asked).toEqual([`HEAD ${d1}`]);
  });

  it("legacy content (linked here, no upstream on record) is served stale when the proving GET outlasts the deadline", async () => {
    const upstream = hanging();
    await cached(m1, { linkedIn: [["u", "app"]] });
    up.hold(m1);
    up.config.revalidateTimeout = 50;
    upstream.hang();
    expect(await cache.get(up.client, "app", byDigest(d1))).toMatchObject({
      source: "stale",
      manifest: { digest: d1 },
    });
    expect(up.asked).toEqual([`GET ${d1}`]);
    upstream.release();
  });

  it("content this upstream never served and nothing links here: its GET is waited for, whatever the deadline", async () => {
    const upstream = hanging();
    await cached(m1, { servedBy: ["other"], linkedIn: [["other", "app"]] });
    up.hold(m1);
    up.config.revalidateTimeout = 20;
    upstream.hang();
    const pending = cache.get(up.client, "app", byDigest(d1));
    expect(await stillPendingAfter(pending, 100)).toBe(true);
    upstream.release();
    expect(await pending).toMatchObject({ source: "miss", manifest: { digest: d1 } });
  });
});

describe("ManifestCache.purge and refresh", () => {
  it("purging a tag forgets its pointer: the next pull asks the upstream, within the TTL", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    await cache.purge(up.client, "app", "latest");
    expect(await metadata.getTag("u", "app", "latest")).toBeUndefined();
    expect((await cache.get(up.client, "app", LATEST)).source).toBe("revalidated");
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`, "HEAD latest"]);
  });

  it("purging a tag forgets a remembered 404", async () => {
    up.config.negativeTtl = 60_000;
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    up.tag("latest", m1);
    await cache.purge(up.client, "app", "latest");
    expect((await cache.get(up.client, "app", LATEST)).manifest.digest).toBe(d1);
  });

  it("purging a repository forgets all its tags and no other repository's; the content stays stored", async () => {
    up.tag("latest", m1).tag("v1", m2);
    for (const [repo, tag] of [
      ["app", "latest"],
      ["app", "v1"],
      ["other", "latest"],
    ] as const)
      await cache.get(up.client, repo, { kind: "tag", tag });
    await cache.purge(up.client, "app", undefined);
    expect(await metadata.listTags("u", "app")).toEqual([]);
    expect(await metadata.listTags("u", "other")).toEqual(["latest"]);
    expect(await manifests.get(d1)).toBeDefined();
  });

  it("refresh revalidates a tag within its TTL and returns what it now points at", async () => {
    up.tag("latest", m1);
    await cache.get(up.client, "app", LATEST);
    up.tag("latest", m2);
    clock += 1_000;
    expect(await cache.refresh(up.client, "app", "latest")).toMatchObject({ source: "miss", manifest: { digest: d2 } });
    expect(up.asked).toEqual(["HEAD latest", `GET ${d1}`, "HEAD latest", `GET ${d2}`]);
    expect(await metadata.getTag("u", "app", "latest")).toEqual({ digest: d2, mediaType: MT, checkedAt: clock });
  });

  it("refresh asks the upstream even for a tag whose 404 is remembered, and forgets the 404", async () => {
    up.config.negativeTtl = 60_000;
    up.hold(m1);
    await cache.get(up.client, "app", byDigest(d1)); // stored, and served by this upstream
    await expect(cache.get(up.client, "app", LATEST)).rejects.toMatchObject({ code: "MANIFEST_UNKNOWN" });
    up.tag("latest", m1);
    expect(await cache.refresh(up.client, "app", "latest")).toMatchObject({
      source: "revalidated",
      manifest: { digest: d1 },
    });
    // Past the TTL, the next pull revalidates the tag rather than repeat the old 404.
    clock += TTL_MS;
    expect((await cache.get(up.client, "app", LATEST)).source).toBe("revalidated");
    expect(up.asked).toEqual([`GET ${d1}`, "HEAD latest", "HEAD latest", "HEAD latest"]);
  });
});
