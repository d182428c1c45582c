// The failover wrapper against the shared suite with a healthy Redis: it must behave exactly like a store,
// while also writing through to its journalled fallback (whose directory the suite checks for temp files).
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect } from "vitest";
import { FailoverMetadataStore } from "../../src/metadata/failover-metadata-store.ts";
import { EmbeddedMetadataStore } from "../../src/metadata/embedded-metadata-store.ts";
import { failFastRedisOptions, RedisMetadataStore } from "../../src/metadata/redis-metadata-store.ts";
import { allKeys, startRedis } from "../harness/redis.ts";
import { Teardown } from "../harness/teardown.ts";
import { describeMetadataStore } from "./metadata-store.ts";

const teardown = new Teardown();
let client: Redis;
let tests = 0;

beforeAll(async () => {
  const redis = teardown.track(await startRedis());
  client = new Redis(redis.url, { ...failFastRedisOptions(), lazyConnect: true });
  await client.connect();
  teardown.add("redis client", async () => void (await client.quit()));
});
afterAll(() => teardown.run());

describeMetadataStore("failover (redis healthy)", async () => {
  const keyPrefix = `conformance:${++tests}:`;
  const dir = await mkdtemp(join(tmpdir(), "metadata-conformance-"));
  const errors: Error[] = [];
  const fallback = await EmbeddedMetadataStore.open({
    dir: join(dir, "metadata"),
    // The default million-link LRU takes ~100 ms to allocate per test, and the fallback is not the subject here.
    maxLinks: 10_000,
    compactRatio: 2,
    compactMinEntries: 8,
    onError: (err) => errors.push(err),
  });
  const store = new FailoverMetadataStore({ primary: new RedisMetadataStore(client, { keyPrefix }), fallback });
  const changes: string[] = [];
  store.onStateChange((change) => changes.push(`${change.state}: ${change.reason}`));
  expect(store.state).toBe("ok");
  return {
    store,
    dirs: [dir],
    async cleanup() {
      const keys = await allKeys(client);
      await client.flushdb();
      await rm(dir, { recursive: true, force: true });
      expect(
        keys.filter((key) => !key.startsWith(keyPrefix)),
        "keys outside the store's prefix",
      ).toEqual([]);
      expect(errors).toEqual([]);
      // Healthy Redis throughout: every answer came from it, none from the fallback.
      expect(changes).toEqual([]);
    },
  };
});
