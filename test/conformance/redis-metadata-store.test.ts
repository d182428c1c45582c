// The Redis store against the shared suite, on a real redis-server (test/harness/redis.ts). Each test gets its
// own key prefix; cleanup checks that every key in the database is under it (nothing escapes the prefix), then
// deletes them.
import { Redis } from "ioredis";
import { afterAll, beforeAll, expect } from "vitest";
import { RedisMetadataStore } from "../../src/metadata/redis-metadata-store.ts";
import { allKeys, startRedis } from "../harness/redis.ts";
import { Teardown } from "../harness/teardown.ts";
import { describeMetadataStore } from "./metadata-store.ts";

const teardown = new Teardown();
let client: Redis;
let tests = 0;

beforeAll(async () => {
  const redis = teardown.track(await startRedis());
  client = new Redis(redis.url, { lazyConnect: true });
  await client.connect();
  teardown.add("redis client", async () => void (await client.quit()));
});
afterAll(() => teardown.run());

describeMetadataStore("redis", async () => {
  const keyPrefix = `conformance:${++tests}:`;
  return {
    store: new RedisMetadataStore(client, { keyPrefix }),
    async cleanup() {
      const keys = await allKeys(client);
      await client.flushdb();
      expect(
        keys.filter((key) => !key.startsWith(keyPrefix)),
        "keys outside the store's prefix",
      ).toEqual([]);
    },
  };
});
