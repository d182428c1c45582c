/**
 * What a fleet of replicas sharing one object store (`storage.s3` + `redis.url`) knows together about the content
 * in it: each object's size and last access, the fleet's total, an eviction lock and the pins each replica holds
 * in its own `pins.json`. The janitor of each replica keeps `storage.maxSize` across the fleet with it: admission
 * counts the fleet's total, and a sweep evicts in the fleet's order of last access, one replica at a time.
 *
 * Keys (every key starts with the Redis `keyPrefix`; `{content}` is a Redis Cluster hash tag, so the scripts below
 * touch one slot):
 *
 *   {content}:sizes            hash    digest → size (bytes)                     written on commit / first sight
 *   {content}:access           zset    digest → last access (ms since the epoch)
 *   {content}:bytes            string  the sum of `sizes` (kept by the scripts)
 *   {content}:evicted          stream  `digest` of each evicted object, capped   read by the other replicas
 *   {content}:evict-lock       string  {replica, id} of the replica evicting      PX LOCK_TTL_MS, renewed
 *   {content}:pins:<replica>   string  JSON digests pinned in that replica's pins.json     PX pinsTtlMs
 *   {content}:pin-holders      zset    replica → when its pins key expires (ms)
 *
 * Access is recorded without a Redis call on the pull's path: a use only notes the digest and time in memory, and
 * every `flushMs` the notes go out in one pipeline (at most one write per digest per flush, whatever the number
 * of pulls). A commit (or an object first seen here) is written at once, but not awaited: its size must count in
 * the fleet's total before this replica's next admission (one connection: Redis runs commands in the order sent).
 *
 * Redis unreachable: the calls the janitor awaits reject (it falls back to its own index, and says so); the
 * notes of accesses are dropped after a failed flush. Pulls never wait on any of it. The records are repaired
 * from a listing of the bucket (`seed`) at start and when they come back empty (a Redis restart); a record
 * whose object is gone costs one idempotent delete, an object without a record is invisible to the budget
 * until the next seed.
 */
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import { timerDelay } from "../config/timer-delay.ts";
import { errorMessage } from "../caught-errors.ts";

/** Records `digest` (size, and last access unless an earlier write said later). KEYS: sizes, access, bytes. */
const ADD = `if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then redis.call('INCRBY', KEYS[3], ARGV[2]) end
redis.call('ZADD', KEYS[2], 'GT', ARGV[3], ARGV[1])
return 1`;
/** Forgets `digest` and appends it to the evicted stream. KEYS: sizes, access, bytes, evicted. ARGV: digest, cap. */
const REMOVE = `local s = redis.call('HGET', KEYS[1], ARGV[1])
if s then redis.call('HDEL', KEYS[1], ARGV[1]) redis.call('DECRBY', KEYS[3], s) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'digest', ARGV[1])
return s`;
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;

/** The eviction lock lives this long unless renewed (every third of it while a sweep runs). */
export const LOCK_TTL_MS = 30_000;
/** The evicted stream keeps about this many entries: a replica that reads less often re-learns by NotFound. */
const EVICTED_CAP = 10_000;
/** Pages read from the access order per sweep, PAGE entries each. */
const PAGE = 256;
const MAX_PAGES = 4_096;
/** More distinct digests noted than this between flushes: flushed at once (bounds the memory held). */
const MAX_PENDING = 50_000;

/** Resolves once `redis` is connected (its commands fail fast before), or rejects after `ms`. */
export async function whenRedisReady(redis: Redis, ms: number): Promise<void> {
  if (redis.status === "ready") return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      redis.off("ready", ready);
      reject(new Error(`Redis not connected after ${ms} ms`));
    }, ms);
    const ready = () => {
      clearTimeout(timer);
      resolve();
    };
    redis.once("ready", ready);
  });
}

/** One object as the fleet records it. */
export interface FleetEntry {
  digest: string;
  size: number;
  /** Last access anywhere in the fleet (ms). */
  lastAccess: number;
}

/** The eviction lock, held by this replica until released (renewed meanwhile). */
export interface EvictionLock {
  release(): Promise<void>;
}

export class FleetContentRecords {
  private readonly redis: Redis;
  private readonly k: {
    sizes: string;
    access: string;
    bytes: string;
    evicted: string;
    lock: string;
    pinHolders: string;
    pins: (replica: string) => string;
  };
  /** This replica's name in the lock and the pin keys (its advertised URL, or a random id). */
  readonly replica: string;
  private readonly flushMs: number;
  private readonly log: Logger;
  private readonly now: () => number;
  /** Accesses noted since the last flush: digest → latest time. */
  private pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  /** Last entry read from the evicted stream; undefined until the first read positions it at the end. */
  private evictedCursor: string | undefined;
  private writeFailed = false;

