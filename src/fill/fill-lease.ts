/**
 * Which replica of a fleet downloads a blob: one lease per digest in Redis, naming the replica that holds it.
 *
 * A replica about to download a blob nobody has takes the lease (`SET NX PX`). The lease's value names the
 * holder's `advertiseUrl`, the upstream and repository it downloads for, and a random id that makes this lease
 * different from every other the same replica ever took. While the download runs the holder renews it every
 * third of its time to live; when the download has ended (committed or failed) it deletes it. Renewing and
 * deleting compare the whole value first (one Lua script each), so a holder never extends or removes a lease
 * that expired and was taken by someone else meanwhile.
 *
 * A replica that finds the lease held streams the download from its holder instead (peer-client.ts). When the
 * holder cannot be reached (it died: its lease lives on until it expires), `takeOver` replaces exactly that
 * value with its own, so of several replicas that noticed, one downloads and the others follow it.
 *
 * Nothing here decides what is served: whatever source a replica reads, the bytes are verified against the
 * digest before anything is committed. A lost or stolen lease costs at most a second download, never wrong bytes.
 */
import { randomUUID } from "node:crypto";
import type { Redis } from "ioredis";
import type { Logger } from "pino";
import { timerDelay } from "../config/timer-delay.ts";
import { errorMessage } from "../caught-errors.ts";

/** Who downloads a digest, as the lease records it. */
export interface LeaseHolder {
  /** The holder's advertised URL (`cluster.advertiseUrl`). */
  url: string;
  /** The upstream and repository its download is for: a follower of another repository checks its own first. */
  upstream: string;
  repo: string;
}

/** The outcome of asking for a digest's lease. */
export type LeaseClaim =
  | { held: "here"; lease: FillLease }
  | { held: "elsewhere"; holder: LeaseHolder; value: string }
  | { held: "unknown"; reason: string };

/** A lease this replica holds: renewed until released. */
export interface FillLease {
  readonly digest: string;
  /** Stops renewing and deletes the lease if it is still this one; never throws. */
  release(): Promise<void>;
}

/** Renews only the lease we hold: the value compared, then the expiry set. */
const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end`;
/** Deletes only the lease we hold. */
const RELEASE = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`;
/** Replaces exactly the value seen (a holder found dead); or, when the lease is gone meanwhile, takes it. */
const TAKE_OVER = `local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end`;

export class FillLeases {
  private readonly redis: Redis;
  private readonly keyPrefix: string;
  private readonly ttlMs: number;
  private readonly self: string;
  private readonly log: Logger;
  private readonly held = new Set<Lease>();

  constructor(opts: { redis: Redis; keyPrefix: string; ttlMs: number; advertiseUrl: string; log: Logger }) {
    this.redis = opts.redis;
    this.keyPrefix = opts.keyPrefix;
    this.ttlMs = opts.ttlMs;
    this.self = new URL(opts.advertiseUrl).origin;
    this.log = opts.log;
  }

  /** This replica's advertised URL: a lease naming it and no running download here was left by an earlier process. */
  get advertiseUrl(): string {
    return this.self;
  }

  /**
   * Takes the lease for `digest`, or says who holds it. Redis unreachable (or its answer unreadable): `unknown`,
   * and the caller downloads for itself, as a replica without a fleet would.
   */
  async claim(digest: string, holder: Omit<LeaseHolder, "url">): Promise<LeaseClaim> {
    const value = this.valueFor(holder);
    try {
      const set = await this.redis.set(this.key(digest), value, "PX", this.ttlMs, "NX");
      if (set === "OK") return { held: "here", lease: this.start(digest, value) };
      const current = await this.redis.get(this.key(digest));
      // Released between the two calls: the next claim decides.
      if (current === null) return this.claimOnce(digest, value);
      const found = parseHolder(current);
      return found
        ? { held: "elsewhere", holder: found, value: current }
        : { held: "unknown", reason: "unreadable lease" };
    } catch (err) {
      return { held: "unknown", reason: errorMessage(err) };
    }
  }

