/**
 * The janitor with the fleet's records (fleet-content-records.ts, on a real redis-server) over a real store on a
 * temp dir: idle expiry spares what another replica used within the limit, the fleet's total decides the
 * budget, and with Redis gone the janitor keeps the budget over its own index.
 */
import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, utimes } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Janitor } from "../../../src/cache/janitor.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import { failFastRedisOptions } from "../../../src/metadata/redis-metadata-store.ts";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";
import { FleetContentRecords, whenRedisReady } from "../../../src/storage/fleet-content-records.ts";
import { ManifestStore } from "../../../src/storage/manifest-store.ts";
import { startRedis, type RedisServer } from "../../harness/redis.ts";
import { Teardown } from "../../harness/teardown.ts";

const HOUR = 3_600_000;
const KB = 1000;
const teardown = new Teardown();
afterAll(() => teardown.run());
let redis: RedisServer;
let client: Redis;
let n = 0;

beforeAll(async () => {
  redis = teardown.track(await startRedis());
  client = new Redis(redis.url, failFastRedisOptions({ commandTimeoutMs: 300, maxReconnectDelayMs: 100 }));
  client.on("error", () => undefined);
  teardown.add("client", () => client.disconnect());
  await whenRedisReady(client, 5_000);
});

describe("Janitor with the fleet's records", () => {
  let dir: string;
  let store: BlobStore;
  let manifests: ManifestStore;
  let metadata: EmbeddedMetadataStore;
  let fleet: FleetContentRecords;
  /** Another replica of the same fleet. */
  let other: FleetContentRecords;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "janitor-fleet-"));
    store = new BlobStore(dir, { touchIntervalMs: 0 });
    await store.init();
    manifests = new ManifestStore(store);
    await manifests.init();
    metadata = new EmbeddedMetadataStore();
    const keyPrefix = `jf${++n}:`;
    const log = pino({ level: "silent" });
    fleet = new FleetContentRecords({ redis: client, keyPrefix, replica: "here", log });
    // Its clock a second ahead: what it records is later than what this replica recorded just before.
    other = new FleetContentRecords({ redis: client, keyPrefix, replica: "other", log, now: () => Date.now() + 1_000 });
    store.index.observe(fleet);
  });
  afterEach(async () => {
    await metadata.close();
    await rm(dir, { recursive: true, force: true });
  });

  async function put(size: number): Promise<string> {
    const bytes = randomBytes(size);
    const digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
    await putContent(store, digest, bytes);
    return digest;
  }

  const janitor = (opts: { maxSize?: number; maxIdle?: number }) =>
    new Janitor({
      store,
      contentOnDisk: false,
      manifests,
      metadata,
      budget: { maxSize: opts.maxSize, high: 0.9, low: 0.5 },
      pins: [],
      log: pino({ level: "silent" }),
      fsUsage: async () => ({ total: 2e12, free: 1e12 }),
      maxIdle: opts.maxIdle,
      fleet,
    });

  it("spares from idle expiry what another replica used within the limit, and forgets what it expires", async () => {
    const [usedElsewhere, idle] = [await put(KB), await put(KB)];
    // Both idle here (as after a restart two hours after their last use here).
    const t = (Date.now() - 2 * HOUR) / 1000;
    for (const d of [usedElsewhere, idle]) await utimes(store.pathOf(d), t, t);
    store = new BlobStore(dir, { touchIntervalMs: 0 });
    await store.init();
    manifests = new ManifestStore(store);
    await manifests.init();
    // Records made from that listing (the commits above were recorded as uses now: start them anew).
    const keyPrefix = `jf${++n}:`;
    fleet = new FleetContentRecords({ redis: client, keyPrefix, replica: "here", log: pino({ level: "silent" }) });
    other = new FleetContentRecords({ redis: client, keyPrefix, replica: "other", log: pino({ level: "silent" }) });
    await fleet.seed(store.index.mostRecentlyUsed());
    other.used(usedElsewhere); // pulled a moment ago through the other replica
    await other.flush();
    await janitor({ maxIdle: HOUR }).check();
    expect(store.index.has(usedElsewhere)).toBe(true);
    expect(store.index.has(idle)).toBe(false);
    expect(await other.lastAccessOf([idle])).toEqual([undefined]);
    expect(await other.total()).toBe(KB);
  });

  it("holds the fleet's total to the budget, and its own index's while Redis is away", async () => {
    const mine = [await put(KB), await put(KB)];
    // The other replica committed 3 KB this one never saw: the fleet holds 5 KB over a 4 KB budget.
    for (let i = 0; i < 3; i++) other.added(`sha256:${String(i).repeat(64)}`, KB);
    expect(await fleet.total()).toBe(5 * KB);
    await janitor({ maxSize: 4 * KB }).check();
    expect(await fleet.total()).toBeLessThanOrEqual(2 * KB); // down to the low watermark, fleet-wide
    expect(await fleet.count()).toBe(2);
    // Its own two were the fleet's least recently used (committed before the other replica's three).
    expect(store.index.has(mine[0]!) || store.index.has(mine[1]!)).toBe(false);
    await redis.stop();
    try {
      // Its own index holds what it commits now: 4 KB, over 0.9 × 4 KB: it evicts over its own index.
      const more = [await put(KB), await put(KB), await put(KB), await put(KB)];
      await janitor({ maxSize: 4 * KB }).check();
      expect(store.index.bytes).toBeLessThanOrEqual(2 * KB);
      expect(store.index.has(more[3]!)).toBe(true);
    } finally {
      await redis.start();
    }
  });
});
