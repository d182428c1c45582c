/**
 * BlobCache alone: real content store on a temp dir, real fill coordinator and embedded metadata store; the
 * upstream is a fake that serves bytes from a map and counts what it was asked.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough, Readable } from "node:stream";
import { pino } from "pino";
import { Registry } from "prom-client";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { BlobCache, type BlobResponse } from "../../../src/cache/blob-cache.ts";
import { FillCoordinator, type FillAdmission } from "../../../src/fill/fill-coordinator.ts";
import { ReceivePacer } from "../../../src/fill/receive-pacer.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { Metrics } from "../../../src/observability/metrics.ts";
import { RegistryError } from "../../../src/oci/errors.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";
import { BufferPool } from "../../../src/storage/file-range-stream.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

const digestOf = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** The upstream's side: what it serves, how, and what it was asked. */
interface FakeUpstream {
  client: UpstreamClient;
  gets: number;
  heads: number;
  /** Served under each digest (the bytes need not hash to it: a lying upstream). */
  blobs: Map<string, Buffer>;
  /** Answers every request with this error (the upstream is unwell). */
  failWith: RegistryError | undefined;
  /** Bodies are written by the test instead of served whole (a download that stays running). */
  held: PassThrough[] | undefined;
  /** When set, every request waits for it before answering (an upstream that accepts and does not reply). */
  hang: Promise<void> | undefined;
}

function fakeUpstream(name: string, opts: { offline?: boolean } = {}): FakeUpstream {
  const fake: FakeUpstream = {
    client: undefined as unknown as UpstreamClient,
    gets: 0,
    heads: 0,
    blobs: new Map(),
    failWith: undefined,
    held: undefined,
    hang: undefined,
  };
  const lookup = (digest: string): Buffer => {
    if (fake.failWith) throw fake.failWith;
    const bytes = fake.blobs.get(digest);
    if (!bytes) throw new RegistryError("BLOB_UNKNOWN", `${digest} is not here`);
    return bytes;
  };
  fake.client = {
    name,
    config: { offline: opts.offline === true, timeouts: { bodyIdle: 60_000 }, revalidateTimeout: 60_000 },
    headBlob: async (_repo: string, digest: string) => {
      fake.heads++;
      await fake.hang;
      return { size: lookup(digest).length };
    },
    getBlob: async (_repo: string, digest: string) => {
      fake.gets++;
      await fake.hang;
      const bytes = lookup(digest);
      if (fake.held) {
        const body = new PassThrough();
        fake.held.push(body);
        return { size: bytes.length, body };
      }
      return {
        size: bytes.length,
        body: Readable.from([bytes.subarray(0, bytes.length >> 1), bytes.subarray(bytes.length >> 1)]),
      };
    },
  } as unknown as UpstreamClient;
  return fake;
}

/** The bytes of a response body, or the error its stream failed with. */
async function bytesOf(body: Readable | Buffer): Promise<{ bytes: Buffer; error?: Error }> {
  if (Buffer.isBuffer(body)) return { bytes: body };
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return { bytes: Buffer.concat(chunks) };
  } catch (error) {
    return { bytes: Buffer.concat(chunks), error: error as Error };
  }
}

