/**
 * The shared metadata store: Redis via ioredis, so every replica sees the same tag pointers, links, provenance,
 * missing-records and locks. Expiry is Redis key expiry. Key layout (every key starts with `keyPrefix`; `{scope}` is
 * `{<upstream>/<repository>}`, see scopeOf):
 *
 *   tag:{scope}:<tag>           string  JSON TagPointer                    PX retention, refreshed by putTag
 *   tags:{scope}                set     tags that have a pointer           PX retention, refreshed by putTag
 *   linked:{scope}              zset    digest the repository references   PX retention, refreshed on use;
 *                                       → when last used (ms)              members unused for retention dropped
 *   links:{scope}               set     links of older versions (read and adopted into linked:, not written)
 *   missing:{scope}:<reference> string  "1"                                PX the record's own ttl
 *   missing-refs:{scope}        zset    reference → expiry (ms)            outlives its newest record
 *   lock:<name>                 string  owner token                        PX the lock's ttl
 *   repos:{<upstream>}          set     repositories with tags (an index)  PX retention, refreshed by putTag
 *   provenance:{<digest>}       set     upstreams that served the digest   PX retention, refreshed by
 *                                                                          addProvenance and provenance()
 *
 * The braces are a Redis Cluster hash tag: all keys of one repository share a slot, so the MULTI blocks and the
 * purge script below stay valid on a cluster; a provenance key is alone in its slot. Provenance is refreshed
 * when read, unlike links: content served from the cache for longer than the retention is still in use, and
 * losing its record would cost a whole download from the upstream rather than a HEAD. The two index keys exist so that listTags and deleteRepository
 * never scan the keyspace.
 *
 * Tag pointers are written by compare-and-set (PUT_TAG_SCRIPT): a pointer checked earlier than the stored one
 * is refused (the ordering rule, `supersedes` in metadata-store.ts). Links are bounded by use: each carries when
 * it was last added or confirmed by hasLink, and one unused for the retention is dropped, so a busy repository's
 * link set holds what it served in the last retention period instead of every digest it ever referenced.
 *
 * The client is injected and stays the caller's: it may be shared, and its options decide how fast failures
 * surface (see failFastRedisOptions, which FailoverMetadataStore relies on). close() does not quit it.
 */
import { randomUUID } from "node:crypto";
import type { ChainableCommander, Redis, RedisOptions } from "ioredis";
import { timerDelay } from "../config/timer-delay.ts";
import type { MetadataStore, TagPointer } from "./metadata-store.ts";

export interface RedisMetadataStoreOptions {
  /** Prepended to every key, e.g. "mirror:". Keeps the mirror's keys apart from anything else in the database. */
  keyPrefix: string;
  /**
   * How long a tag pointer and the tag index live without being written again, and a link without being used
   * (added, or answered yes by hasLink). Pointers are served when stale (upstream down), so this is long; it only
   * bounds growth from what nobody pulls. Default 30 days.
   */
  retentionMs?: number;
}

const DEFAULT_RETENTION_MS = 30 * 24 * 60 * 60 * 1000;
/** Clock skew between replicas tolerated when pruning missing-refs: members are kept this long past their expiry. */
const MISSING_INDEX_GRACE_MS = 60_000;
/**
 * hasLink rewrites a link's last use only once it is older than this share of the retention, so a busy blob does
 * not cost a Redis write per request: a link used at least once per 9/10 of the retention is never dropped.
 */
const LINK_USE_REFRESH_FRACTION = 0.1;

/**
 * putTag as compare-and-set: stores the pointer (and indexes its tag) unless the stored pointer was checked
 * later. A stored value that is not a pointer counts as absent, as in getTag. KEYS: tag, tags. ARGV: pointer
 * JSON, its checkedAt, retention (ms), tag.
 */
const PUT_TAG_SCRIPT = `
local raw = redis.call("GET", KEYS[1])
if raw then
  local ok, stored = pcall(cjson.decode, raw)
  if ok and type(stored) == "table" and type(stored.digest) == "string" and type(stored.mediaType) == "string"
    and type(stored.checkedAt) == "number" and stored.checkedAt > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[3])
redis.call("SADD", KEYS[2], ARGV[4])
redis.call("PEXPIRE", KEYS[2], ARGV[3])
return 1`;

/**
 * hasLink: yes if the link was used within the retention; a yes is a use, recorded when the last one is older
 * than the refresh age. A link only in the old plain set (written by a version before links carried their use)
 * is adopted into the sorted set the same way. KEYS: linked, links (old). ARGV: digest, now, retention, refresh
 * age (all ms).
 */