  constructor(opts: {
    redis: Redis;
    keyPrefix: string;
    replica?: string;
    /** How often noted accesses are written (ms); default 1 s. */
    flushMs?: number;
    log: Logger;
    now?: () => number;
  }) {
    this.redis = opts.redis;
    const base = `${opts.keyPrefix}{content}:`;
    this.k = {
      sizes: `${base}sizes`,
      access: `${base}access`,
      bytes: `${base}bytes`,
      evicted: `${base}evicted`,
      lock: `${base}evict-lock`,
      pinHolders: `${base}pin-holders`,
      pins: (replica) => `${base}pins:${replica}`,
    };
    this.replica = opts.replica ?? randomUUID();
    this.flushMs = opts.flushMs ?? 1_000;
    this.log = opts.log;
    this.now = opts.now ?? Date.now;
  }

  /** The eviction lock's key (tests, operators). */
  get lockKey(): string {
    return this.k.lock;
  }

  /** Starts writing noted accesses every `flushMs`. */
  start(): void {
    this.timer ??= setInterval(() => void this.flush(), timerDelay(this.flushMs));
    this.timer.unref();
  }

  /** Stops the timer and writes what is still noted. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  /** `digest` was used now (a pull served here): noted, written at the next flush. Never touches Redis. */
  used(digest: string): void {
    this.pending.set(digest, this.now());
    if (this.pending.size > MAX_PENDING) void this.flush();
  }

  /** `digest` (`size` bytes) was committed, or first seen in the store, here: written now, not awaited. */
  added(digest: string, size: number): void {
    this.redis.eval(ADD, 3, this.k.sizes, this.k.access, this.k.bytes, digest, size, this.now()).then(
      () => this.wrote(),
      (err: unknown) => this.writeFailure(err),
    );
  }