/** Waits (bounded) until `check` holds. */
async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe("BlobCache", () => {
  let dir: string;
  let store: BlobStore;
  let metadata: EmbeddedMetadataStore;
  let metrics: Metrics;
  let upstream: FakeUpstream;
  /** Every coordinator made: their downloads end before the directory goes. */
  let coordinators: FillCoordinator[] = [];
  const content = randomBytes(300_000);
  const digest = digestOf(content);

  /** A cache over the store with its own coordinator; `admission` as the janitor's (none: everything is cached). */
  function cacheWith(admission?: FillAdmission): { cache: BlobCache; fills: FillCoordinator } {
    const pacer = new ReceivePacer({ gc: null });
    const fills = new FillCoordinator(
      {
        store,
        buffers: new BufferPool(),
        pacer,
        admission,
        timeoutMs: 10_000,
        log: pino({ level: "silent" }),
        metrics,
      },
      { committedGraceMs: 5_000 },
    );
    coordinators.push(fills);
    return { cache: new BlobCache({ store, fills, metadata, pacer, metrics }), fills };
  }

  /** Content committed in the store, with the records given. */
  async function cached(bytes: Buffer, records: { linked?: string[]; servedBy?: string[] } = {}): Promise<string> {
    const d = digestOf(bytes);
    await putContent(store, d, bytes);
    for (const repo of records.linked ?? []) await metadata.addLinks("hub", repo, [d]);
    for (const name of records.servedBy ?? []) await metadata.addProvenance(name, [d]);
    return d;
  }

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "blob-cache-"));
    store = new BlobStore(dir);
    await store.init();
    metadata = new EmbeddedMetadataStore();
    metrics = new Metrics(new Registry());
    upstream = fakeUpstream("hub");
    upstream.blobs.set(digest, content);
  });
  afterEach(async () => {
    for (const body of upstream.held ?? []) body.destroy();
    await Promise.all(coordinators.map((fills) => fills.drain(5_000)));
    coordinators = [];
    await metadata.close();
    await rm(dir, { recursive: true, force: true });
  });

  describe("GET", () => {
    it("answers cached content this upstream proved for this repository from the store, ranges included", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
      const { cache } = cacheWith();
      const whole = await cache.get(upstream.client, "team/app", digest);
      expect(whole).toMatchObject({ size: content.length, range: undefined, result: "hit" });
      expect((await bytesOf(whole.body)).bytes.equals(content)).toBe(true);
      const part = await cache.get(upstream.client, "team/app", digest, { kind: "from", start: 1000, end: 1999 });
      expect(part).toMatchObject({ size: content.length, range: { start: 1000, end: 1999 }, result: "hit" });
      expect((await bytesOf(part.body)).bytes.equals(content.subarray(1000, 2000))).toBe(true);
      const tail = await cache.get(upstream.client, "team/app", digest, { kind: "suffix", length: 10 });
      expect(tail.range).toEqual({ start: content.length - 10, end: content.length - 1 });
      expect([upstream.gets, upstream.heads]).toEqual([0, 0]);
    });

    it("confirms another repository of a proving upstream with one HEAD, then serves it from the store", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
      const { cache } = cacheWith();
      const first = await cache.get(upstream.client, "team/other", digest);
      expect(first.result).toBe("hit");
      expect((await bytesOf(first.body)).bytes.equals(content)).toBe(true);
      expect([upstream.gets, upstream.heads]).toEqual([0, 1]);
      await bytesOf((await cache.get(upstream.client, "team/other", digest)).body);
      expect(upstream.heads).toBe(1); // linked now: no second HEAD
    });

    it("refuses a repository the upstream denies, releasing the content it had opened", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
      const { cache } = cacheWith();
      upstream.blobs.delete(digest); // the upstream says: not in that repository
      await expect(cache.get(upstream.client, "team/other", digest)).rejects.toMatchObject({ code: "BLOB_UNKNOWN" });
      await until(() => !store.inUse(digest), "the opened content to be released");
    });

    it("makes an upstream that never served the content prove it with its own verified bytes, passed through", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["elsewhere"] });
      const { cache } = cacheWith();
      const proof = await cache.get(upstream.client, "team/app", digest, { kind: "from", start: 0, end: 9 });
      // Passed through: the whole blob, whatever the range (RFC 9110 allows it).
      expect(proof).toMatchObject({ size: content.length, range: undefined, result: "uncached" });
      expect((await bytesOf(proof.body)).bytes.equals(content)).toBe(true);
      expect(upstream.gets).toBe(1);
      await until(async () => (await metadata.provenance(digest)).includes("hub"), "the proof to be recorded");
      const proved = await cache.get(upstream.client, "team/app", digest);
      expect(proved.result).toBe("hit"); // proved: from the store now
      expect((await bytesOf(proved.body)).bytes.equals(content)).toBe(true);
      expect(upstream.gets).toBe(1);
      // The copy opened while the proof was fetched was released once the proof was answered.
      await until(() => !store.inUse(digest), "the cached copies to be released");
    });

    it("breaks the transfer of a proof whose bytes do not verify, and records nothing", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["elsewhere"] });
      const { cache } = cacheWith();
      const wrong = Buffer.from(content);
      wrong[5] = wrong[5]! ^ 0xff;
      upstream.blobs.set(digest, wrong);
      const proof = await cache.get(upstream.client, "team/app", digest);
      const got = await bytesOf(proof.body);
      expect(got.error?.message).toMatch(/hashes to/);
      expect(got.bytes.length).toBeLessThan(content.length);
      expect(await metadata.provenance(digest)).toEqual(["elsewhere"]);
    });

    it("serves content linked before provenance was recorded while the upstream cannot prove it, and only that", async () => {
      const legacy = await cached(content, { linked: ["team/app"] }); // no upstream on record at all
      const other = randomBytes(1000);
      const otherDigest = await cached(other, { linked: ["team/app"], servedBy: ["elsewhere"] });
      upstream.blobs.set(otherDigest, other);
      upstream.failWith = new RegistryError("UNAVAILABLE", "upstream unreachable");
      const { cache } = cacheWith();
      const stale = await cache.get(upstream.client, "team/app", legacy);
      expect(stale.result).toBe("hit");
      expect((await bytesOf(stale.body)).bytes.equals(content)).toBe(true);
      expect(await metrics.staleServed.get()).toMatchObject({
        values: [{ value: 1, labels: { upstream: "hub", reason: "UNAVAILABLE" } }],
      });
      // Another upstream is on record for this one: its bytes stay unreadable here.
      await expect(cache.get(upstream.client, "team/app", otherDigest)).rejects.toMatchObject({ code: "UNAVAILABLE" });
    });

    describe("with an upstream that accepts and does not answer (revalidateTimeout)", () => {
      let release: () => void;
      beforeEach(() => {
        upstream.hang = new Promise((resolve) => (release = resolve));
        (upstream.client.config as { revalidateTimeout: number }).revalidateTimeout = 50;
      });
      afterEach(() => release());

      it("a stored blob needing this repository confirmed: UNAVAILABLE at the deadline, the late HEAD still links it", async () => {
        await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
        const { cache } = cacheWith();
        await expect(cache.get(upstream.client, "team/other", digest)).rejects.toMatchObject({
          code: "UNAVAILABLE",
          detail: { timeout: "revalidateTimeout" },
        });
        await expect(cache.head(upstream.client, "team/other", digest)).rejects.toMatchObject({ code: "UNAVAILABLE" });
        await until(() => !store.inUse(digest), "the opened content to be released");
        release();
        await until(() => metadata.hasLink("hub", "team/other", digest), "the late HEAD to link the repository");
        const served = await cache.get(upstream.client, "team/other", digest);
        expect(served.result).toBe("hit");
        expect((await bytesOf(served.body)).bytes.equals(content)).toBe(true);
        expect(upstream.gets).toBe(0);
      });

      it("legacy content whose proving GET outlasts the deadline is served from the store, and counted stale", async () => {
        await cached(content, { linked: ["team/app"] });
        const { cache } = cacheWith();
        const stale = await cache.get(upstream.client, "team/app", digest);
        expect(stale.result).toBe("hit");
        expect((await bytesOf(stale.body)).bytes.equals(content)).toBe(true);
        expect(await metrics.staleServed.get()).toMatchObject({
          values: [{ value: 1, labels: { upstream: "hub", reason: "UNAVAILABLE" } }],
        });
      });

      it("content the upstream must prove, with nothing to serve meanwhile, waits for it past the deadline", async () => {
        await cached(content, { linked: ["team/app"], servedBy: ["elsewhere"] });
        const { cache } = cacheWith();
        let settled = false;
        const pending = cache.get(upstream.client, "team/app", digest).finally(() => (settled = true));
        await new Promise((resolve) => setTimeout(resolve, 200)); // four deadlines
        expect(settled).toBe(false);
        release();
        const proof = await pending;
        expect(proof.result).toBe("uncached");
        expect((await bytesOf(proof.body)).bytes.equals(content)).toBe(true);
      });
    });

    it("serves linked content from an upstream that is offline by configuration, and answers BLOB_UNKNOWN for the rest", async () => {
      const offline = fakeUpstream("hub", { offline: true });
      offline.failWith = new RegistryError("UNAVAILABLE", "offline by configuration");
      await cached(content, { linked: ["team/app"] });
      const { cache } = cacheWith();
      const served = await cache.get(offline.client, "team/app", digest);
      expect(served.result).toBe("hit");
      await bytesOf(served.body);
      const absent = digestOf(Buffer.from("never cached"));
      await expect(cache.get(offline.client, "team/app", absent)).rejects.toMatchObject({
        code: "BLOB_UNKNOWN",
        detail: { offline: true },
      });
      expect(offline.gets + offline.heads).toBe(1); // only the attempt for what is not cached
    });

    it("starts one download for a miss; a request arriving meanwhile joins it", async () => {
      upstream.held = [];
      const { cache, fills } = cacheWith();
      const first = await cache.get(upstream.client, "team/app", digest);
      expect(first).toMatchObject({ size: content.length, range: undefined, result: "miss" });
      upstream.held[0]!.write(content.subarray(0, 100_000));
      const joined = await cache.get(upstream.client, "team/app", digest, {
        kind: "from",
        start: 200_000,
        end: undefined,
      });
      expect(joined).toMatchObject({ range: { start: 200_000, end: content.length - 1 }, result: "coalesced" });
      const reads = [bytesOf(first.body), bytesOf(joined.body)];
      upstream.held[0]!.end(content.subarray(100_000));
      const [a, b] = await Promise.all(reads);
      expect(a!.bytes.equals(content)).toBe(true);
      expect(b!.bytes.equals(content.subarray(200_000))).toBe(true);
      expect(upstream.gets).toBe(1);
      await fills.current(digest)?.done;
      expect(await store.size(digest)).toBe(content.length);
      expect(await metadata.provenance(digest)).toEqual(["hub"]);
    });

    it("reads the store when the download it found committed meanwhile", async () => {
      upstream.held = [];
      const { cache, fills } = cacheWith();
      const first = await cache.get(upstream.client, "team/app", digest);
      const fill = fills.current(digest)!;
      // The second request misses the store just before the commit, and reaches the fill after it.
      const open = store.open.bind(store);
      store.open = async (d) => {
        const missed = await open(d);
        store.open = open;
        await fill.done;
        return missed;
      };
      const second = cache.get(upstream.client, "team/app", digest, { kind: "from", start: 0, end: 99 });
      upstream.held[0]!.end(content);
      await bytesOf(first.body);
      const answer = await second;
      expect(answer).toMatchObject({ size: content.length, range: { start: 0, end: 99 }, result: "hit" });
      expect((await bytesOf(answer.body)).bytes.equals(content.subarray(0, 100))).toBe(true);
      expect(upstream.gets).toBe(1);
    });

    it("passes a blob there is no room for through to every request, verified, each with its own download", async () => {
      const { cache } = cacheWith({ admit: async () => undefined, noSpace: () => undefined });
      const answers = await Promise.all(
        Array.from({ length: 6 }, () =>
          cache.get(upstream.client, "team/app", digest, { kind: "from", start: 0, end: 9 }),
        ),
      );
      for (const answer of answers)
        expect(answer).toMatchObject({ size: content.length, range: undefined, result: "uncached" });
      const bodies = await Promise.all(answers.map((a: BlobResponse) => bytesOf(a.body)));
      for (const body of bodies) expect(body.bytes.equals(content)).toBe(true);
      expect(upstream.gets).toBe(6);
      expect(await store.size(digest)).toBeUndefined();
      expect(await store.tempFiles()).toEqual([]);
      expect((await metrics.uncachedServed.get()).values[0]?.value).toBe(6);
    });

    it("answers an unsatisfiable range with RANGE_INVALID, for cached content and for a download alike", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
      const { cache } = cacheWith();
      const beyond = { kind: "from", start: content.length, end: undefined } as const;
      await expect(cache.get(upstream.client, "team/app", digest, beyond)).rejects.toMatchObject({
        code: "RANGE_INVALID",
        headers: { "Content-Range": `bytes */${content.length}` },
      });
      await until(() => !store.inUse(digest), "the opened content to be released");
      const cold = randomBytes(1000);
      upstream.blobs.set(digestOf(cold), cold);
      await expect(
        cache.get(upstream.client, "team/app", digestOf(cold), { kind: "suffix", length: 0 }),
      ).rejects.toMatchObject({ code: "RANGE_INVALID" });
    });

    it("answers the empty blob with an empty body, from the store and from a download once verified", async () => {
      const empty = Buffer.alloc(0);
      upstream.blobs.set(digestOf(empty), empty);
      const { cache } = cacheWith();
      const downloaded = await cache.get(upstream.client, "team/app", digestOf(empty));
      expect(downloaded).toMatchObject({ size: 0, result: "miss" });
      expect(Buffer.isBuffer(downloaded.body) && downloaded.body.length).toBe(0);
      expect(await store.size(digestOf(empty))).toBe(0); // answered after the commit
      const stored = await cache.get(upstream.client, "team/app", digestOf(empty));
      expect(stored).toMatchObject({ size: 0, result: "hit" });
    });
  });

  describe("HEAD", () => {
    it("answers from the store when granted, after a HEAD for another repository, and with the upstream's HEAD otherwise", async () => {
      await cached(content, { linked: ["team/app"], servedBy: ["hub"] });
      const { cache } = cacheWith();
      expect(await cache.head(upstream.client, "team/app", digest)).toEqual({ size: content.length, result: "hit" });
      expect(upstream.heads).toBe(0);
      expect(await cache.head(upstream.client, "team/other", digest)).toEqual({ size: content.length, result: "hit" });
      expect(upstream.heads).toBe(1);
      const elsewhere = fakeUpstream("mirror-b");
      elsewhere.blobs.set(digest, content);
      expect(await cache.head(elsewhere.client, "team/app", digest)).toEqual({ size: content.length, result: "miss" });
      expect([elsewhere.heads, elsewhere.gets]).toEqual([1, 0]); // a HEAD reveals the size, and no bytes
    });

    it("answers a download's size, or the upstream's HEAD without starting a download", async () => {
      const { cache, fills } = cacheWith();
      expect(await cache.head(upstream.client, "team/app", digest)).toEqual({ size: content.length, result: "miss" });
      expect(fills.current(digest)).toBeUndefined();
      expect(upstream.gets).toBe(0);
      upstream.held = [];
      const running = await cache.get(upstream.client, "team/app", digest);
      expect(await cache.head(upstream.client, "team/app", digest)).toEqual({ size: content.length, result: "miss" });
      expect(upstream.heads).toBe(1);
      upstream.held[0]!.end(content);
      await bytesOf(running.body);
    });
  });

  describe("ensureCached (prefetch)", () => {
    it("waits for the download, proves cached content by reading the upstream's bytes, and fails when there is no room", async () => {
      const { cache } = cacheWith();
      await cache.ensureCached(upstream.client, "team/app", digest);
      expect(await store.size(digest)).toBe(content.length);
      const elsewhere = fakeUpstream("mirror-b");
      elsewhere.blobs.set(digest, content);
      await cache.ensureCached(elsewhere.client, "team/app", digest);
      expect(elsewhere.gets).toBe(1);
      await until(async () => (await metadata.provenance(digest)).includes("mirror-b"), "the proof to be recorded");
      const full = cacheWith({ admit: async () => undefined, noSpace: () => undefined }).cache;
      const other = randomBytes(1000);
      upstream.blobs.set(digestOf(other), other);
      await expect(full.ensureCached(upstream.client, "team/app", digestOf(other))).rejects.toThrow(/no room/);
    });
  });
});
