/**
 * The fleet's content records (fleet-content-records.ts) against a real redis-server: sizes and the fleet's
 * total, the order of last access written at most once per digest per flush, removals seen by the other
 * replicas, the eviction lock (one holder, compare-and-delete), published pins, and Redis going away.
 */
import { Redis } from "ioredis";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { failFastRedisOptions } from "../../../src/metadata/redis-metadata-store.ts";
import { FleetContentRecords, whenRedisReady } from "../../../src/storage/fleet-content-records.ts";
import { waitFor } from "../../harness/processes.ts";
import { startRedis, type RedisServer } from "../../harness/redis.ts";
import { Teardown } from "../../harness/teardown.ts";

const teardown = new Teardown();
afterAll(() => teardown.run());
let redis: RedisServer;
let client: Redis;
let prefixes = 0;

beforeAll(async () => {
  redis = teardown.track(await startRedis());
  client = new Redis(redis.url, failFastRedisOptions({ commandTimeoutMs: 500, maxReconnectDelayMs: 200 }));
  teardown.add("redis client", () => client.disconnect());
  await whenRedisReady(client, 5_000);
});

const digest = (n: number) => `sha256:${n.toString(16).padStart(64, "0")}`;

/** Two replicas' records on one prefix, each with a clock the test sets. */
function pair(): { a: FleetContentRecords; b: FleetContentRecords; clock: { now: number } } {
  const keyPrefix = `t${++prefixes}:`;
  const clock = { now: 1_000_000 };
  const make = (replica: string) =>
    new FleetContentRecords({
      redis: client,
      keyPrefix,
      replica,
      log: pino({ level: "silent" }),
      now: () => clock.now,
    });
  return { a: make("a"), b: make("b"), clock };
}

async function order(records: FleetContentRecords): Promise<string[]> {
  const found: string[] = [];
  for await (const e of records.leastRecentlyUsed()) found.push(e.digest);
  return found;
}

async function zaddCalls(): Promise<number> {
  const info = await client.info("commandstats");
  return Number(/cmdstat_zadd:calls=(\d+)/.exec(info)?.[1] ?? 0);
}

describe("FleetContentRecords", () => {
  it("counts each object once in the fleet's total, whichever replica records it", async () => {
    const { a, b, clock } = pair();
    a.added(digest(1), 100);
    clock.now += 10;
    b.added(digest(2), 50);
    b.added(digest(1), 100); // seen again by another replica: no second count
    expect(await a.total()).toBe(150);
    expect(await b.count()).toBe(2);
    expect(await order(b)).toEqual([digest(1), digest(2)]);
  });

  it("writes uses at the flush, once per digest however many pulls, and moves them to the end of the order", async () => {
    const { a, b, clock } = pair();
    await a.seed([
      { digest: digest(1), size: 10, lastAccess: 1 },
      { digest: digest(2), size: 10, lastAccess: 2 },
      { digest: digest(3), size: 10, lastAccess: 3 },
    ]);
    const before = await zaddCalls();
    for (let i = 0; i < 50; i++) {
      clock.now += 1;
      b.used(digest(1));
    }
    b.used(digest(9)); // no record: a use never creates one (it has no size)
    expect(await zaddCalls()).toBe(before); // nothing written on the pulls' path
    await b.flush();
    expect((await zaddCalls()) - before).toBe(2);
    expect(await order(a)).toEqual([digest(2), digest(3), digest(1)]);
    expect(await a.lastAccessOf([digest(1), digest(9)])).toEqual([clock.now, undefined]);
    // An older time never moves an entry back.
    await a.seed([{ digest: digest(1), size: 10, lastAccess: 5 }]);
    expect(await order(a)).toEqual([digest(2), digest(3), digest(1)]);
    expect(await a.total()).toBe(30);
  });

  it("forgets a removed object, and the other replicas learn of it once", async () => {
    const { a, b } = pair();
    expect(await b.evictedSince()).toEqual([]); // positions the cursor at the stream's end
    a.added(digest(1), 100);
    a.added(digest(2), 7);
    expect(await a.removed(digest(1))).toBe(100);
    expect(await a.total()).toBe(7);
    expect(await order(b)).toEqual([digest(2)]);
    expect(await b.evictedSince()).toEqual([digest(1)]);
    expect(await b.evictedSince()).toEqual([]);
    // Committed again later: recorded anew.
    b.added(digest(1), 100);
    expect(await a.total()).toBe(107);
  });

  it("lets one replica at a time hold the eviction lock, and never releases another's", async () => {
    const { a, b } = pair();
    const lock = await a.tryLock();
    expect(lock).toBeDefined();
    expect(await b.tryLock()).toBeUndefined();
    expect(await b.lockHeld()).toBe(true);
    await lock!.release();
    const second = await b.tryLock();
    expect(second).toBeDefined();
    // a's lock expired and b took it: a's late release must leave b's in place.
    await second!.release();
    const third = await a.tryLock();
    await client.del(a.lockKey); // as expiry would
    const fourth = await b.tryLock();
    expect(fourth).toBeDefined();
    await third!.release();
    expect(await a.lockHeld()).toBe(true);
    expect(await a.tryLock()).toBeUndefined();
    await fourth!.release();
    expect(await a.lockHeld()).toBe(false);
  });

  it("unions the pins every running replica published, until they expire or are withdrawn", async () => {
    const { a, b } = pair();
    await a.publishPins([digest(1)], 60_000);
    await b.publishPins([digest(2), digest(1)], 60_000);
    expect((await a.fleetPins()).sort()).toEqual([digest(1), digest(2)]);
    await a.publishPins([], 60_000);
    expect(await b.fleetPins()).toEqual([digest(2), digest(1)]);
    const real = pair(); // a real clock for expiry
    const c = new FleetContentRecords({
      redis: client,
      keyPrefix: `t${prefixes}:`,
      replica: "c",
      log: pino({ level: "silent" }),
    });
    await c.publishPins([digest(3)], 300);
    expect(await real.a.fleetPins()).toEqual([digest(3)]);
    await waitFor(async () => (await real.a.fleetPins()).length === 0, { timeoutMs: 5_000, what: "pins to expire" });
  });

  it("rejects what the janitor awaits while Redis is down, never throws on the pulls' path, and works again after", async () => {
    const own = teardown.track(await startRedis());
    const c = new Redis(own.url, failFastRedisOptions({ commandTimeoutMs: 300, maxReconnectDelayMs: 100 }));
    teardown.add("own client", () => c.disconnect());
    await whenRedisReady(c, 5_000);
    const records = new FleetContentRecords({ redis: c, keyPrefix: "x:", log: pino({ level: "silent" }) });
    records.added(digest(1), 5);
    expect(await records.total()).toBe(5);
    await own.stop();
    await expect(records.total()).rejects.toThrow();
    await expect(records.tryLock()).rejects.toThrow();
    records.used(digest(1));
    records.added(digest(2), 5);
    await records.flush(); // resolves: the notes are dropped
    await own.start();
    await whenRedisReady(c, 5_000).catch(() => undefined);
    await waitFor(async () => (await records.total().catch(() => -1)) === 0, { timeoutMs: 5_000, what: "Redis back" });
  });
});