  /** Replaces the lease `seen` (a holder that could not be reached) with this replica's; undefined if another won. */
  async takeOver(digest: string, seen: string, holder: Omit<LeaseHolder, "url">): Promise<FillLease | undefined> {
    const value = this.valueFor(holder);
    try {
      const taken = await this.redis.eval(TAKE_OVER, 1, this.key(digest), seen, value, this.ttlMs);
      return taken === 1 ? this.start(digest, value) : undefined;
    } catch (err) {
      this.log.warn({ digest, err: errorMessage(err) }, "fleet: could not take over a download lease");
      return undefined;
    }
  }

  /** How long a lease lives without renewal. */
  get ttl(): number {
    return this.ttlMs;
  }

  /**
   * Whether the lease of `digest` is still `value` (the holder seen has not ended its download). Redis unable to
   * say: true (the caller waits, bounded, as if it were).
   */
  async stillHeld(digest: string, value: string): Promise<boolean> {
    try {
      return (await this.redis.get(this.key(digest))) === value;
    } catch {
      return true;
    }
  }

  /** Leases held now (tests, shutdown). */
  get heldCount(): number {
    return this.held.size;
  }

  private async claimOnce(digest: string, value: string): Promise<LeaseClaim> {
    const set = await this.redis.set(this.key(digest), value, "PX", this.ttlMs, "NX");
    if (set === "OK") return { held: "here", lease: this.start(digest, value) };
    const current = await this.redis.get(this.key(digest));
    const found = current === null ? undefined : parseHolder(current);
    return found && current !== null
      ? { held: "elsewhere", holder: found, value: current }
      : { held: "unknown", reason: "lease changing hands" };
  }

  private start(digest: string, value: string): Lease {
    const lease = new Lease(digest, {
      renew: async () => (await this.redis.eval(RENEW, 1, this.key(digest), value, this.ttlMs)) === 1,
      release: async () => {
        this.held.delete(lease);
        await this.redis.eval(RELEASE, 1, this.key(digest), value);
      },
      everyMs: Math.max(1_000, Math.floor(this.ttlMs / 3)),
      log: this.log,
    });
    this.held.add(lease);
    return lease;
  }

  private valueFor(holder: Omit<LeaseHolder, "url">): string {
    return JSON.stringify({ url: this.self, upstream: holder.upstream, repo: holder.repo, id: randomUUID() });
  }

  private key(digest: string): string {
    return `${this.keyPrefix}fill:${digest}`;
  }
}

class Lease implements FillLease {
  readonly digest: string;
  private readonly timer: NodeJS.Timeout;
  private released = false;
  private readonly ops: { release: () => Promise<void> };

  constructor(
    digest: string,
    ops: { renew: () => Promise<boolean>; release: () => Promise<void>; everyMs: number; log: Logger },
  ) {
    this.digest = digest;
    this.ops = ops;
    this.timer = setInterval(() => {
      ops.renew().then(
        (still) => {
          if (!still && !this.released)
            ops.log.warn(
              { digest },
              "fleet: a download's lease expired before it ended; another replica may download too",
            );
        },
        (err: unknown) => ops.log.warn({ digest, err: errorMessage(err) }, "fleet: lease renewal failed"),
      );
    }, timerDelay(ops.everyMs));
    this.timer.unref();
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await this.ops.release().catch(() => undefined);
  }
}

/** A lease's value, or undefined when it is not one of ours. */
function parseHolder(value: string): LeaseHolder | undefined {
  try {
    const parsed = JSON.parse(value) as Partial<LeaseHolder>;
    if (typeof parsed.url === "string" && typeof parsed.upstream === "string" && typeof parsed.repo === "string")
      return { url: parsed.url, upstream: parsed.upstream, repo: parsed.repo };
  } catch {
    // not ours
  }
  return undefined;
}
