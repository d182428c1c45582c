/**
 * Opens the metadata store the configuration asks for: the embedded store (tag pointers and links journaled
 * under `<storage>/metadata`, so a restarted node still serves its cache offline), or, with `redis.url`, Redis
 * in front of that embedded store as a fallback that answers whenever Redis is down or slow.
 */
import { join } from "node:path";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import type { Config } from "../config/schema.ts";
import { EmbeddedMetadataStore } from "./embedded-metadata-store.ts";
import { FailoverMetadataStore } from "./failover-metadata-store.ts";
import type { MetadataStore } from "./metadata-store.ts";
import { failFastRedisOptions, RedisMetadataStore } from "./redis-metadata-store.ts";

/** Which store answers (`embedded` or `redis`), and while Redis is degraded, why. */
export interface MetadataStoreState {
  store: string;
  degraded: boolean;
  reason: string;
}

export async function openMetadataStore(
  config: Config,
  log: Logger,
): Promise<{
  metadata: MetadataStore;
  describeState: () => MetadataStoreState;
  closeMetadata: () => Promise<void>;
  /** The Redis client, when `redis.url` is set: the fleet's download leases use it too (fill-lease.ts). */
  redis?: Redis;
}> {
  const embedded = await EmbeddedMetadataStore.open({
    dir: join(config.storage.path, "metadata"),
    onError: (err) => log.error({ err: err.message }, "metadata journal write failed; the in-memory state is intact"),
  });
  const report = await embedded.loadReport();
  if (report) log.info({ ...report }, "metadata journal loaded");
  if (config.redis === undefined) {
    return {
      metadata: embedded,
      describeState: () => ({ store: "embedded", degraded: false, reason: "" }),
      closeMetadata: () => embedded.close(),
    };
  }
  // ioredis is loaded only here, with redis.url set: imported, it costs ~20 MiB resident that a mirror on the
  // embedded store never uses (test/integration/lazy-loading.test.ts). The client and the failover store are
  // made in one tick after the import: the store's listeners must exist before ioredis reports its first
  // connection error.
  const { Redis } = await import("ioredis");
  const client = new Redis(config.redis.url, failFastRedisOptions({ commandTimeoutMs: config.redis.commandTimeout }));
  const metadata = new FailoverMetadataStore({
    primary: new RedisMetadataStore(client, { keyPrefix: config.redis.keyPrefix }),
    fallback: embedded,
    timeoutMs: config.redis.commandTimeout,
  });
  metadata.onStateChange(({ state, reason }) => {
    if (state === "degraded") log.warn({ reason }, "Redis unavailable: answering from the embedded metadata store");
    else log.info("Redis metadata store is back");
  });
  return {
    metadata,
    redis: client,
    describeState: () => ({ store: "redis", degraded: metadata.state === "degraded", reason: metadata.reason }),
    closeMetadata: async () => {
      await metadata.close();
      await embedded.close();
      client.disconnect();
    },
  };
}
