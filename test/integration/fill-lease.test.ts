/**
 * The fleet's download leases (src/fill/fill-lease.ts) against a real redis-server: one holder per digest, its
 * value naming the holder; renewed while held, deleted on release; renewing, releasing and taking over compare
 * the whole value, so nobody extends, removes or replaces a lease that is no longer the one they saw.
 */
import { Redis } from "ioredis";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FillLeases } from "../../src/fill/fill-lease.ts";
import { startRedis, type RedisServer } from "../harness/redis.ts";

let server: RedisServer;
let client: Redis;
const log = pino({ level: "silent" });
const origin = { upstream: "docker.io", repo: "library/busybox" };
const digest = (n: number) => `sha256:${String(n).padStart(64, "0")}`;

beforeAll(async () => {
  server = await startRedis();
  client = new Redis(server.url, { lazyConnect: false, maxRetriesPerRequest: 1 });
});

afterAll(async () => {
  client?.disconnect();
  await server?.dispose();
});

function replica(url: string, ttlMs = 30_000): FillLeases {
  return new FillLeases({ redis: client, keyPrefix: "t:", ttlMs, advertiseUrl: url, log });
}

describe("fill leases", () => {
  it("gives a digest to one replica and tells the others who holds it; release frees it", async () => {
    const a = replica("http://127.0.0.1:5001/");
    const b = replica("http://127.0.0.1:5002");
    const first = await a.claim(digest(1), origin);
    expect(first.held).toBe("here");
    const second = await b.claim(digest(1), { upstream: "docker.io", repo: "team/other" });
    expect(second).toMatchObject({
      held: "elsewhere",
      holder: { url: "http://127.0.0.1:5001", upstream: "docker.io", repo: "library/busybox" },
    });
    // Another digest is another lease.
    expect((await b.claim(digest(2), origin)).held).toBe("here");
    if (first.held !== "here") throw new Error("unreachable");
    await first.lease.release();
    expect(await client.exists(`t:fill:${digest(1)}`)).toBe(0);
    expect((await b.claim(digest(1), origin)).held).toBe("here");
  });

  it("takes over only the lease it saw: the first of two replicas wins, the other follows it", async () => {
    const dead = replica("http://127.0.0.1:5003");
    const held = await dead.claim(digest(3), origin);
    const b = replica("http://127.0.0.1:5004");
    const c = replica("http://127.0.0.1:5005");
    const seenByB = await b.claim(digest(3), origin);
    const seenByC = await c.claim(digest(3), origin);
    if (held.held !== "here" || seenByB.held !== "elsewhere" || seenByC.held !== "elsewhere")
      throw new Error("expected one holder");
    const [byB, byC] = await Promise.all([
      b.takeOver(digest(3), seenByB.value, origin),
      c.takeOver(digest(3), seenByC.value, origin),
    ]);
    expect([byB, byC].filter((l) => l !== undefined)).toHaveLength(1);
    const winner = byB ? "http://127.0.0.1:5004" : "http://127.0.0.1:5005";
    expect(await replica("http://127.0.0.1:5006").claim(digest(3), origin)).toMatchObject({
      held: "elsewhere",
      holder: { url: winner },
    });
    // The replaced holder's release does not delete the winner's lease.
    await held.lease.release();
    expect(await client.exists(`t:fill:${digest(3)}`)).toBe(1);
    await (byB ?? byC)!.release();
    expect(await client.exists(`t:fill:${digest(3)}`)).toBe(0);
  });

  it("is renewed while held, outliving its time to live, and deleted on release", async () => {
    const a = replica("http://127.0.0.1:5007", 3_000);
    const claim = await a.claim(digest(4), origin);
    if (claim.held !== "here") throw new Error("expected the lease");
    const key = `t:fill:${digest(4)}`;
    const ttlAtStart = await client.pttl(key);
    // Renewed every second: after twice its time to live, still there.
    await new Promise((r) => setTimeout(r, 6_000));
    expect(await client.exists(key)).toBe(1);
    expect(await client.pttl(key)).toBeGreaterThan(0);
    expect(ttlAtStart).toBeLessThanOrEqual(3_000);
    await claim.lease.release();
    expect(await client.exists(key)).toBe(0);
  });

  it("says `unknown` when Redis cannot answer, so the replica downloads for itself", async () => {
    const broken = new Redis(`redis://127.0.0.1:1`, {
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
    });
    try {
      const leases = new FillLeases({
        redis: broken,
        keyPrefix: "t:",
        ttlMs: 30_000,
        advertiseUrl: "http://127.0.0.1:5008",
        log,
      });
      expect((await leases.claim(digest(6), origin)).held).toBe("unknown");
    } finally {
      broken.disconnect();
    }
  });
});
