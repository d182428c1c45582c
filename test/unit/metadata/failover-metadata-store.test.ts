// The failover wrapper against a real redis-server that is killed, hung and restarted under it: calls keep
// succeeding from the fallback within the timeout, the state says degraded and why, and it comes back to ok.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterEach, describe, expect, it } from "vitest";
import { FailoverMetadataStore, type MetadataStoreStateChange } from "../../../src/metadata/failover-metadata-store.ts";
import { EmbeddedMetadataStore } from "../../../src/metadata/embedded-metadata-store.ts";
import type { TagPointer } from "../../../src/metadata/metadata-store.ts";
import { failFastRedisOptions, RedisMetadataStore } from "../../../src/metadata/redis-metadata-store.ts";
import { waitFor } from "../../harness/processes.ts";
import { startRedis, type RedisServer } from "../../harness/redis.ts";
import { Teardown } from "../../harness/teardown.ts";

let teardown = new Teardown();
afterEach(async () => {
  const current = teardown;
  teardown = new Teardown();
  await current.run();
});

const UP = "docker.io";
const PREFIX = "failover:";
const TIMEOUT_MS = 300;
/** Scheduling slack on a loaded 2-core machine, on top of the timeout a call may legitimately take. */
const SLACK_MS = 400;
const pointer = (n: number): TagPointer => ({
  digest: `sha256:${n.toString(16).padStart(64, "0")}`,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  checkedAt: 1_700_000_000_000 + n,
});

interface Setup {
  redis: RedisServer;
  client: Redis;
  store: FailoverMetadataStore;
  /** The embedded copy alone. */
  fallback: EmbeddedMetadataStore;
  /** Redis alone, as another replica sees it (same client and prefix). */
  shared: RedisMetadataStore;
  changes: MetadataStoreStateChange[];
}

/** A store over a fresh redis-server (connected before the store is built), or over the given one, as it is. */
async function setup(opts: { redis?: RedisServer; maxUnsynced?: number } = {}): Promise<Setup> {
  const redis = opts.redis ?? teardown.track(await startRedis());
  const dir = await mkdtemp(join(tmpdir(), "failover-"));
  teardown.add("fallback dir", () => rm(dir, { recursive: true, force: true }));
  const fallback = await EmbeddedMetadataStore.open({ dir, maxLinks: 10_000 });
  const client = new Redis(redis.url, failFastRedisOptions({ commandTimeoutMs: TIMEOUT_MS, maxReconnectDelayMs: 500 }));
  teardown.add("redis client", () => client.disconnect());
  // Built in the same tick as the client, so the store's error listener is there before the first connect fails.
  const store = new FailoverMetadataStore({
    primary: new RedisMetadataStore(client, { keyPrefix: PREFIX }),
    fallback,
    timeoutMs: TIMEOUT_MS,
    probeIntervalMs: 200,
    maxUnsynced: opts.maxUnsynced,
  });
  teardown.add("store", () => store.close());
  if (opts.redis === undefined)
    await waitFor(async () => store.state === "ok", { timeoutMs: 5_000, what: "the store to see Redis" });
  const changes: MetadataStoreStateChange[] = [];
  store.onStateChange((change) => changes.push(change));
  return { redis, client, store, fallback, shared: new RedisMetadataStore(client, { keyPrefix: PREFIX }), changes };
}

/** Makes the store degraded on a hung (SIGSTOPped) Redis, which keeps its data for when it continues. */
async function hang({ redis, store }: Setup): Promise<void> {
  await redis.pause();
  await store.listTags(UP, "probe"); // times out: degraded
  expect(store.state).toBe("degraded");
}

async function continueAndRecover({ redis, store }: Setup): Promise<void> {
  await redis.resume();
  await waitFor(async () => store.state === "ok", { timeoutMs: 10_000, what: "state ok after SIGCONT" });
}

/** Waits until writes made while degraded have reached Redis (the replay runs in the background). */
async function replayed(check: () => Promise<boolean>, what: string): Promise<void> {
  await waitFor(check, { timeoutMs: 5_000, what });
}

/** Runs `call` and returns its result with how long it took. */
async function timed<T>(call: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const start = performance.now();
  const value = await call();
  return { value, ms: performance.now() - start };
}

