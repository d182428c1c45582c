import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { putContent } from "../../../src/storage/content-store.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { Janitor, type FsUsage, type PinResolver } from "../../../src/cache/janitor.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { CONFIG_PIN_FILE, PIN_FILE, PinList } from "../../../src/storage/pin-list.ts";
import { Registry } from "prom-client";
import { Metrics } from "../../../src/observability/metrics.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const KB = 1000;

describe("CacheIndex and Janitor", () => {
  let dir: string;
  let store: BlobStore;
  let manifests: ManifestStore;
  let metadata: EmbeddedMetadataStore;
  let fsFree = 1e12;
  const fsUsage: FsUsage = async () => ({ total: 2e12, free: fsFree });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "janitor-"));
    store = new BlobStore(dir, { touchIntervalMs: 0 });
    await store.init();
    manifests = new ManifestStore(store);
    await manifests.init();
    metadata = new EmbeddedMetadataStore();
    fsFree = 1e12;
  });
  afterEach(async () => {
    await metadata.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function put(size: number): Promise<string> {
    const bytes = randomBytes(size);
    const digest = digestOf(bytes);
    await putContent(store, digest, bytes);
    return digest;
  }
  type Pins = Array<{ upstream: string; repository: string; tag: string | undefined }>;
  const janitor = (
    maxSize: number | undefined,
    pins: Pins = [],
    opts: {
      metadata?: EmbeddedMetadataStore;
      pinList?: PinList;
      resolvePin?: PinResolver;
      manifests?: ManifestStore;
    } = {},
  ) =>
    new Janitor({
      store,
      manifests: opts.manifests ?? manifests,
      metadata: opts.metadata ?? metadata,
      budget: { maxSize, high: 0.9, low: 0.5 },
      pins,
      pinList: opts.pinList,
      resolvePin: opts.resolvePin,
      log: pino({ level: "silent" }),
      fsUsage,
    });

  /** An image manifest with one layer of `size` bytes, stored; the tag `docker.io/team/app:<tag>` points at it. */
  async function putImage(size: number, tag: string): Promise<{ manifest: string; layer: string }> {
    const layer = await put(size);
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { digest: layer, size },
        layers: [],
      }),
    );
    const manifest = digestOf(bytes);
    await manifests.put(manifest, "application/vnd.oci.image.manifest.v1+json", bytes);
    await metadata.putTag("docker.io", "team/app", tag, {
      digest: manifest,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      checkedAt: Date.now(),
    });
    return { manifest, layer };
  }
  const appPin: Pins = [{ upstream: "docker.io", repository: "team/app", tag: "1" }];

  it("rebuilds recency from file modification times, oldest first", async () => {
    const [a, b, c] = [await put(KB), await put(KB), await put(KB)];
    const t = Date.now() / 1000;
    await utimes(store.pathOf(a), t - 10, t - 10);
    await utimes(store.pathOf(b), t - 30, t - 30);
    await utimes(store.pathOf(c), t - 20, t - 20);
    const fresh = new BlobStore(dir);
    expect(await fresh.init()).toMatchObject({ objects: 3, bytes: 3 * KB });
    expect([...fresh.index.leastRecentlyUsed()].map((e) => e.digest)).toEqual([b, c, a]);
  });

  it("records an access in the file's mtime, so recency survives a restart", async () => {
    const [a, b] = [await put(KB), await put(KB)];
    const old = Date.now() / 1000 - 100;
    await utimes(store.pathOf(a), old, old);
    await utimes(store.pathOf(b), old + 1, old + 1);
    const opened = await store.open(a); // a becomes the most recent
    await opened!.close();
    await new Promise((r) => setTimeout(r, 50));
    const restarted = new BlobStore(dir);
    await restarted.init();
    expect([...restarted.index.leastRecentlyUsed()].map((e) => e.digest)).toEqual([b, a]);
  });

  it("evicts least recently used content from above the high watermark to under the low one", async () => {
    const digests: string[] = [];
    for (let i = 0; i < 10; i++) digests.push(await put(100 * KB));
    (await store.open(digests[0]!))!.close().catch(() => undefined); // the oldest becomes the newest
    await new Promise((r) => setTimeout(r, 10));
    const j = janitor(1000 * KB); // 1000 KB budget, 1000 KB used: over 90 %
    await j.check();
    expect(store.index.bytes).toBeLessThanOrEqual(500 * KB);
    const kept = digests.filter((d) => store.index.has(d));
    expect(kept).toContain(digests[0]);
    expect(kept).toEqual([digests[0], ...digests.slice(6)]);
    for (const d of digests) expect(await store.size(d)).toBe(store.index.has(d) ? 100 * KB : undefined);
  });

  it("with the content elsewhere (object storage), never evicts for disk room: only the budget evicts", async () => {
    const digests: string[] = [];
    for (let i = 0; i < 4; i++) digests.push(await put(100 * KB));
    const elsewhere = (maxSize: number | undefined) =>
      new Janitor({
        store,
        contentOnDisk: false,
        manifests,
        metadata,
        budget: { maxSize, high: 0.9, low: 0.5 },
        pins: [],
        log: pino({ level: "silent" }),
        fsUsage,
      });
    fsFree = 10 * KB; // the temp files' disk is nearly full: deleting content would not help it
    await elsewhere(undefined).check();
    expect(store.index.objects).toBe(4);
    expect(await elsewhere(undefined).admit(50 * KB)).toBeUndefined(); // refused, not made room for by evicting
    expect(store.index.objects).toBe(4);
    fsFree = 1e12;
    await elsewhere(300 * KB).check(); // over the budget's high mark: that still evicts
    expect(store.index.bytes).toBeLessThanOrEqual(150 * KB);
    // The same full disk with the content on it: the default janitor evicts to make room.
    for (let i = 0; i < 4; i++) await put(100 * KB);
    fsFree = 10 * KB;
    const before = store.index.objects;
    await janitor(undefined).check();
    expect(store.index.objects).toBeLessThan(before);
  });

  it("never evicts pinned content or content being read", async () => {
    const image = { layer: await put(200 * KB) };
    const config = Buffer.from(JSON.stringify({ architecture: "amd64" }));
    const configDigest = digestOf(config);
    await putContent(store, configDigest, config);
    const manifest = Buffer.from(
      JSON.stringify({ schemaVersion: 2, config: { digest: configDigest }, layers: [{ digest: image.layer }] }),
    );
    const manifestDigest = digestOf(manifest);
    await manifests.put(manifestDigest, "application/vnd.oci.image.manifest.v1+json", manifest);
    await metadata.putTag("docker.io", "team/keep", "v1", {
      digest: manifestDigest,
      mediaType: "x",
      checkedAt: Date.now(),
    });
    const reading = await put(200 * KB);
    const open = await store.open(reading);
    const others = [await put(200 * KB), await put(200 * KB)];
    const j = janitor(100 * KB, [{ upstream: "docker.io", repository: "team/keep", tag: undefined }]);
    await j.check();
    for (const kept of [image.layer, configDigest, manifestDigest, reading]) expect(store.index.has(kept)).toBe(true);
    for (const gone of others) expect(store.index.has(gone)).toBe(false);
    // The reader still gets every byte of what it opened.
    expect((await open!.bytes()).length).toBe(200 * KB);
  });

  it("admits a download when there is room, evicting first if that makes room, and refuses it otherwise", async () => {
    for (let i = 0; i < 5; i++) await put(100 * KB);
    const j = janitor(600 * KB);
    const small = await j.admit(50 * KB);
    expect(small?.bytes).toBe(50 * KB);
    small!.release(); // committed (or failed): its room is no longer held
    expect(await j.admit(250 * KB)).toBeDefined(); // evicts down to the low mark first
    expect(store.index.bytes + 250 * KB).toBeLessThanOrEqual(300 * KB);
    expect(await j.admit(700 * KB)).toBeUndefined(); // bigger than the whole budget
    fsFree = 10 * KB; // the disk itself is nearly full
    expect(await janitor(undefined).admit(50 * KB)).toBeUndefined();
  });

  it("stays in no-space mode after ENOSPC until space returns", async () => {
    const j = janitor(undefined);
    j.noteNoSpace(Object.assign(new Error("ENOSPC: no space left on device"), { code: "ENOSPC" }));
    expect(j.state.writable).toBe(false);
    fsFree = 100 * 1024 * 1024; // more than the download, less than twice the headroom (64 MiB)
    expect(await j.admit(KB)).toBeUndefined();
    fsFree = 1e12 - 1;
    expect(await j.admit(KB)).toBeDefined();
    expect(j.state.writable).toBe(true);
  });

  it("concurrent admissions at the budget evict once, only what is still needed when each one's turn comes", async () => {
    for (let i = 0; i < 20; i++) await put(50 * KB); // 1000 KB: the whole budget
    const j = janitor(1000 * KB);
    const admitted = await Promise.all(Array.from({ length: 5 }, () => j.admit(50 * KB)));
    expect(admitted.every((r) => r !== undefined)).toBe(true);
    // The first evicts down to the low mark (500 KB, its own 50 KB included); the other four then fit.
    expect(store.index.bytes).toBe(450 * KB);
    expect(j.state.reserved).toBe(250 * KB);
  });

  it("counts downloads in flight: admissions stop at the budget and resume when room is released", async () => {
    const j = janitor(1000 * KB);
    const first = await j.admit(400 * KB);
    const second = await j.admit(400 * KB);
    expect(first).toBeDefined();
    expect(second).toBeDefined();
    expect(await j.admit(400 * KB)).toBeUndefined(); // 1200 KB in flight against 1000 KB
    first!.release();
    expect(await j.admit(400 * KB)).toBeDefined();
  });

  it("counts downloads in flight at the watermarks", async () => {
    const digests: string[] = [];
    for (let i = 0; i < 8; i++) digests.push(await put(100 * KB)); // 800 KB: under the high mark (900 KB)
    const j = janitor(1000 * KB);
    await j.check();
    expect(store.index.bytes).toBe(800 * KB);
    const inFlight = await j.admit(150 * KB); // fits without evicting: 950 KB
    expect(inFlight).toBeDefined();
    await j.check(); // 950 KB over the high mark: down to 500 KB, the 150 KB in flight included
    expect(store.index.bytes).toBe(300 * KB);
    expect(digests.slice(5).every((d) => store.index.has(d))).toBe(true); // the most recent stay
  });

  it("evicts nothing to admit a download that eviction cannot make room for", async () => {
    const digests: string[] = [];
    for (let i = 0; i < 10; i++) digests.push(await put(100 * KB));
    const open = await Promise.all(digests.slice(2).map((d) => store.open(d))); // 800 KB being read
    const j = janitor(1000 * KB);
    expect(await j.admit(300 * KB)).toBeUndefined(); // 200 KB could go, 300 KB are needed
    expect(store.index.bytes).toBe(1000 * KB);
    for (const o of open) await o!.close();
  });

  it("grows a reservation of unknown size as it is written, evicting like an admission, up to what the budget can hold", async () => {
    for (let i = 0; i < 6; i++) await put(100 * KB);
    const j = janitor(1000 * KB);
    const r = (await j.admit(undefined))!;
    expect(r.bytes).toBe(0);
    expect(await r.grow(300 * KB)).toBe(true);
    expect(r.bytes).toBeGreaterThanOrEqual(300 * KB);
    expect(store.index.bytes + r.bytes).toBeLessThanOrEqual(1000 * KB);
    expect(await r.grow(450 * KB)).toBe(true); // evicts to the low mark: 500 KB with the reservation
    expect(store.index.bytes + r.bytes).toBeLessThanOrEqual(500 * KB);
    const held = r.bytes;
    const cached = store.index.bytes;
    expect(await r.grow(1200 * KB)).toBe(false); // more than the budget: nothing changes, nothing is evicted
    expect(r.bytes).toBe(held);
    expect(store.index.bytes).toBe(cached);
    r.stopCaching(); // passing through: the disk alone limits it, and it holds no budget
    expect(await r.grow(1200 * KB)).toBe(true);
    expect(j.state.reserved).toBe(0);
    fsFree = 10 * KB;
    expect(await r.grow(r.bytes + 1)).toBe(false); // nor more than the disk can hold
  });

  it("keeps what a configured pin resolved to when its tag pointer is lost, also after a restart", async () => {
    const app = await putImage(300 * KB, "1");
    await janitor(1000 * KB, appPin).check(); // a running mirror checks at start and every checkInterval
    const others: string[] = [];
    for (let i = 0; i < 7; i++) others.push(await put(100 * KB));
    // Redis restarted empty (or the embedded store's bound dropped the pointer), and the mirror restarted.
    const restarted = janitor(1000 * KB, appPin, { metadata: new EmbeddedMetadataStore() });
    await restarted.check();
    expect(store.index.has(app.manifest)).toBe(true);
    expect(store.index.has(app.layer)).toBe(true);
    expect(others.filter((d) => store.index.has(d)).length).toBeLessThan(others.length);
    const recorded = JSON.parse(await readFile(join(dir, CONFIG_PIN_FILE), "utf8")) as {
      pins: Array<{ reference: string; digest: string }>;
    };
    expect(recorded.pins.map((p) => [p.reference, p.digest])).toEqual([["docker.io/team/app:1", app.manifest]]);
  });

  it("moves a configured pin with its tag, and forgets it when it leaves the configuration", async () => {
    const v1 = await putImage(200 * KB, "1");
    await janitor(1000 * KB, appPin).check();
    const v2 = await putImage(200 * KB, "1"); // the tag now resolves to another image
    for (let i = 0; i < 6; i++) await put(100 * KB);
    await janitor(1000 * KB, appPin).check();
    expect(store.index.has(v1.layer)).toBe(false); // no longer what the pin resolves to: evictable
    expect(store.index.has(v2.layer)).toBe(true);
    expect(store.index.has(v2.manifest)).toBe(true);
    for (let i = 0; i < 6; i++) await put(100 * KB);
    await janitor(1000 * KB).check(); // unpinned in the configuration (the tag still points at it): evictable
    expect(store.index.has(v2.layer)).toBe(false);
  });

  for (const file of [PIN_FILE, CONFIG_PIN_FILE]) {
    it(`a damaged ${file} stops eviction, and says so, until it is repaired`, async () => {
      const app = await putImage(300 * KB, "1");
      const pinList = new PinList(dir);
      if (file === PIN_FILE) await pinList.set([{ reference: "docker.io/team/app:1", digest: app.manifest }]);
      else await janitor(1000 * KB, appPin).check();
      const good = await readFile(join(dir, file));
      await writeFile(join(dir, file), good.subarray(0, 20)); // torn: what a power cut can leave of an unsynced write
      // pins.json alone, or the configured pin alone (its pointer gone: config-pins.json is all that tells).
      const j = janitor(1000 * KB, file === PIN_FILE ? [] : appPin, { metadata: new EmbeddedMetadataStore(), pinList });
      await j.check(); // nothing to evict yet, and said already
      expect(j.state.evictionBlocked).toMatch(new RegExp(`${file} is damaged`));
      for (let i = 0; i < 7; i++) await put(100 * KB);
      await j.check();
      expect(store.index.bytes).toBe(1000 * KB + (await manifestBytes(app.manifest))); // nothing evicted
      expect(j.state.evictionBlocked).toMatch(new RegExp(`${file} is damaged`));
      expect(await j.admit(100 * KB)).toBeUndefined(); // it would need eviction: streamed uncached instead
      await writeFile(join(dir, file), good);
      await j.check();
      expect(j.state.evictionBlocked).toBeUndefined();
      expect(store.index.bytes).toBeLessThanOrEqual(500 * KB + (await manifestBytes(app.manifest)));
      expect(store.index.has(app.layer)).toBe(true);
    });
  }

  it("a configured pin that resolves to nothing (no tag pointer, nothing recorded) stops eviction, naming it, until it resolves", async () => {
    // A mirror upgraded from a version that recorded nothing, whose pointer is gone too (Redis restarted empty).
    const app = await putImage(300 * KB, "1");
    const empty = new EmbeddedMetadataStore();
    for (let i = 0; i < 7; i++) await put(100 * KB);
    const j = janitor(1000 * KB, appPin, { metadata: empty });
    await j.check();
    expect(store.index.has(app.layer)).toBe(true);
    expect(store.index.bytes).toBe(1000 * KB + (await manifestBytes(app.manifest))); // nothing evicted
    expect(j.state.evictionBlocked).toMatch(/docker\.io\/team\/app:1: no tag pointer, and nothing recorded for it/);
    expect(await j.admit(100 * KB)).toBeUndefined(); // it would need eviction: streamed uncached instead
    // The tag is pulled again: the pin resolves, is recorded, and eviction resumes around it.
    await empty.putTag("docker.io", "team/app", "1", {
      digest: app.manifest,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      checkedAt: Date.now(),
    });
    await j.check();
    expect(j.state.evictionBlocked).toBeUndefined();
    expect(store.index.bytes).toBeLessThanOrEqual(500 * KB + (await manifestBytes(app.manifest)));
    expect(store.index.has(app.layer)).toBe(true);
    expect(await new PinList(dir, CONFIG_PIN_FILE).list()).toMatchObject([
      { reference: "docker.io/team/app:1", digest: app.manifest },
    ]);
    await empty.close();
  });

  it("asks the resolver for a pinned tag whose pointer is lost, at the periodic check and never in a sweep", async () => {
    const app = await putImage(300 * KB, "1");
    const asked: string[] = [];
    let answer: () => Promise<Awaited<ReturnType<PinResolver>>> = () =>
      Promise.reject(new Error("upstream docker.io is unreachable"));
    const resolvePin: PinResolver = (pin) => {
      asked.push(`${pin.upstream}/${pin.repository}:${pin.tag}`);
      return answer();
    };
    const others: string[] = [];
    for (let i = 0; i < 7; i++) others.push(await put(100 * KB));
    const empty = new EmbeddedMetadataStore();
    const j = janitor(1000 * KB, appPin, { metadata: empty, resolvePin });
    expect(await j.admit(100 * KB)).toBeUndefined(); // the sweep of an admission does not wait on an upstream...
    expect(asked).toEqual([]);
    expect(j.state.evictionBlocked).toMatch(/docker\.io\/team\/app:1/); // ...and cannot tell what is pinned
    await j.check(); // the upstream is down: still unresolved, and the reason says why
    expect(asked).toEqual(["docker.io/team/app:1"]);
    expect(j.state.evictionBlocked).toMatch(
      /docker\.io\/team\/app:1: no tag pointer, nothing recorded for it, and the upstream could not be asked \(upstream docker\.io is unreachable\)/,
    );
    expect(others.every((d) => store.index.has(d))).toBe(true);
    answer = async () => ({ digest: app.manifest }); // the upstream is back
    await j.check();
    expect(asked).toHaveLength(2);
    expect(j.state.evictionBlocked).toBeUndefined();
    expect(store.index.has(app.layer)).toBe(true);
    expect(store.index.has(app.manifest)).toBe(true);
    expect(others.filter((d) => store.index.has(d)).length).toBeLessThan(others.length);
    expect(await new PinList(dir, CONFIG_PIN_FILE).list()).toMatchObject([
      { reference: "docker.io/team/app:1", digest: app.manifest },
    ]);
    // A pin whose pointer is there is not asked about.
    await janitor(1000 * KB, appPin, { resolvePin }).check();
    expect(asked).toHaveLength(2);
    await empty.close();
  });

  it("a pinned tag the upstream says does not exist stops eviction, naming the entry, unless what it pinned is recorded", async () => {
    const app = await putImage(300 * KB, "1");
    for (let i = 0; i < 7; i++) await put(100 * KB);
    const resolvePin: PinResolver = async () => ({ missing: "upstream docker.io has no manifest 1 in team/app" });
    const typo: Pins = [...appPin, { upstream: "docker.io", repository: "team/ap", tag: "1" }];
    const j = janitor(1000 * KB, typo, { resolvePin });
    await j.check();
    expect(j.state.evictionBlocked).toMatch(
      /docker\.io\/team\/ap:1: upstream docker\.io says it does not exist \(upstream docker\.io has no manifest 1 in team\/app\)/,
    );
    expect(j.state.evictionBlocked).not.toMatch(/team\/app:1/); // the entry that resolves is not blamed
    expect(store.index.bytes).toBe(1000 * KB + (await manifestBytes(app.manifest)));
    // A tag deleted upstream after its pin was recorded: what it pinned is known, and stays pinned.
    const empty = new EmbeddedMetadataStore();
    const deleted = janitor(1000 * KB, appPin, { metadata: empty, resolvePin });
    await deleted.check();
    expect(deleted.state.evictionBlocked).toBeUndefined();
    expect(store.index.has(app.layer)).toBe(true);
    expect(store.index.bytes).toBeLessThanOrEqual(500 * KB + (await manifestBytes(app.manifest)));
    await empty.close();
  });

  it("a repository pin of which no tag is known stops eviction, until a tag of it is", async () => {
    const app = await putImage(300 * KB, "1");
    for (let i = 0; i < 7; i++) await put(100 * KB);
    const empty = new EmbeddedMetadataStore();
    const j = janitor(1000 * KB, [{ upstream: "docker.io", repository: "team/app", tag: undefined }], {
      metadata: empty,
    });
    await j.check();
    expect(j.state.evictionBlocked).toMatch(/docker\.io\/team\/app \(every tag\): no tag of it is known/);
    expect(store.index.bytes).toBe(1000 * KB + (await manifestBytes(app.manifest)));
    await empty.putTag("docker.io", "team/app", "1", {
      digest: app.manifest,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      checkedAt: Date.now(),
    });
    await j.check();
    expect(j.state.evictionBlocked).toBeUndefined();
    expect(store.index.has(app.layer)).toBe(true);
    expect(store.index.bytes).toBeLessThanOrEqual(500 * KB + (await manifestBytes(app.manifest)));
    await empty.close();
  });

  it("keeps everything a pinned manifest reaches when manifest sidecars are damaged", async () => {
    const layer = await put(200 * KB);
    const config = await put(KB);
    const image = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        config: { digest: config, size: KB },
        layers: [{ digest: layer, size: 200 * KB }],
      }),
    );
    await manifests.put(digestOf(image), "application/vnd.oci.image.manifest.v1+json", image);
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.oci.image.index.v1+json",
        manifests: [{ digest: digestOf(image), size: image.length }],
      }),
    );
    await manifests.put(digestOf(index), "application/vnd.oci.image.index.v1+json", index);
    await metadata.putTag("docker.io", "team/app", "1", {
      digest: digestOf(index),
      mediaType: "application/vnd.oci.image.index.v1+json",
      checkedAt: Date.now(),
    });
    for (const digest of [digestOf(index), digestOf(image)]) {
      const hex = digest.slice("sha256:".length);
      await writeFile(join(dir, "manifests", "sha256", hex.slice(0, 2), `${hex}.json`), ""); // what a power cut can leave
    }
    const others: string[] = [];
    for (let i = 0; i < 8; i++) others.push(await put(100 * KB));
    const restarted = new ManifestStore(store); // no copy in memory: only the damaged sidecars
    expect(await restarted.get(digestOf(index))).toBeUndefined();
    await janitor(1000 * KB, appPin, { manifests: restarted }).check();
    for (const kept of [digestOf(index), digestOf(image), config, layer]) expect(store.index.has(kept)).toBe(true);
    expect(others.filter((d) => store.index.has(d)).length).toBeLessThan(others.length);
  });

  describe("idle expiry", () => {
    const HOUR = 3_600_000;
    /** Sets every object's recorded access `agoMs` back, then restarts the stores over the directory. */
    async function ageAndRestart(digests: string[], agoMs: number): Promise<void> {
      const t = (Date.now() - agoMs) / 1000;
      for (const d of digests) await utimes(store.pathOf(d), t, t);
      store = new BlobStore(dir, { touchIntervalMs: 0 });
      await store.init();
      manifests = new ManifestStore(store);
      await manifests.init();
    }
    const idleJanitor = (opts: {
      maxIdle?: number;
      pins?: Pins;
      now?: () => number;
      idleExempt?: () => Promise<Iterable<string>>;
      metrics?: Metrics;
      idleExpiry?: boolean;
    }) =>
      new Janitor({
        store,
        manifests,
        metadata,
        budget: { maxSize: undefined, high: 0.9, low: 0.5 },
        pins: opts.pins ?? [],
        log: pino({ level: "silent" }),
        fsUsage,
        maxIdle: opts.maxIdle,
        idleExempt: opts.idleExempt,
        upstreamNames: ["docker.io"],
        now: opts.now,
        metrics: opts.metrics,
        idleExpiry: opts.idleExpiry,
      });

    it("evicts what was not used for maxIdle (after a restart too), keeps pinned and recent content, forgets tag pointers that went", async () => {
      const pinned = await putImage(KB, "1");
      const idle = await putImage(KB, "2");
      const recent = await put(KB);
      const idleBytes = KB + (await sizeOf(idle.manifest));
      await ageAndRestart([pinned.manifest, pinned.layer, idle.manifest, idle.layer], 2 * HOUR);
      const metrics = new Metrics(new Registry(), { processMetrics: false });
      await idleJanitor({ maxIdle: HOUR, pins: appPin, metrics }).check();
      for (const d of [pinned.manifest, pinned.layer, recent]) expect(store.index.has(d)).toBe(true);
      for (const d of [idle.manifest, idle.layer]) expect(store.index.has(d)).toBe(false);
      expect(await manifests.get(idle.manifest)).toBeUndefined();
      expect((await metadata.getTag("docker.io", "team/app", "1"))?.digest).toBe(pinned.manifest);
      expect(await metadata.getTag("docker.io", "team/app", "2")).toBeUndefined();
      const text = await metrics.render();
      expect(text).toContain('mirror_evictions_total{reason="idle"} 2');
      expect(text).toContain(`mirror_evicted_bytes_total{reason="idle"} ${idleBytes}`);
    });

    it("does nothing without maxIdle or with idle expiry off, and counts a use as the last use", async () => {
      const a = await put(KB);
      const b = await put(KB);
      await ageAndRestart([a, b], 2 * HOUR);
      await idleJanitor({}).check();
      expect(store.index.has(a) && store.index.has(b)).toBe(true);
      // A command working on the data directory (idleExpiry: false) leaves it alone whatever maxIdle says.
      await idleJanitor({ maxIdle: HOUR, idleExpiry: false }).check();
      expect(store.index.has(a) && store.index.has(b)).toBe(true);
      await (await store.open(a))!.close(); // pulled now
      await idleJanitor({ maxIdle: HOUR }).check();
      expect(store.index.has(a)).toBe(true);
      expect(store.index.has(b)).toBe(false);
    });

    it("keeps what the idleExempt hook names, with everything it reaches", async () => {
      const warm = await putImage(KB, "warm");
      await ageAndRestart([warm.manifest, warm.layer], 2 * HOUR);
      await idleJanitor({ maxIdle: HOUR, idleExempt: async () => [warm.manifest] }).check();
      expect(store.index.has(warm.manifest) && store.index.has(warm.layer)).toBe(true);
      await idleJanitor({ maxIdle: HOUR }).check();
      expect(store.index.has(warm.manifest) || store.index.has(warm.layer)).toBe(false);
    });

    it("applies a rule's limit to the digests noted under it, the most generous one, across a restart", async () => {
      const [never, long, short, plain] = [await put(KB), await put(KB), await put(KB), await put(KB)];
      const first = idleJanitor({ maxIdle: HOUR });
      first.noteIdleLimit(never, 0);
      first.noteIdleLimit(long, 3 * HOUR);
      first.noteIdleLimit(long, 2 * HOUR); // less generous: 3 h stays
      first.noteIdleLimit(short, HOUR / 2);
      await first.check(); // saves idle-limits.json
      expect(JSON.parse(await readFile(join(dir, "idle-limits.json"), "utf8"))).toEqual({
        [never]: 0,
        [long]: 3 * HOUR,
        [short]: HOUR / 2,
      });
      await ageAndRestart([never, long, short, plain], 40 * 60_000); // 40 minutes idle
      await idleJanitor({ maxIdle: HOUR }).check();
      expect([never, long, short, plain].map((d) => store.index.has(d))).toEqual([true, true, false, true]);
      // Four hours later: past the 3 h limit, and past storage.maxIdle for the one without a rule.
      await idleJanitor({ maxIdle: HOUR, now: () => Date.now() + 4 * HOUR }).check();
      expect([never, long, plain].map((d) => store.index.has(d))).toEqual([true, false, false]);
      // What left the store leaves the file.
      expect(JSON.parse(await readFile(join(dir, "idle-limits.json"), "utf8"))).toEqual({ [never]: 0 });
    });

    it("stops with eviction while what is pinned cannot be told", async () => {
      const a = await put(KB);
      await writeFile(join(dir, PIN_FILE), "{not json");
      await ageAndRestart([a], 2 * HOUR);
      const j = new Janitor({
        store,
        manifests,
        metadata,
        budget: { maxSize: undefined, high: 0.9, low: 0.5 },
        pins: [],
        pinList: new PinList(dir),
        log: pino({ level: "silent" }),
        fsUsage,
        maxIdle: HOUR,
      });
      await j.check();
      expect(j.evictionBlocked).toBeDefined();
      expect(store.index.has(a)).toBe(true);
    });
  });

  async function sizeOf(digest: string): Promise<number> {
    return (await store.size(digest))!;
  }

  async function manifestBytes(digest: string): Promise<number> {
    return (await manifests.get(digest))!.bytes.length;
  }
});