const HAS_LINK_SCRIPT = `
local now = tonumber(ARGV[2])
local score = redis.call("ZSCORE", KEYS[1], ARGV[1])
local used = score and tonumber(score)
if not used then
  if redis.call("SISMEMBER", KEYS[2], ARGV[1]) == 0 then return 0 end
  used = 0
elseif used <= now - tonumber(ARGV[3]) then
  return 0
end
if used <= now - tonumber(ARGV[4]) then
  redis.call("ZADD", KEYS[1], "GT", now, ARGV[1])
  redis.call("PEXPIRE", KEYS[1], ARGV[3])
end
return 1`;

/** Deletes a lock only if the caller still owns it: GET and DEL in one step, so an expired-and-retaken lock is safe. */
const UNLOCK_SCRIPT = `
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`;

/**
 * The tags of a repository whose pointer still exists. A pointer expires on its own while the index lives on
 * (refreshed by other tags), so dead members are dropped here, in the same atomic step as the check: a putTag
 * cannot slip in between and lose its index entry. KEYS: tags. ARGV: tag key prefix.
 */
const LIST_TAGS_SCRIPT = `
local alive = {}
for _, tag in ipairs(redis.call("SMEMBERS", KEYS[1])) do
  if redis.call("EXISTS", ARGV[1] .. tag) == 1 then
    alive[#alive + 1] = tag
  else
    redis.call("SREM", KEYS[1], tag)
  end
end
return alive`;

/**
 * Deletes one repository's keys atomically. The per-tag and per-reference keys are read from the two indexes;
 * they share the indexes' hash slot. DEL takes at most 500 keys per call to stay clear of Lua's stack limit.
 * KEYS: tags, missing-refs, linked, links (old). ARGV: tag key prefix, missing key prefix.
 */
const PURGE_SCRIPT = `
local function delete_all(prefix, members)
  for i = 1, #members, 500 do
    local batch = {}
    for j = i, math.min(i + 499, #members) do
      batch[#batch + 1] = prefix .. members[j]
    end
    redis.call("DEL", unpack(batch))
  end
end
delete_all(ARGV[1], redis.call("SMEMBERS", KEYS[1]))
delete_all(ARGV[2], redis.call("ZRANGE", KEYS[2], 0, -1))
return redis.call("DEL", KEYS[1], KEYS[2], KEYS[3], KEYS[4])`;

export class RedisMetadataStore implements MetadataStore {
  readonly client: Redis;
  private readonly prefix: string;
  private readonly retentionMs: number;

  constructor(client: Redis, opts: RedisMetadataStoreOptions) {
    this.client = client;
    this.prefix = opts.keyPrefix;
    this.retentionMs = opts.retentionMs ?? DEFAULT_RETENTION_MS;
    client.on("ready", this.onConnect);
  }

  async getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined> {
    const raw = await this.client.get(this.keys(upstream, repo).tag(tag));
    return raw === null ? undefined : parsePointer(raw);
  }

  async putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void> {
    const k = this.keys(upstream, repo);
    const { digest, mediaType, checkedAt } = pointer;
    await this.client.eval(
      PUT_TAG_SCRIPT,
      2,
      k.tag(tag),
      k.tags,
      JSON.stringify({ digest, mediaType, checkedAt }),
      String(checkedAt),
      this.retentionMs,
      tag,
    );
    // The per-upstream repository index lives in another hash slot, so it cannot join the script; it is an
    // index only, pruned by listRepositories when a repository has no tags left.
    await run(
      this.client.multi().sadd(this.reposKey(upstream), repo).pexpire(this.reposKey(upstream), this.retentionMs),
    );
  }

  async listRepositories(upstream: string): Promise<string[]> {
    const repos = await this.client.smembers(this.reposKey(upstream));
    if (repos.length === 0) return [];
    const pipeline = this.client.pipeline();
    for (const repo of repos) pipeline.exists(this.keys(upstream, repo).tags);
    const results = (await pipeline.exec()) ?? [];
    const alive = repos.filter((_, i) => results[i]?.[1] === 1);
    const dead = repos.filter((_, i) => results[i]?.[1] === 0);
    if (dead.length > 0) await this.client.srem(this.reposKey(upstream), ...dead);
    return alive;
  }

  async deleteTag(upstream: string, repo: string, tag: string): Promise<void> {
    const k = this.keys(upstream, repo);
    await run(this.client.multi().del(k.tag(tag)).srem(k.tags, tag));
  }

  async listTags(upstream: string, repo: string): Promise<string[]> {
    const k = this.keys(upstream, repo);
    return (await this.client.eval(LIST_TAGS_SCRIPT, 1, k.tags, k.tag(""))) as string[];
  }

