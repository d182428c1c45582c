/**
 * `storage.maxSize` held across a fleet: replicas (in-process mirrors) keeping their content in one bucket of a
 * real S3 server (Ceph RADOS Gateway, harness/s3.ts) and sharing one real redis-server, in front of one real
 * registry. What must hold:
 *  - the bucket stays within the budget, evicting in the fleet's order of last access: a blob pulled most
 *    recently through another replica survives while the fleet's least recently used go; content pinned by
 *    `storage.pinned` and by another replica's pins.json is kept;
 *  - a replica whose index still lists an object another replica evicted answers a pull of it by filling it
 *    again from the upstream (verified bytes, a second upstream GET);
 *  - one replica at a time evicts: while the eviction lock is held, replicas over budget skip their sweeps; once
 *    it is free the fleet evicts exactly what one sweep needs.
 */
import { createHash } from "node:crypto";
import { readdir } from "node:fs/promises";
import { type S3Client } from "@aws-sdk/client-s3";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PinList } from "../../src/storage/pin-list.ts";
import { buildImage, pushBlob, pushImage, randomLayer, type Blob, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { waitFor } from "../harness/processes.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import type { S3Server } from "../harness/s3.ts";
import { bucketHolds, mirrorS3Settings, startS3WithBucket } from "../harness/s3-bucket.ts";
import { Teardown } from "../harness/teardown.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";

const BUCKET = "fleet-budget";
const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;

const teardown = new Teardown();
afterAll(() => teardown.run(), 180_000);
let s3: S3Server;
let client: S3Client;
let upstream: Registry;
let redis: RedisServer;
let redisClient: Redis;

beforeAll(async () => {
  ({ s3, client } = await startS3WithBucket(teardown, BUCKET));
  upstream = teardown.track(await startRegistry());
  redis = teardown.track(await startRedis());
  redisClient = new Redis(redis.url);
  redisClient.on("error", () => undefined); // the outage test stops the server: this client reconnects after
  teardown.add("redis client", () => redisClient.disconnect());
}, 180_000);

/** One fleet: its own key prefix in the bucket and in Redis. */
function fleet(name: string) {
  const prefix = `${name}/`;
  const keyPrefix = `${name}:`;
  return {
    prefix,
    keyPrefix,
    lockKey: `${keyPrefix}{content}:evict-lock`,
    start: async (storage: Record<string, unknown>): Promise<TestMirror> =>
      teardown.track(
        await startTestMirror({
          upstreams: { "docker.io": { url: upstream.url, default: true } },
          extra: {
            storage: {
              s3: mirrorS3Settings(s3, BUCKET, prefix),
              ...storage,
            },
            redis: { url: redis.url, keyPrefix },
          },
        }),
      ),
    /** What the bucket holds under the fleet's prefix: content objects, digest → size. */
    holds: async (): Promise<Map<string, number>> => {
      const { objects } = await bucketHolds(client, BUCKET, `${prefix}blobs/sha256/`);
      return new Map([...objects].map(([key, size]) => [`sha256:${key.slice(`${prefix}blobs/sha256/`.length)}`, size]));
    },
  };
}

const sum = (sizes: Iterable<number>) => [...sizes].reduce((a, b) => a + b, 0);

async function pullBlob(m: TestMirror, repo: string, blob: Blob): Promise<void> {
  const res = await fetchRaw(`${m.url}/v2/${repo}/blobs/${blob.digest}`);
  expect(res.status).toBe(200);
  expect(sha256(res.body)).toBe(blob.digest);
}

async function pullImage(m: TestMirror, repo: string, image: BuiltImage): Promise<void> {
  const res = await fetchRaw(`${m.url}/v2/${repo}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(res.status).toBe(200);
  for (const blob of image.blobs()) await pullBlob(m, repo, blob);
}

/** An image's total bytes: manifest, config, layers. */
const imageBytes = (image: BuiltImage) => sum([...image.blobs()].map((b) => b.bytes.length)) + image.manifest.length;

async function metric(m: TestMirror, pattern: RegExp): Promise<number> {
  const text = (await fetchRaw(`${m.url}/metrics`)).body.toString();
  return Number(pattern.exec(text)?.[1] ?? 0);
}
const EVICTED = /^mirror_evictions_total\{reason="budget"\} (\d+)$/m;
const LOCK_BUSY = /^mirror_fleet_eviction_lock_busy_total (\d+)$/m;

async function blobGets(digest: string): Promise<number> {
  await upstream.sync();
  return upstream.count({ method: "GET", kind: "blobs", pathIncludes: digest });
}

describe("storage.maxSize across a fleet on one bucket", () => {
  it("evicts in the fleet's order of last access, keeps what any replica pins, and a stale index refills", async () => {
    const f = fleet("lru");
    const size = 256 * 1024;
    const pinned = buildImage({ format: "oci", layers: [randomLayer(size)], labels: { pinned: "config" } });
    const importPinned = buildImage({ format: "oci", layers: [randomLayer(size)], labels: { pinned: "import" } });
    await pushImage(upstream.url, "team/pinned", "v1", pinned);
    await pushImage(upstream.url, "team/imported", "v1", importPinned);
    const blobs = Array.from({ length: 8 }, () => randomLayer(size));
    for (const b of blobs) await pushBlob(upstream.url, "team/lru", b);
    // Room for both pinned images and 7 layers, not 8 (layers differ by a few bytes): the 8th pull must evict.
    const s = blobs[0]!.bytes.length;
    const maxSize =
      imageBytes(pinned) +
      imageBytes(importPinned) +
      sum(blobs.slice(0, 7).map((b) => b.bytes.length)) +
      Math.floor(s / 2);
    const storage = {
      maxSize,
      highWatermark: 0.99,
      lowWatermark: 0.7,
      pinned: ["docker.io/team/pinned:v1"],
      checkInterval: "1s",
    };
    const a = await f.start(storage);
    const b = await f.start(storage);

    await pullImage(a, "team/pinned", pinned); // the oldest content: pinned by the configuration
    await pullImage(b, "team/imported", importPinned); // next oldest: pinned by B's pins.json only
    await new PinList(b.dataDir).set([{ reference: "docker.io/team/imported:v1", digest: importPinned.digest }]);
    // B publishes its pins.json pins at its next check.
    await waitFor(async () => (await redisClient.keys(`${f.keyPrefix}{content}:pins:*`)).length === 1, {
      timeoutMs: 10_000,
      what: "B's pins published",
    });
    for (let i = 0; i < 6; i++) await pullBlob(a, "team/lru", blobs[i]!);
    // A third replica starts now: its index lists everything so far (the bucket's listing).
    const c = await f.start({ ...storage, checkInterval: "1h" });
    expect(c.mirror.blobStore.index.has(blobs[1]!.digest)).toBe(true);
    // Layer 0 is pulled again, through B: the fleet's most recent now, A's least recent of the layers.
    await pullBlob(b, "team/lru", blobs[0]!);
    await pullBlob(a, "team/lru", blobs[6]!);
    expect(await metric(a, EVICTED)).toBe(0);
    await pullBlob(a, "team/lru", blobs[7]!); // over budget: A evicts

    const held = await f.holds();
    expect(sum(held.values())).toBeLessThanOrEqual(maxSize);
    for (const blob of [...pinned.blobs(), ...importPinned.blobs()]) expect(held.has(blob.digest)).toBe(true);
    expect(held.has(pinned.digest) && held.has(importPinned.digest)).toBe(true);
    expect(held.has(blobs[0]!.digest)).toBe(true); // pulled most recently through B
    expect(held.has(blobs[1]!.digest)).toBe(false); // the fleet's least recently used
    expect(held.has(blobs[7]!.digest)).toBe(true);
    expect(await metric(a, EVICTED)).toBeGreaterThan(0);

    // C's index still lists layer 1 (its check has not run since): its pull is a miss, filled again, verified.
    expect(c.mirror.blobStore.index.has(blobs[1]!.digest)).toBe(true);
    expect(await blobGets(blobs[1]!.digest)).toBe(1);
    await pullBlob(c, "team/lru", blobs[1]!);
    expect(await blobGets(blobs[1]!.digest)).toBe(2);
    await waitFor(async () => (await f.holds()).has(blobs[1]!.digest), { timeoutMs: 10_000, what: "layer 1 again" });
    // The local disks hold no content: only temp files while downloads run (none now) and small state files.
    for (const m of [a, b, c]) {
      const files = (await readdir(m.dataDir, { recursive: true })).map(String);
      for (const blob of blobs) expect(files.filter((f) => f.includes(blob.digest.slice(7)))).toEqual([]);
    }
  });

  it("lets one replica at a time evict: none while the lock is held, then exactly what one sweep needs", async () => {
    const f = fleet("lock");
    const size = 128 * 1024;
    const blobs = Array.from({ length: 6 }, () => randomLayer(size));
    for (const b of blobs) await pushBlob(upstream.url, "team/lock", b);
    const late = randomLayer(size);
    await pushBlob(upstream.url, "team/lock", late);
    const s = blobs[0]!.bytes.length;
    // Over 0.9 × budget with 6 layers; the low watermark holds 2.2 (layers differ by a few bytes): a sweep
    // evicts exactly 4.
    const maxSize = 4 * s;
    const small = { maxSize, highWatermark: 0.9, lowWatermark: 0.55, checkInterval: "1s" };
    const a = await f.start(small);
    const b = await f.start(small);
    const writer = await f.start({ maxSize: 100 * s }); // a replica with a larger budget fills the bucket
    // The lock as another replica's sweep would hold it.
    expect(await redisClient.set(f.lockKey, "someone-else", "PX", 60_000, "NX")).toBe("OK");
    for (const blob of blobs) await pullBlob(writer, "team/lock", blob);
    expect((await f.holds()).size).toBe(6);
    // Both are over their budget and find the lock held at their checks: neither evicts.
    await waitFor(async () => (await metric(a, LOCK_BUSY)) >= 2 && (await metric(b, LOCK_BUSY)) >= 2, {
      timeoutMs: 15_000,
      what: "both replicas to find the lock held",
    });
    expect(await metric(a, EVICTED)).toBe(0);
    expect(await metric(b, EVICTED)).toBe(0);
    expect((await f.holds()).size).toBe(6);
    // A download that needs room meanwhile waits for the sweep (bounded), which does not come: served uncached.
    await pullBlob(a, "team/lock", late);
    expect(await metric(a, /^mirror_uncached_blobs_total\{upstream="docker.io"\} (\d+)$/m)).toBe(1);
    expect((await f.holds()).has(late.digest)).toBe(false);
    expect(await metric(a, EVICTED)).toBe(0);
    await redisClient.del(f.lockKey);
    const evictedByAll = async () =>
      (await metric(a, EVICTED)) + (await metric(b, EVICTED)) + (await metric(writer, EVICTED));
    // The counters move once a sweep has deleted all its victims (the objects go first).
    await waitFor(async () => (await f.holds()).size <= 2 && (await evictedByAll()) >= 4, {
      timeoutMs: 15_000,
      what: "the sweep",
    });
    // Below the high watermark now: no later sweep evicts more. Two sweeps at once would have counted twice.
    const each = [await metric(a, EVICTED), await metric(b, EVICTED), await metric(writer, EVICTED)];
    expect(sum(each), `evictions by a, b, writer: ${each.join(", ")}`).toBe(4);
    expect((await f.holds()).size).toBe(2);
    expect(sum((await f.holds()).values())).toBeLessThanOrEqual(maxSize * 0.9);
  });

  it("holds the budget per replica while Redis is down, never failing a pull, and fleet-wide again once it returns", async () => {
    const f = fleet("outage");
    const size = 128 * 1024;
    const blobs = Array.from({ length: 6 }, () => randomLayer(size));
    for (const blob of blobs) await pushBlob(upstream.url, "team/outage", blob);
    const maxSize = 4 * blobs[0]!.bytes.length;
    const small = { maxSize, highWatermark: 0.9, lowWatermark: 0.55, checkInterval: "1s" };
    const a = await f.start(small);
    const b = await f.start(small);
    await pullBlob(a, "team/outage", blobs[0]!);
    await pullBlob(a, "team/outage", blobs[1]!);
    await redis.stop();
    try {
      // B alone knows only its own commits: it keeps its own 4 within the budget, as without a fleet.
      for (const blob of blobs.slice(2)) await pullBlob(b, "team/outage", blob);
      await waitFor(async () => (await metric(b, EVICTED)) >= 2, { timeoutMs: 10_000, what: "B's own sweep" });
      expect(await metric(b, EVICTED)).toBe(2);
      expect((await f.holds()).size).toBe(4); // A's 2 and B's last 2: over the fleet's budget meanwhile
      for (const blob of blobs.slice(4)) expect((await f.holds()).has(blob.digest)).toBe(true);
    } finally {
      await redis.start();
    }
    // Redis is back, empty: the next check records the bucket again, and one sweep brings the fleet within budget.
    await waitFor(async () => (await f.holds()).size <= 2, { timeoutMs: 20_000, what: "the fleet's sweep" });
    const held = await f.holds();
    expect(sum(held.values())).toBeLessThanOrEqual(maxSize * 0.9);
    await waitFor(async () => Number(await redisClient.get(`${f.keyPrefix}{content}:bytes`)) === sum(held.values()), {
      timeoutMs: 5_000,
      what: "the records to match the bucket",
    });
    for (const blob of blobs) await pullBlob(a, "team/outage", blob);
  });

  it("records what a replica committed while Redis was away once it answers again with records", async () => {
    const f = fleet("away");
    const blobs = Array.from({ length: 2 }, () => randomLayer(64 * 1024));
    for (const blob of blobs) await pushBlob(upstream.url, "team/away", blob);
    const a = await f.start({ maxSize: 100 * 1024 * 1024, checkInterval: "1s" });
    await redis.stop();
    try {
      for (const blob of blobs) await pullBlob(a, "team/away", blob); // committed; not recorded
    } finally {
      await redis.start();
    }
    // Another replica's record arrives first (Redis restarted empty; it committed since): the records are not
    // empty, so only A can tell what it committed meanwhile.
    const other = `sha256:${"0".repeat(64)}`;
    await redisClient.hset(`${f.keyPrefix}{content}:sizes`, other, 1000);
    await redisClient.zadd(`${f.keyPrefix}{content}:access`, Date.now(), other);
    await redisClient.set(`${f.keyPrefix}{content}:bytes`, 1000);
    const bucket = sum((await f.holds()).values());
    expect((await f.holds()).size).toBe(2);
    await waitFor(async () => Number(await redisClient.get(`${f.keyPrefix}{content}:bytes`)) === bucket + 1000, {
      timeoutMs: 10_000,
      what: "A's commits made while Redis was away to be recorded",
    });
    expect(await redisClient.zcard(`${f.keyPrefix}{content}:access`)).toBe(3);
  });
});