  /** Writes the noted accesses: only digests the fleet records (an access never creates a record). Never throws. */
  flush(): Promise<void> {
    if (this.flushing) return this.flushing;
    if (this.pending.size === 0) return Promise.resolve();
    const batch = this.pending;
    this.pending = new Map();
    this.flushing = (async () => {
      try {
        const pipeline = this.redis.pipeline();
        for (const [digest, at] of batch) pipeline.zadd(this.k.access, "XX", "GT", at, digest);
        const results = (await pipeline.exec()) ?? [];
        const failed = results.find(([err]) => err !== null);
        if (failed) throw failed[0] as Error;
        this.wrote();
      } catch (err) {
        this.writeFailure(err); // the notes are dropped: recency is approximate while Redis is away
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  /** Records every object of a listing (start-up, records found empty); last access only moves forward. */
  async seed(entries: Iterable<FleetEntry>): Promise<number> {
    let pipeline = this.redis.pipeline();
    let queued = 0;
    let total = 0;
    const run = async () => {
      const results = (await pipeline.exec()) ?? [];
      const failed = results.find(([err]) => err !== null);
      if (failed) throw failed[0] as Error;
      pipeline = this.redis.pipeline();
      queued = 0;
    };
    for (const e of entries) {
      pipeline.eval(ADD, 3, this.k.sizes, this.k.access, this.k.bytes, e.digest, e.size, e.lastAccess);
      total++;
      if (++queued >= 500) await run();
    }
    if (queued > 0) await run();
    return total;
  }

  /** The fleet's committed bytes. Rejects when Redis cannot say. */
  async total(): Promise<number> {
    return Number((await this.redis.get(this.k.bytes)) ?? 0);
  }

  /** How many objects the fleet records. */
  async count(): Promise<number> {
    return this.redis.zcard(this.k.access);
  }

  /** Last access recorded for each of `digests` (undefined: no record). */
  async lastAccessOf(digests: readonly string[]): Promise<Array<number | undefined>> {
    if (digests.length === 0) return [];
    const scores = await this.redis.zmscore(this.k.access, ...digests);
    return scores.map((s) => (s === null ? undefined : Number(s)));
  }

  /**
   * The fleet's objects, least recently used first, a page at a time. A member without a size (written by an
   * access racing an eviction) is skipped.
   */
  async *leastRecentlyUsed(): AsyncGenerator<FleetEntry> {
    const seen = new Set<string>();
    for (let page = 0; page < MAX_PAGES; page++) {
      const flat = await this.redis.zrange(this.k.access, page * PAGE, (page + 1) * PAGE - 1, "WITHSCORES");
      if (flat.length === 0) return;
      const digests: string[] = [];
      const scores: number[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) {
        digests.push(flat[i]!);
        scores.push(Number(flat[i + 1]));
      }
      const sizes = await this.redis.hmget(this.k.sizes, ...digests);
      for (let i = 0; i < digests.length; i++) {
        const size = sizes[i];
        // Pages shift when members move meanwhile: an entry seen twice is offered once.
        if (size === null || size === undefined || seen.has(digests[i]!)) continue;
        seen.add(digests[i]!);
        yield { digest: digests[i]!, size: Number(size), lastAccess: scores[i]! };
      }
      if (flat.length < PAGE * 2) return;
    }
  }

  /** Forgets `digest` (evicted or purged) and tells the other replicas. Resolves with the size it had, if any. */
  async removed(digest: string): Promise<number | undefined> {
    const s = await this.redis.eval(
      REMOVE,
      4,
      this.k.sizes,
      this.k.access,
      this.k.bytes,
      this.k.evicted,
      digest,
      EVICTED_CAP,
    );
    return s === null || s === undefined ? undefined : Number(s);
  }

  /**
   * Digests evicted by any replica since the last call (the first call only finds where the stream ends). The
   * caller drops them from its index.
   */
  async evictedSince(): Promise<string[]> {
    if (this.evictedCursor === undefined) {
      const last = await this.redis.xrevrange(this.k.evicted, "+", "-", "COUNT", 1);
      this.evictedCursor = last[0]?.[0] ?? "0-0";
      return [];
    }
    const found: string[] = [];
    for (let page = 0; page < 100; page++) {
      const entries: Array<[id: string, fields: string[]]> = await this.redis.xrange(
        this.k.evicted,
        `(${this.evictedCursor}`,
        "+",
        "COUNT",
        1_000,
      );
      for (const [id, fields] of entries) {
        this.evictedCursor = id;
        const at = fields.indexOf("digest");
        if (at >= 0 && fields[at + 1] !== undefined) found.push(fields[at + 1]!);
      }
      if (entries.length < 1_000) break;
    }
    return found;
  }

  /**
   * The eviction lock, or undefined when another replica holds it. Renewed every third of its time to live
   * until released; released by compare-and-delete, so a lock that expired and was taken by another replica
   * is never removed by this one. Rejects when Redis cannot say.
   */
  async tryLock(): Promise<EvictionLock | undefined> {
    const value = JSON.stringify({ replica: this.replica, id: randomUUID() });
    const set = await this.redis.set(this.k.lock, value, "PX", LOCK_TTL_MS, "NX");
    if (set !== "OK") return undefined;
    const timer = setInterval(
      () => {
        this.redis.eval(RENEW, 1, this.k.lock, value, LOCK_TTL_MS).then(
          (still) => {
            if (still !== 1) this.log.warn("fleet budget: the eviction lock expired during a sweep");
          },
          (err: unknown) => this.log.warn({ err: errorMessage(err) }, "fleet budget: eviction lock not renewed"),
        );
      },
      timerDelay(LOCK_TTL_MS / 3),
    );
    timer.unref();
    let released = false;
    return {
      release: async () => {
        if (released) return;
        released = true;
        clearInterval(timer);
        await this.redis.eval(RELEASE, 1, this.k.lock, value).catch(() => undefined);
      },
    };
  }

  /** Whether some replica holds the eviction lock now. */
  async lockHeld(): Promise<boolean> {
    return (await this.redis.exists(this.k.lock)) === 1;
  }

  /** Publishes the digests this replica's `pins.json` pins, for `ttlMs` (republished at every check). */
  async publishPins(digests: readonly string[], ttlMs: number): Promise<void> {
    const until = this.now() + ttlMs;
    if (digests.length === 0) {
      await this.redis.multi().del(this.k.pins(this.replica)).zrem(this.k.pinHolders, this.replica).exec();
      return;
    }
    await this.redis
      .multi()
      .set(this.k.pins(this.replica), JSON.stringify(digests), "PX", ttlMs)
      .zadd(this.k.pinHolders, until, this.replica)
      .zremrangebyscore(this.k.pinHolders, "-inf", this.now())
      .exec();
  }

  /** Every digest any running replica's `pins.json` pins (as published within their time to live). */
  async fleetPins(): Promise<string[]> {
    const holders = await this.redis.zrangebyscore(this.k.pinHolders, this.now(), "+inf");
    if (holders.length === 0) return [];
    const lists = await this.redis.mget(...holders.map((h) => this.k.pins(h)));
    const digests = new Set<string>();
    for (const list of lists) {
      if (list === null) continue;
      try {
        for (const d of JSON.parse(list) as unknown[]) if (typeof d === "string") digests.add(d);
      } catch {
        throw new Error("a replica's published pins are unreadable");
      }
    }
    return [...digests];
  }

  private wrote(): void {
    if (!this.writeFailed) return;
    this.writeFailed = false;
    this.log.info("fleet budget: access records written to Redis again");
  }

  private writeFailure(err: unknown): void {
    if (this.writeFailed) return;
    this.writeFailed = true;
    this.log.warn(
      { err: errorMessage(err) },
      "fleet budget: access records not written to Redis (pulls go on; the fleet's order is approximate meanwhile)",
    );
  }
}