  async hasLink(upstream: string, repo: string, digest: string): Promise<boolean> {
    const k = this.keys(upstream, repo);
    const refreshAge = Math.ceil(this.retentionMs * LINK_USE_REFRESH_FRACTION);
    return (
      (await this.client.eval(
        HAS_LINK_SCRIPT,
        2,
        k.linked,
        k.oldLinks,
        digest,
        Date.now(),
        this.retentionMs,
        refreshAge,
      )) === 1
    );
  }

  async addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void> {
    if (digests.length === 0) return;
    const k = this.keys(upstream, repo);
    const now = Date.now();
    await run(
      this.client
        .multi()
        // GT: a replica whose clock is behind never moves a last use back.
        .zadd(k.linked, "GT", ...digests.flatMap((digest) => [now, digest]))
        // Links unused for the retention: the bound on the set (hasLink already ignores them).
        .zremrangebyscore(k.linked, "-inf", now - this.retentionMs)
        .pexpire(k.linked, this.retentionMs),
    );
  }

  async addProvenance(upstream: string, digests: readonly string[]): Promise<void> {
    // One MULTI per digest: each key has its own slot.
    await Promise.all(
      [...new Set(digests)].map((digest) => {
        const key = this.provenanceKey(digest);
        return run(this.client.multi().sadd(key, upstream).pexpire(key, this.retentionMs));
      }),
    );
  }

  async provenance(digest: string): Promise<string[]> {
    const key = this.provenanceKey(digest);
    const results = await this.client.multi().smembers(key).pexpire(key, this.retentionMs).exec();
    if (results === null) throw new Error("redis transaction was aborted");
    for (const [err] of results) if (err) throw err;
    return results[0]![1] as string[];
  }

  async putMissing(upstream: string, repo: string, reference: string, ttlMs: number): Promise<void> {
    if (ttlMs <= 0) return this.clearMissing(upstream, repo, reference);
    const k = this.keys(upstream, repo);
    const ttl = Math.ceil(ttlMs);
    const now = Date.now();
    const indexTtl = ttl + MISSING_INDEX_GRACE_MS;
    await run(
      this.client
        .multi()
        .set(k.missing(reference), "1", "PX", ttl)
        .zadd(k.missingRefs, now + ttl, reference)
        // Members whose records expired long ago: keeps the index as small as the live records.
        .zremrangebyscore(k.missingRefs, "-inf", now - MISSING_INDEX_GRACE_MS)
        // NX gives a new index an expiry, GT only ever extends it (a non-volatile key counts as infinite for GT).
        .pexpire(k.missingRefs, indexTtl, "NX")
        .pexpire(k.missingRefs, indexTtl, "GT"),
    );
  }

  async isMissing(upstream: string, repo: string, reference: string): Promise<boolean> {
    return (await this.client.exists(this.keys(upstream, repo).missing(reference))) === 1;
  }

  async clearMissing(upstream: string, repo: string, reference: string): Promise<void> {
    const k = this.keys(upstream, repo);
    await run(this.client.multi().del(k.missing(reference)).zrem(k.missingRefs, reference));
  }

  async tryLock(name: string, ttlMs: number): Promise<string | undefined> {
    const token = randomUUID();
    const set = await this.client.set(this.lockKey(name), token, "PX", Math.max(1, Math.ceil(ttlMs)), "NX");
    return set === "OK" ? token : undefined;
  }

  async unlock(name: string, token: string): Promise<void> {
    await this.client.eval(UNLOCK_SCRIPT, 1, this.lockKey(name), token);
  }

  async deleteRepository(upstream: string, repo: string): Promise<void> {
    const k = this.keys(upstream, repo);
    await this.client.eval(PURGE_SCRIPT, 4, k.tags, k.missingRefs, k.linked, k.oldLinks, k.tag(""), k.missing(""));
    await this.client.srem(this.reposKey(upstream), repo);
  }

  /**
   * Resolves when Redis answers PING: the failover wrapper's health probe, run at start and on every (re)connect.
   * The first probe of each connection also checks the server's version (checkRedisVersion), so a Redis too old
   * for the commands used here is reported, with its version, as the reason the store is unusable.
   */
  async ping(): Promise<void> {
    await this.client.ping();
    this.versionChecked ??= checkRedisVersion(this.client);
    await this.versionChecked.catch((err: unknown) => {
      this.versionChecked = undefined;
      throw err;
    });
  }

  /** Nothing to release: the client belongs to the caller, who quits it. */
  async close(): Promise<void> {
    this.client.off("ready", this.onConnect);
  }

