// The Redis store's own contract beyond the conformance suite: the documented key layout and expiries, index
// upkeep, and tolerance of foreign values. Against a real redis-server (test/harness/redis.ts).
import { Redis } from "ioredis";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import type { TagPointer } from "../../../src/metadata/metadata-store.ts";
import { checkRedisVersion, RedisMetadataStore, scopeOf } from "../../../src/metadata/redis-metadata-store.ts";
import { allKeys, startRedis } from "../../harness/redis.ts";
import { Teardown } from "../../harness/teardown.ts";

const teardown = new Teardown();
let client: Redis;

beforeAll(async () => {
  const redis = teardown.track(await startRedis());
  client = new Redis(redis.url, { lazyConnect: true });
  await client.connect();
  teardown.add("redis client", async () => void (await client.quit()));
});
afterAll(() => teardown.run());
afterEach(async () => {
  await client.flushdb();
});

const UP = "docker.io";
const DAY_MS = 24 * 60 * 60 * 1000;
const pointer = (n: number): TagPointer => ({
  digest: `sha256:${n.toString(16).padStart(64, "0")}`,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  checkedAt: 1_700_000_000_000 + n,
});

describe("RedisMetadataStore", () => {
  it("keeps every key under its prefix, in the documented layout, with the documented expiries", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await store.putTag(UP, "library/alpine", "3.20", pointer(1));
    await store.addLinks(UP, "library/alpine", [pointer(1).digest]);
    await store.putMissing(UP, "library/alpine", "nope", 5_000);
    await store.tryLock("revalidate", 10_000);

    expect((await allKeys(client)).sort()).toEqual([
      "m:linked:{docker.io/library/alpine}",
      "m:lock:revalidate",
      "m:missing-refs:{docker.io/library/alpine}",
      "m:missing:{docker.io/library/alpine}:nope",
      "m:repos:{docker.io}",
      "m:tag:{docker.io/library/alpine}:3.20",
      "m:tags:{docker.io/library/alpine}",
    ]);
    expect(JSON.parse((await client.get("m:tag:{docker.io/library/alpine}:3.20"))!)).toEqual(pointer(1));
    const [linked, used] = await client.zrange("m:linked:{docker.io/library/alpine}", 0, -1, "WITHSCORES");
    expect(linked).toBe(pointer(1).digest);
    expect(Math.abs(Number(used) - Date.now())).toBeLessThan(60_000); // when it was last used: now
    for (const key of [
      "m:tag:{docker.io/library/alpine}:3.20",
      "m:tags:{docker.io/library/alpine}",
      "m:linked:{docker.io/library/alpine}",
    ]) {
      const ttl = await client.pttl(key);
      expect(ttl, key).toBeGreaterThan(29 * DAY_MS);
      expect(ttl, key).toBeLessThanOrEqual(30 * DAY_MS);
    }
    expect(await client.pttl("m:missing:{docker.io/library/alpine}:nope")).toBeLessThanOrEqual(5_000);
    expect(await client.pttl("m:missing-refs:{docker.io/library/alpine}")).toBeGreaterThan(5_000);
    expect(await client.pttl("m:lock:revalidate")).toBeLessThanOrEqual(10_000);
  });

  it("keeps provenance per digest under its prefix, for the retention, refreshed when read", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:", retentionMs: 60_000 });
    await store.addProvenance(UP, [pointer(1).digest]);
    const key = `m:provenance:{${pointer(1).digest}}`;
    expect(await allKeys(client)).toEqual([key]);
    expect(await client.smembers(key)).toEqual([UP]);
    expect(await client.pttl(key)).toBeGreaterThan(50_000);
    await client.pexpire(key, 1_000);
    expect(await store.provenance(pointer(1).digest)).toEqual([UP]);
    expect(await client.pttl(key)).toBeGreaterThan(50_000);
  });

  it("honours a shorter retention and refreshes it on every put", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:", retentionMs: 60_000 });
    await store.putTag(UP, "r", "t", pointer(1));
    await client.pexpire("m:tag:{docker.io/r}:t", 1_000);
    await store.putTag(UP, "r", "t", pointer(2));
    expect(await client.pttl("m:tag:{docker.io/r}:t")).toBeGreaterThan(59_000);
  });

  it("refuses a pointer checked earlier than the stored one, and overwrites a value it did not write", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await store.putTag(UP, "r", "t", pointer(2));
    await client.pexpire("m:tag:{docker.io/r}:t", 1_000);
    await store.putTag(UP, "r", "t", pointer(1));
    expect(JSON.parse((await client.get("m:tag:{docker.io/r}:t"))!)).toEqual(pointer(2));
    // A refused write is no use of the pointer: its expiry is its own writer's.
    expect(await client.pttl("m:tag:{docker.io/r}:t")).toBeLessThanOrEqual(1_000);
    await client.set("m:tag:{docker.io/r}:foreign", JSON.stringify({ checkedAt: 9e15 }));
    await store.putTag(UP, "r", "foreign", pointer(1));
    expect(await store.getTag(UP, "r", "foreign")).toEqual(pointer(1));
  });

  it("keeps links in use and drops links unused for the retention", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:", retentionMs: 60_000 });
    const key = "m:linked:{docker.io/r}";
    const [used, idle, expired] = [pointer(1).digest, pointer(2).digest, pointer(3).digest];
    await store.addLinks(UP, "r", [used, idle, expired]);
    // As if written long ago: `used` and `idle` 50 s ago (within the retention), `expired` 61 s ago.
    const now = Date.now();
    await client.zadd(key, now - 50_000, used, now - 50_000, idle, now - 61_000, expired);
    await client.pexpire(key, 10_000);

    expect(await store.hasLink(UP, "r", expired)).toBe(false); // past the retention: gone, even before pruning
    expect(await store.hasLink(UP, "r", used)).toBe(true); // a use, recorded: its last use is now
    expect(Number(await client.zscore(key, used))).toBeGreaterThanOrEqual(now);
    expect(Number(await client.zscore(key, idle))).toBe(now - 50_000);
    expect(await client.pttl(key)).toBeGreaterThan(50_000); // a use keeps the set alive for a retention

    await store.addLinks(UP, "r", [pointer(4).digest]); // writes prune what is past the retention
    expect((await client.zrange(key, 0, -1)).sort()).toEqual([used, idle, pointer(4).digest].sort());

    // A use within a tenth of the retention is not written again: a busy blob costs no write per request.
    await client.zadd(key, now - 1_000, used);
    expect(await store.hasLink(UP, "r", used)).toBe(true);
    expect(Number(await client.zscore(key, used))).toBe(now - 1_000);
  });

  it("adopts links of the old plain set, and purges both", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await client.sadd("m:links:{docker.io/r}", pointer(1).digest);
    await client.pexpire("m:links:{docker.io/r}", 60_000);
    expect(await store.hasLink(UP, "r", pointer(1).digest)).toBe(true);
    expect(await store.hasLink(UP, "r", pointer(2).digest)).toBe(false);
    expect(await client.zscore("m:linked:{docker.io/r}", pointer(1).digest)).not.toBeNull();
    await store.deleteRepository(UP, "r");
    expect(await allKeys(client)).toEqual([]);
  });

  it("lists only tags whose pointer still exists, and drops the others from the index", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await store.putTag(UP, "r", "kept", pointer(1));
    await store.putTag(UP, "r", "expired", pointer(2));
    await client.del("m:tag:{docker.io/r}:expired"); // as if it had expired on its own
    expect(await store.listTags(UP, "r")).toEqual(["kept"]);
    expect(await client.smembers("m:tags:{docker.io/r}")).toEqual(["kept"]);
  });

  it("purges a repository with more keys than one DEL takes, and only that repository", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    for (let i = 0; i < 1_200; i++) await store.putTag(UP, "big", `t${i}`, pointer(i));
    for (let i = 0; i < 600; i++) await store.putMissing(UP, "big", `m${i}`, 60_000);
    await store.putTag(UP, "big/child", "t", pointer(1));
    await store.deleteRepository(UP, "big");
    expect((await allKeys(client)).sort()).toEqual([
      "m:repos:{docker.io}",
      "m:tag:{docker.io/big/child}:t",
      "m:tags:{docker.io/big/child}",
    ]);
    expect(await client.smembers("m:repos:{docker.io}")).toEqual(["big/child"]);
  });

  it("keeps the missing-record index as small as the live records", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await store.putMissing(UP, "r", "old", 60_000);
    // Pretend "old" expired long ago: its index score is in the past, beyond the grace period.
    await client.zadd("m:missing-refs:{docker.io/r}", Date.now() - 10 * 60_000, "old");
    await store.putMissing(UP, "r", "new", 60_000);
    expect(await client.zrange("m:missing-refs:{docker.io/r}", 0, -1)).toEqual(["new"]);
    await store.clearMissing(UP, "r", "new");
    expect(await client.zrange("m:missing-refs:{docker.io/r}", 0, -1)).toEqual([]);
  });

  it("treats a value it did not write as no pointer", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await client.set("m:tag:{docker.io/r}:bad", "not json");
    await client.set("m:tag:{docker.io/r}:wrong", JSON.stringify({ digest: 1 }));
    expect(await store.getTag(UP, "r", "bad")).toBeUndefined();
    expect(await store.getTag(UP, "r", "wrong")).toBeUndefined();
  });

  it("escapes names so no two scopes share a key, while valid names stay readable", () => {
    expect(scopeOf("docker.io", "library/alpine")).toBe("{docker.io/library/alpine}");
    expect(scopeOf("localhost:5000", "a/b-c/d__e")).toBe("{localhost:5000/a/b-c/d__e}");
    expect(scopeOf("a/b", "c")).not.toBe(scopeOf("a", "b/c"));
    expect(scopeOf("a", "b}x")).toBe("{a/b%7Dx}");
    expect(scopeOf("a%2F", "b")).not.toBe(scopeOf("a/", "b"));
  });

  it("checks the server's version at connect: this Redis (7.0 or later) passes", async () => {
    const info = await client.info("server");
    expect(info).toMatch(/^redis_version:(?:[7-9]|\d{2,})\./m);
    await expect(new RedisMetadataStore(client, { keyPrefix: "m:" }).ping()).resolves.toBeUndefined();
  });

  it("refuses a Redis older than 7.0 at every probe, naming the version found, and checks again after a reconnect", async () => {
    const redis = teardown.track(await startRedis());
    // No ready check: ioredis's own runs INFO, which is replaced below.
    const old = new Redis(redis.url, { lazyConnect: true, enableReadyCheck: false });
    await old.connect();
    // This machine has no Redis 6: the real server answers everything but INFO, which says what a 6.2 says.
    let version = "6.2.14";
    const realInfo = old.info.bind(old);
    old.info = async () => (await realInfo("server")).replace(/^redis_version:.*$/m, `redis_version:${version}`);
    try {
      const store = new RedisMetadataStore(old, { keyPrefix: "m:" });
      await expect(store.ping()).rejects.toThrow(
        "Redis 6.2.14 is older than 7.0, which the metadata store needs (PEXPIRE … NX/GT)",
      );
      await expect(store.ping()).rejects.toThrow("Redis 6.2.14 is older than 7.0");
      version = "7.2.4";
      await expect(store.ping()).resolves.toBeUndefined();
      // Once good, a connection is not asked again; a new connection is.
      version = "6.0.0";
      await expect(store.ping()).resolves.toBeUndefined();
      old.disconnect(true);
      await new Promise<void>((resolve) => old.once("ready", () => resolve()));
      await expect(store.ping()).rejects.toThrow("Redis 6.0.0 is older than 7.0");
      await expect(
        checkRedisVersion({ info: async () => "# Server\r\nredis_version:10.0.1\r\n" }),
      ).resolves.toBeUndefined();
    } finally {
      old.disconnect();
    }
  });

  it("leaves the injected client open on close", async () => {
    const store = new RedisMetadataStore(client, { keyPrefix: "m:" });
    await store.close();
    expect(client.status).toBe("ready");
    await store.ping();
  });
});