describe("FailoverMetadataStore", () => {
  it("answers from the fallback when redis-server is killed, says why, and is ok again after a restart on the same port", async () => {
    const { redis, client, store, changes } = await setup();
    expect(store.state).toBe("ok");
    await store.putTag(UP, "library/app", "before", pointer(1));
    await store.addLinks(UP, "library/app", [pointer(1).digest]);
    await store.addProvenance(UP, [pointer(1).digest]);
    // Recorded in Redis by another replica: learnt by the fallback when read through this store.
    await new RedisMetadataStore(client, { keyPrefix: PREFIX }).addProvenance("other.io", [pointer(1).digest]);
    expect((await store.provenance(pointer(1).digest)).sort()).toEqual([UP, "other.io"].sort());
    expect(await client.exists(`${PREFIX}tag:{docker.io/library/app}:before`)).toBe(1);

    const killedAt = performance.now();
    await redis.kill();
    const read = await timed(() => store.getTag(UP, "library/app", "before"));
    expect(read.value).toEqual(pointer(1));
    expect(read.ms).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    await waitFor(async () => store.state === "degraded", { timeoutMs: 2_000, what: "state degraded after the kill" });
    const detectedMs = performance.now() - killedAt;
    expect(store.reason).toMatch(/redis/i);
    expect(changes.map((c) => c.state)).toEqual(["degraded"]);

    // Everything keeps working, from the fallback, at memory speed.
    const writes = await timed(async () => {
      await store.putTag(UP, "library/app", "during", pointer(2));
      await store.addLinks(UP, "library/app", [pointer(2).digest]);
      await store.addProvenance(UP, [pointer(2).digest]);
      await store.putMissing(UP, "library/app", "nope", 60_000);
    });
    expect(writes.ms).toBeLessThan(SLACK_MS);
    expect((await store.listTags(UP, "library/app")).sort()).toEqual(["before", "during"]);
    expect(await store.hasLink(UP, "library/app", pointer(2).digest)).toBe(true);
    expect((await store.provenance(pointer(1).digest)).sort()).toEqual([UP, "other.io"].sort());
    expect(await store.provenance(pointer(2).digest)).toEqual([UP]);
    expect(await store.isMissing(UP, "library/app", "nope")).toBe(true);
    const lock = await store.tryLock("revalidate", 60_000);
    expect(lock).toBeDefined();
    expect(await store.tryLock("revalidate", 60_000)).toBeUndefined();
    await store.unlock("revalidate", lock!);
    expect(await store.tryLock("revalidate", 60_000)).toBeDefined();
    await store.deleteTag(UP, "library/app", "during");

    const restartAt = performance.now();
    await redis.start();
    await waitFor(async () => store.state === "ok", { timeoutMs: 10_000, what: "state ok after the restart" });
    const recoveredMs = performance.now() - restartAt;
    expect(changes.map((c) => c.state)).toEqual(["degraded", "ok"]);
    console.info(
      `redis killed → degraded in ${detectedMs.toFixed(0)} ms; first read after the kill took ${read.ms.toFixed(0)} ms; restarted → ok in ${recoveredMs.toFixed(0)} ms`,
    );

    // Redis is the one answering again (it restarted empty), and writes reach it.
    expect(await store.getTag(UP, "library/app", "before")).toBeUndefined();
    await store.putTag(UP, "library/app", "after", pointer(3));
    expect(await client.exists(`${PREFIX}tag:{docker.io/library/app}:after`)).toBe(1);
  });

  it("treats a hung redis-server (SIGSTOP) as down after the timeout, and recovers when it continues", async () => {
    const { redis, store, changes } = await setup();
    await store.putTag(UP, "r", "t", pointer(1));

    await redis.pause();
    const first = await timed(() => store.getTag(UP, "r", "t"));
    expect(first.value).toEqual(pointer(1));
    expect(first.ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 5);
    expect(first.ms).toBeLessThan(TIMEOUT_MS + SLACK_MS);
    expect(store.state).toBe("degraded");
    expect(store.reason).toMatch(/longer than 300 ms|timed out/);
    // Once degraded, calls no longer wait for Redis at all.
    const next = await timed(() => store.getTag(UP, "r", "t"));
    expect(next.ms).toBeLessThan(50);

    const resumedAt = performance.now();
    await redis.resume();
    await waitFor(async () => store.state === "ok", { timeoutMs: 5_000, what: "state ok after SIGCONT" });
    console.info(
      `hung redis: first call answered from the fallback after ${first.ms.toFixed(0)} ms; SIGCONT → ok in ${(performance.now() - resumedAt).toFixed(0)} ms`,
    );
    expect(changes.map((c) => c.state)).toEqual(["degraded", "ok"]);
    expect(await store.getTag(UP, "r", "t")).toEqual(pointer(1));
  });

  it("starts degraded while Redis is unreachable, and turns ok when it comes up", async () => {
    const redis = teardown.track(await startRedis());
    await redis.stop();
    const { store, changes } = await setup({ redis });
    expect(store.state).toBe("degraded");
    expect(store.reason).not.toBe("");
    await store.putTag(UP, "r", "t", pointer(1));
    expect(await store.getTag(UP, "r", "t")).toEqual(pointer(1));

    await redis.start();
    await waitFor(async () => store.state === "ok", { timeoutMs: 10_000, what: "state ok once Redis is up" });
    expect(changes.map((c) => c.state)).toEqual(["ok"]);
  });

  it("does not roll back a tag revalidated while Redis hung: the later check wins, locally and in Redis", async () => {
    const s = await setup();
    const { store, fallback, shared } = s;
    await store.putTag(UP, "library/app", "latest", pointer(1));
    await hang(s);
    await store.putTag(UP, "library/app", "latest", pointer(2)); // the upstream moved while Redis hung
    await continueAndRecover(s);

    expect(await store.getTag(UP, "library/app", "latest")).toEqual(pointer(2));
    expect(await fallback.getTag(UP, "library/app", "latest")).toEqual(pointer(2));
    await replayed(
      async () => (await shared.getTag(UP, "library/app", "latest"))?.digest === pointer(2).digest,
      "Redis to hold the newer pointer",
    );
  });

  it("takes a pointer another replica checked later from Redis, over the one written locally while degraded", async () => {
    const s = await setup();
    const { store, fallback, shared } = s;
    await store.putTag(UP, "r", "t", pointer(1));
    await shared.putTag(UP, "r", "t", pointer(3)); // another replica's newer check
    await hang(s);
    await store.putTag(UP, "r", "t", pointer(2)); // checked before the other replica's, written later
    await continueAndRecover(s);

    expect(await store.getTag(UP, "r", "t")).toEqual(pointer(3));
    expect(await fallback.getTag(UP, "r", "t")).toEqual(pointer(3));
    expect(await shared.getTag(UP, "r", "t")).toEqual(pointer(3));
  });

  it("replays links and tags recorded while Redis hung, so other replicas and this one know them after", async () => {
    const s = await setup();
    const { store, shared } = s;
    await hang(s);
    await store.addLinks(UP, "library/app", [pointer(7).digest, pointer(8).digest]);
    await store.putTag(UP, "library/app", "new", pointer(7));
    await continueAndRecover(s);

    expect(await store.hasLink(UP, "library/app", pointer(7).digest)).toBe(true);
    await replayed(
      async () =>
        (await shared.hasLink(UP, "library/app", pointer(8).digest)) &&
        (await shared.getTag(UP, "library/app", "new")) !== undefined,
      "the links and the tag to reach Redis",
    );
    expect(await shared.hasLink(UP, "library/app", pointer(7).digest)).toBe(true);
    expect(await shared.getTag(UP, "library/app", "new")).toEqual(pointer(7));
  });

  it("replays what was written while Redis was down into a Redis that restarted empty, and nothing else", async () => {
    const s = await setup();
    const { redis, store, shared } = s;
    await store.putTag(UP, "r", "before", pointer(1));
    await redis.kill();
    await waitFor(async () => store.state === "degraded", { timeoutMs: 2_000, what: "state degraded after the kill" });
    await store.putTag(UP, "r", "during", pointer(2));
    await store.addLinks(UP, "r", [pointer(2).digest]);
    await store.putTag(UP, "r", "deleted", pointer(3));
    await store.deleteTag(UP, "r", "deleted");
    await redis.start();
    await waitFor(async () => store.state === "ok", { timeoutMs: 10_000, what: "state ok after the restart" });

    await replayed(
      async () =>
        (await shared.getTag(UP, "r", "during")) !== undefined && (await shared.hasLink(UP, "r", pointer(2).digest)),
      "the outage's writes to reach Redis",
    );
    expect(await shared.getTag(UP, "r", "during")).toEqual(pointer(2));
    // Written before the outage (Redis lost it, as it would a deletion by another replica): Redis's "none" holds.
    expect(await store.getTag(UP, "r", "before")).toBeUndefined();
    expect(await shared.getTag(UP, "r", "deleted")).toBeUndefined();
    expect((await shared.listTags(UP, "r")).sort()).toEqual(["during"]);
  });

  it("remembers at most maxUnsynced writes for replay, the most recent", async () => {
    const s = await setup({ maxUnsynced: 2 });
    const { store, shared } = s;
    await hang(s);
    await store.addLinks(UP, "r", [pointer(1).digest, pointer(2).digest, pointer(3).digest]);
    await continueAndRecover(s);
    await replayed(
      async () =>
        (await shared.hasLink(UP, "r", pointer(2).digest)) && (await shared.hasLink(UP, "r", pointer(3).digest)),
      "the two most recent links to reach Redis",
    );
    expect(await shared.hasLink(UP, "r", pointer(1).digest)).toBe(false);
    expect(await store.hasLink(UP, "r", pointer(1).digest)).toBe(false); // costs its caller one upstream HEAD
  });

  it("survives a throwing state listener, and stops calling an unsubscribed one", async () => {
    const { redis, store } = await setup();
    const seen: string[] = [];
    store.onStateChange(() => {
      throw new Error("broken metrics hook");
    });
    const unsubscribe = store.onStateChange((c) => seen.push(c.state));
    await redis.kill();
    await waitFor(async () => store.state === "degraded", { timeoutMs: 2_000, what: "state degraded" });
    unsubscribe();
    await redis.start();
    await waitFor(async () => store.state === "ok", { timeoutMs: 10_000, what: "state ok" });
    expect(seen).toEqual(["degraded"]);
  });
});