  /** The version check of the current connection (undefined: not done yet, or failed: done again). */
  private versionChecked: Promise<void> | undefined;
  private readonly onConnect = () => {
    this.versionChecked = undefined;
  };

  private keys(upstream: string, repo: string): RepositoryKeys {
    const scope = scopeOf(upstream, repo);
    const p = this.prefix;
    return {
      tag: (tag) => `${p}tag:${scope}:${tag}`,
      tags: `${p}tags:${scope}`,
      linked: `${p}linked:${scope}`,
      oldLinks: `${p}links:${scope}`,
      missing: (reference) => `${p}missing:${scope}:${reference}`,
      missingRefs: `${p}missing-refs:${scope}`,
    };
  }

  private reposKey(upstream: string): string {
    return `${this.prefix}repos:{${escape(upstream, /[%/{}]/g)}}`;
  }

  private provenanceKey(digest: string): string {
    return `${this.prefix}provenance:{${escape(digest, /[%{}]/g)}}`;
  }

  private lockKey(name: string): string {
    return `${this.prefix}lock:${name}`;
  }
}

interface RepositoryKeys {
  tag(tag: string): string;
  tags: string;
  linked: string;
  oldLinks: string;
  missing(reference: string): string;
  missingRefs: string;
}

/**
 * `{<upstream>/<repository>}`, unambiguous for any strings: the upstream cannot contain `/` and neither part can
 * contain a brace once escaped, so the first `/` and the first `}` end them. Valid registry hosts and repository
 * names contain none of the escaped characters, so real keys stay readable.
 */
export function scopeOf(upstream: string, repo: string): string {
  return `{${escape(upstream, /[%/{}]/g)}/${escape(repo, /[%{}]/g)}}`;
}

function escape(value: string, unsafe: RegExp): string {
  return value.replace(unsafe, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`);
}

/** A stored pointer, or undefined if the value is not one (written by something else): absent, not an error. */
/** The oldest Redis this store works with: putMissing uses PEXPIRE with NX and GT, which came in Redis 7.0. */
export const MIN_REDIS_VERSION = "7.0";

/**
 * Throws, naming the version found, when the server reports a Redis version older than MIN_REDIS_VERSION. A
 * server that reports none (a Redis-compatible proxy) is not refused: what it cannot do fails as it is used.
 */
export async function checkRedisVersion(client: Pick<Redis, "info">): Promise<void> {
  const found = /^redis_version:(\d+)\.(\d+)[^\r\n]*/m.exec(await client.info("server"));
  if (!found) return;
  const [major, minor] = MIN_REDIS_VERSION.split(".").map(Number) as [number, number];
  const [, foundMajor, foundMinor] = found.map(Number) as [number, number, number];
  if (foundMajor > major || (foundMajor === major && foundMinor >= minor)) return;
  throw new Error(
    `Redis ${found[0].slice("redis_version:".length)} is older than ${MIN_REDIS_VERSION}, which the metadata store needs (PEXPIRE … NX/GT)`,
  );
}

function parsePointer(raw: string): TagPointer | undefined {
  try {
    const value = JSON.parse(raw) as Partial<TagPointer> | null;
    if (typeof value?.digest !== "string" || typeof value.mediaType !== "string" || typeof value.checkedAt !== "number")
      return undefined;
    return { digest: value.digest, mediaType: value.mediaType, checkedAt: value.checkedAt };
  } catch {
    return undefined;
  }
}

/** Runs a MULTI block; EXEC reports per-command errors in its result rather than rejecting, so look at them. */
async function run(multi: ChainableCommander): Promise<void> {
  const results = await multi.exec();
  if (results === null) throw new Error("redis transaction was aborted");
  for (const [err] of results) if (err) throw err;
}

/**
 * ioredis options for a metadata client that fails fast instead of queueing, as FailoverMetadataStore needs:
 * commands time out after `commandTimeoutMs`, nothing is queued while disconnected, in-flight commands are not
 * retried across reconnects, and reconnection goes on forever with a capped, jittered back-off.
 */
export function failFastRedisOptions(
  opts: { commandTimeoutMs?: number; connectTimeoutMs?: number; maxReconnectDelayMs?: number } = {},
): RedisOptions {
  const maxDelay = opts.maxReconnectDelayMs ?? 2_000;
  return {
    commandTimeout: timerDelay(opts.commandTimeoutMs ?? 500),
    connectTimeout: opts.connectTimeoutMs ?? 2_000,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: (times) => Math.round(Math.min(maxDelay, 50 * 2 ** Math.min(times, 16)) * (0.5 + Math.random() / 2)),
  };
}
