/**
 * Keeps the cache inside its budget and the disk from filling (ARCHITECTURE: "janitor").
 *
 * - **Reservations.** A download is cached only with a reservation: room for its announced size, or, when the
 *   upstream announced none, room grown in steps as its bytes arrive. It is held from admission until the
 *   download is committed (its bytes are counted in the index then), fails, or stops being cached. Every
 *   admission and watermark check counts committed bytes plus what is reserved, so downloads running at once
 *   cannot together overrun the budget. An unknown-size download that outgrows what the budget can hold stops
 *   being cached: from then on its reservation holds room on the disk only (its readers still get it, verified,
 *   through its temp file; see Fill in fill-coordinator.ts), and it is never committed.
 * - **Admission.** If a download does not fit, least-recently-used content is evicted to make room, down to the
 *   low watermark; but only when eviction can make room (never evicting for nothing), and only while the
 *   downloads in flight plus this one stay under the low watermark (eviction frees committed content, never
 *   reserved room: emptying the cache for downloads already running would make room for nobody). Otherwise
 *   the blob is streamed to the client verified but uncached.
 * - **Eviction.** When committed plus reserved bytes pass the high watermark of `storage.maxSize`, or the
 *   filesystem's used fraction passes the high watermark, least-recently-used content is deleted until both are
 *   under the low watermark. Content a response is reading is skipped, and so is pinned content: everything
 *   reachable from the configured `storage.pinned` references and from the digests pinned by
 *   `mirror import --pin` (`pins.json`). A configured pin resolves through a tag pointer in the metadata store,
 *   which can be lost (the embedded store's bound, a Redis restart, key expiry): so the digests it resolves to
 *   are recorded in `config-pins.json` and stay pinned until the pin resolves to something else or leaves the
 *   configuration, and a lost pointer is asked of `resolvePin` (the upstream, through the manifest cache) at
 *   the next periodic check. What is pinned must be known for anything to be evicted: a pin file that cannot
 *   be read, or a configured pin that resolves to nothing (no pointer, nothing recorded, the resolver cannot
 *   tell or the upstream says the tag does not exist), stops eviction (log, `/readyz`,
 *   `mirror_eviction_blocked`) until it is repaired or resolves: it never means "nothing pinned".
 * - **One decision at a time.** Admissions, reservation growth and sweeps run one after another, and each
 *   computes what it needs when its turn comes: a sweep sized before an earlier one ran would evict again what
 *   that one already freed.
 * - **Idle expiry.** With `storage.maxIdle` (or a rule's `maxIdle`), each periodic check also evicts content not
 *   used for that long (the index's last use: exact while running, the recorded access time after a restart),
 *   whatever the budget, with the same exemptions: pinned, being read, and whatever `idleExempt` names (warm-up
 *   sets). Tag pointers to a manifest that went this way are forgotten, so tag lists stop naming it. A limit a
 *   rule set for a digest is kept in `idle-limits.json` (idle-limits.ts). When what is pinned cannot be told,
 *   idle expiry stops with eviction.
 * - **A fleet on one bucket.** With `fleet` (`storage.s3` and `redis.url`: fleet-content-records.ts), the budget is
 *   the fleet's: admission and the watermarks count every replica's committed bytes as Redis records them (plus
 *   this replica's reservations: another replica's download counts once it is committed), and victims are
 *   taken in the fleet's order of last access, whichever replica served the pulls. One replica at a time
 *   evicts: a sweep runs only under the fleet's eviction lock; a replica finding it held skips its sweep, and an
 *   admission waits (bounded) for that sweep and caches only if it made room. Pinned is what this replica's
 *   configuration pins (the same on every replica) and what any running replica's `pins.json` pins (published
 *   in Redis at each check); content a response here is reading is skipped, content read on another replica is
 *   protected by its recency only. Evicted digests reach the other replicas' indexes at their next check (until
 *   then an open finds the object gone: a miss, filled again). Idle expiry spares what the fleet used within
 *   the limit. Redis unavailable: this replica's own index decides, as without a fleet, and the log says so.
 * - **No space.** A write that fails with ENOSPC puts the mirror in no-space mode: misses are streamed without
 *   caching, cached content is still served, and /readyz and metrics say so, until space returns.
 */
import { statfs } from "node:fs/promises";
import type { Logger } from "pino";
import type { Pin } from "../config/upstream-resolver.ts";
import { timerDelay } from "../config/timer-delay.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { ContentStore } from "../storage/content-store.ts";
import { reachableDigests, reachableManifests } from "../oci/manifest.ts";
import type { ManifestStore } from "../storage/manifest-store.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import { CONFIG_PIN_FILE, PinList } from "../storage/pin-list.ts";
import { isValidTag } from "../oci/reference.ts";
import { IdleLimits } from "../storage/idle-limits.ts";
import type { EvictionLock, FleetContentRecords, FleetEntry } from "../storage/fleet-content-records.ts";
import { errorMessage } from "../caught-errors.ts";

export interface Budget {
  /** Bytes; undefined means only the filesystem's watermarks apply. */
  maxSize: number | undefined;
  high: number;
  low: number;
}

export type FsUsage = (path: string) => Promise<{ total: number; free: number }>;

/**
 * What a configured pin's tag stands for, asked when its tag pointer is gone: `digest`, or `missing` (why)
 * when the upstream says the tag does not exist. Throws when it cannot find out (upstream down, offline).
 */
export type PinResolver = (pin: {
  upstream: string;
  repository: string;
  tag: string;
}) => Promise<{ digest: string } | { missing: string }>;

/** A walk reads a pinned manifest's bytes without its sidecar up to this size: `limits.manifestMaxBytes`' default. */
const DEFAULT_MANIFEST_MAX_BYTES = 8 * 1024 * 1024;

const defaultFsUsage: FsUsage = async (path) => {
  const s = await statfs(path);
  return { total: s.blocks * s.bsize, free: s.bavail * s.bsize };
};

/**
 * A reservation of unknown size grows ahead of its bytes by at most this much, and at most 1/64 of the budget:
 * the janitor is not asked at every chunk, and a small download does not hold room others could use.
 */
const GROWTH_STEP = 16 * 1024 * 1024;

/** An admission that finds another replica evicting waits this long at most for its sweep to end. */
const FLEET_SWEEP_WAIT_MS = 3_000;

/** Free space kept on the filesystem beyond every admitted download: 5 % of it, at most 64 MiB. */
function headroomOf(fs: { total: number }): number {
  return Math.min(64 * 1024 * 1024, Math.floor(fs.total * 0.05));
}

/**
 * Room held for one download, from admission until it is committed, fails or stops being cached (`release`).
 * Release it after the commit, not before: released first, its room could be handed out again before the
 * committed bytes are in the index.
 */
export class Reservation {
  /** Bytes held: the announced size, or what an unknown-size download has grown to. */
  bytes: number;
  /** Bytes of it already written to the temp file: the filesystem counts those as used already. */
  written = 0;
  /** The download will not be committed: its room is held on the disk only, not against the budget. */
  diskOnly = false;
  released = false;
  private readonly janitor: Janitor;

  constructor(janitor: Janitor, bytes: number) {
    this.janitor = janitor;
    this.bytes = bytes;
  }

  /** Holds room for `total` bytes in all, evicting if that makes room; false (nothing changed) when there is none. */
  grow(total: number): Promise<boolean> {
    return this.janitor.growReservation(this, total);
  }

  /** The download has written this many bytes to its temp file. */
  wrote(written: number): void {
    this.written = written;
  }

  /** The download goes on for its readers but will not be committed: it stops counting against the budget. */
  stopCaching(): void {
    this.diskOnly = true;
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    this.janitor.forgetReservation(this);
  }
}

export class Janitor {
  /** The content store, and the local directory whose filesystem the watermarks watch (temp files go there). */
  private readonly store: ContentStore & { readonly root: string; readonly tempDir: string };
  /**
   * Whether deleting content frees room on that filesystem: true for the filesystem store; false when content
   * lives in an object store (the disk then holds temp files only, and eviction never runs for disk room).
   */
  private readonly contentOnDisk: boolean;
  private readonly manifests: ManifestStore;
  private readonly metadata: MetadataStore;
  private readonly budget: Budget;
  private readonly pins: readonly Pin[];
  private readonly pinList: PinList | undefined;
  private readonly configPinList: PinList;
  private readonly resolvePin: PinResolver | undefined;
  /** Why each configured pin reference that the resolver could not resolve is unresolved, as last asked. */
  private readonly unresolvedWhy = new Map<string, string>();
  private readonly manifestMaxBytes: number;
  private readonly log: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly fsUsage: FsUsage;
  private readonly reservations = new Set<Reservation>();
  /** The tail of the queue of decisions (admissions, growth, sweeps): each runs after the previous one ended. */
  private queue: Promise<unknown> = Promise.resolve();
  /** A watermark check waiting in the queue: later requests join it rather than queueing another. */
  private pendingCheck: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The periodic check running now: the next one is skipped rather than run beside it (a slow upstream). */
  private periodic: Promise<void> | undefined;
  /** Set after ENOSPC; cleared when space returns. */
  noSpace: string | undefined;
  /** Why eviction is stopped (what is pinned cannot be told); undefined while it works. */
  evictionBlocked: string | undefined;
  /** `storage.maxIdle` (ms); undefined: off, unless a rule set a limit for a digest. */
  private readonly maxIdle: number | undefined;
  private readonly idleLimits: IdleLimits;
  private readonly idleExempt: (() => Promise<Iterable<string>>) | undefined;
  private readonly upstreamNames: readonly string[];
  private readonly idleExpiry: boolean;
  private readonly now: () => number;
  /** The fleet's shared records (fleet-content-records.ts); undefined: this replica's budget is its own. */
  private readonly fleet: FleetContentRecords | undefined;
  /** Why the fleet's records did not answer last; undefined while they do (or without a fleet). */
  private fleetDown: string | undefined;
  /** Redis did not answer at some point since this replica's index was last recorded in it. */
  private fleetMissedWrites = false;
  /** The fleet's committed bytes as last read (what `state` reports in fleet mode). */
  private fleetBytes: number | undefined;
  /** Digests being evicted by this replica: their records are removed before the delete, not by onDelete. */
  private readonly evicting = new Set<string>();
  private intervalMs = 30_000;

  constructor(opts: {
    store: ContentStore & { readonly root: string; readonly tempDir: string };
    /** False when the content is not on the watched filesystem (object storage): see `contentOnDisk`. */
    contentOnDisk?: boolean;
    manifests: ManifestStore;
    metadata: MetadataStore;
    budget: Budget;
    /** Configured pins (`storage.pinned`); what they resolve to is recorded in `<store root>/config-pins.json`. */
    pins: readonly Pin[];
    /** Digests pinned at run time (import); re-read at every sweep, so edits apply without a restart. */
    pinList?: PinList;
    /**
     * Asked by `check` what a configured pin's tag stands for when its pointer is gone. Without one, such a pin
     * resolves only to what was recorded for it, and with nothing recorded it stops eviction.
     */
    resolvePin?: PinResolver;
    /** The largest manifest stored (`limits.manifestMaxBytes`): a walk reads no larger blob as a manifest. */
    manifestMaxBytes?: number;
    log: Logger;
    metrics?: Metrics;
    fsUsage?: FsUsage;
    /** `storage.maxIdle` (ms): content not used for this long is evicted at each periodic check. */
    maxIdle?: number;
    /**
     * Digests whose content is exempt from idle expiry (manifests: with everything they reach), asked at each
     * check: the warm-up sets feed it. Pins are exempt without it. A throw stops idle expiry for that check.
     */
    idleExempt?: () => Promise<Iterable<string>>;
    /** false: no idle expiry at all, rules' limits included (commands working on a data directory). */
    idleExpiry?: boolean;
    /** Where tag pointers to idle-expired manifests are looked for (and forgotten); none: they are kept. */
    upstreamNames?: readonly string[];
    now?: () => number;
    /** The fleet's shared records: the budget, the order of eviction and pins.json pins become the fleet's. */
    fleet?: FleetContentRecords;
  }) {
    this.store = opts.store;
    // Every decision counts the whole index: none is made while the store's start-up scan still runs (a large
    // store scanned in the background, storage/store-scan.ts).
    this.queue = this.store.index.complete;
    this.manifests = opts.manifests;
    this.metadata = opts.metadata;
    this.budget = opts.budget;
    this.pins = opts.pins;
    this.pinList = opts.pinList;
    this.configPinList = new PinList(opts.store.root, CONFIG_PIN_FILE);
    this.resolvePin = opts.resolvePin;
    this.manifestMaxBytes = opts.manifestMaxBytes ?? DEFAULT_MANIFEST_MAX_BYTES;
    this.log = opts.log;
    this.metrics = opts.metrics;
    this.fsUsage = opts.fsUsage ?? defaultFsUsage;
    this.contentOnDisk = opts.contentOnDisk ?? true;
    this.maxIdle = opts.maxIdle;
    this.idleLimits = new IdleLimits(opts.store.root, opts.store.tempDir);
    this.idleExempt = opts.idleExempt;
    this.upstreamNames = opts.upstreamNames ?? [];
    this.idleExpiry = opts.idleExpiry ?? true;
    this.now = opts.now ?? Date.now;
    this.fleet = opts.fleet;
    opts.store.onDelete((digest) => {
      this.idleLimits.forget(digest);
      // Deleted otherwise than by eviction here (a purge): the fleet forgets it too.
      if (this.fleet && !this.evicting.has(digest))
        void this.fleet.removed(digest).catch((err: unknown) => this.fleetUnavailable(err));
    });
  }

  /**
   * Content was served under a rule whose `maxIdle` is `ms` (0: never idle-expired): that limit, or a more
   * generous one it was served under before, applies to it instead of `storage.maxIdle`.
   */
  noteIdleLimit(digest: string, ms: number): void {
    this.idleLimits.note(digest, ms);
  }

  /** Periodic check (filesystem watermarks can move without us writing anything; pins are resolved and recorded). */
  start(intervalMs: number): void {
    this.intervalMs = intervalMs;
    this.timer = setInterval(() => {
      this.periodic ??= this.check().finally(() => (this.periodic = undefined));
    }, timerDelay(intervalMs));
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Writes what rules' idle limits were learnt since the last check (at shutdown: they would be lost). */
  async flush(): Promise<void> {
    await this.saveIdleLimits();
  }

  /**
   * Called after content is committed: evict if that crossed a watermark. Deferred to the next turn of the
   * event loop, by when the committing download has released its reservation (its bytes would count twice).
   */
  committed(): void {
    setImmediate(() => void this.checkWatermarks());
  }

  noteNoSpace(err: Error): void {
    if (this.noSpace === undefined)
      this.log.error({ err: err.message }, "disk full: streaming misses without caching until space returns");
    this.noSpace = err.message;
  }

  /**
   * A reservation for caching a download of `size` bytes (undefined: unknown, reserved as it grows), evicting
   * first if that makes room; undefined when there is no room (the download is not to be cached).
   */
  admit(size: number | undefined): Promise<Reservation | undefined> {
    return this.serially(async () => {
      const want = size ?? 0;
      const fs = await this.fsUsage(this.store.root);
      if (!this.spaceIsBack(fs, want) || !(await this.makeRoom(want, fs, true))) return undefined;
      const reservation = new Reservation(this, want);
      this.reservations.add(reservation);
      return reservation;
    });
  }

  /** @internal Reservation.grow */
  growReservation(reservation: Reservation, total: number): Promise<boolean> {
    return this.serially(async () => {
      if (reservation.released) return false;
      const more = total - reservation.bytes;
      if (more <= 0) return true;
      const fs = await this.fsUsage(this.store.root);
      const room = this.roomWithoutEvicting(fs, !reservation.diskOnly, (await this.committedBytes()).bytes);
      if (room >= more) {
        const { maxSize } = this.budget;
        const step = maxSize === undefined ? GROWTH_STEP : Math.min(GROWTH_STEP, Math.floor(maxSize / 64));
        reservation.bytes = total + Math.min(step, room - more);
        return true;
      }
      if (!(await this.makeRoom(more, fs, !reservation.diskOnly))) return false;
      reservation.bytes = total;
      return true;
    });
  }

  /** @internal Reservation.release */
  forgetReservation(reservation: Reservation): void {
    this.reservations.delete(reservation);
  }

  /**
   * The periodic check (and the first, at start): reads the pins, recording what the configured ones resolve to
   * now (evicting or not, so that a pointer lost later does not unpin them; and a damaged pin file or an
   * unresolved pin is reported before eviction is needed), then checks the watermarks. A pinned tag whose
   * pointer is gone is asked of the resolver, unless `askResolver` is false (at start-up: a down upstream must
   * not hold up the start for its whole deadline; the next periodic check asks).
   */
  async check(opts: { askResolver?: boolean } = {}): Promise<void> {
    await this.store.index.complete;
    // Outside the queue of decisions: metadata lookups (a slow Redis) and the resolver (an upstream) must not
    // hold up admissions.
    await this.pinnedDigests(opts.askResolver ?? true);
    if (this.fleet) await this.fleetUpkeep();
    if (this.idleExpiry)
      await this.expireIdle().catch((err: unknown) =>
        this.log.warn({ err: errorMessage(err) }, "idle expiry failed: it is tried again at the next check"),
      );
    await this.checkWatermarks();
  }

  /**
   * Evicts what has not been used for its idle limit (a rule's, else `storage.maxIdle`), then forgets the tag
   * pointers to manifests that went. Skipped while what is pinned (or exempt) cannot be told.
   */
  private async expireIdle(): Promise<void> {
    const damaged = await this.idleLimits.load();
    if (damaged)
      this.log.warn(
        { path: this.idleLimits.path, reason: damaged.damaged },
        "idle limits set by rules unreadable: storage.maxIdle applies until the content is pulled again",
      );
    const fromRules = this.idleLimits.shortest();
    // No limit anywhere (the default): nothing to walk, not even the pins.
    if (this.maxIdle === undefined && fromRules === undefined) return this.saveIdleLimits();
    const shortest = Math.min(this.maxIdle ?? Infinity, fromRules ?? Infinity);
    let exempt: Set<string>;
    try {
      exempt = await this.idleExemptDigests();
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "idle expiry skipped: cannot tell what is exempt");
      return;
    }
    const gone = await this.serially(async () => {
      const pinned = await this.pinnedDigests(false);
      if (pinned === undefined) return [];
      const now = this.now();
      const victims: Array<{ digest: string; size: number; limit: number }> = [];
      for (const entry of this.store.index.leastRecentlyUsed()) {
        // Least recently used first: once an entry is younger than every limit, so is the rest.
        if (now - entry.usedAt < shortest) break;
        const limit = this.idleLimits.get(entry.digest) ?? this.maxIdle;
        if (limit === undefined || limit === 0 || now - entry.usedAt < limit) continue;
        if (pinned.has(entry.digest) || exempt.has(entry.digest) || this.store.inUse(entry.digest)) continue;
        victims.push({ digest: entry.digest, size: entry.size, limit });
      }
      const idle = await this.idleInFleet(victims, now);
      if (idle.length > 0) await this.evict(idle, 0, "idle");
      return idle.map((v) => v.digest);
    });
    await this.saveIdleLimits();
    if (gone.length > 0) await this.forgetPointersTo(new Set(gone));
  }

  private async saveIdleLimits(): Promise<void> {
    try {
      await this.idleLimits.save();
    } catch (err) {
      this.log.warn({ path: this.idleLimits.path, err: errorMessage(err) }, "idle limits not saved");
    }
  }

  /** Everything the `idleExempt` hook names, with what it reaches. */
  private async idleExemptDigests(): Promise<Set<string>> {
    const exempt = new Set<string>();
    if (this.idleExempt === undefined) return exempt;
    for (const digest of await this.idleExempt()) await this.addReachable(digest, exempt, true);
    return exempt;
  }

  /**
   * Forgets every tag pointer (and other pointer kept beside tags) to a manifest in `gone` that is still not in
   * the store: a pull since the eviction may have brought it back, and then its pointer stays.
   */
  private async forgetPointersTo(gone: ReadonlySet<string>): Promise<void> {
    let forgotten = 0;
    try {
      for (const upstream of this.upstreamNames) {
        for (const repo of await this.metadata.listRepositories(upstream)) {
          for (const tag of await this.metadata.listTags(upstream, repo)) {
            const pointer = await this.metadata.getTag(upstream, repo, tag);
            if (pointer === undefined || !gone.has(pointer.digest)) continue;
            if (await this.manifests.holdsBytes(pointer.digest)) continue;
            await this.metadata.deleteTag(upstream, repo, tag);
            forgotten++;
          }
        }
      }
    } catch (err) {
      this.log.warn({ err: errorMessage(err) }, "tag pointers to idle-expired manifests not all forgotten");
    }
    if (forgotten > 0) this.log.info({ forgotten }, "forgot tag pointers to idle-expired manifests");
  }

  /** Evicts if a watermark is crossed; leaves no-space mode when room came back. */
  private checkWatermarks(): Promise<void> {
    this.pendingCheck ??= this.serially(async () => {
      this.pendingCheck = undefined; // from here on, a new commit needs a new check
      try {
        await this.evictOverWatermarks();
        if (this.noSpace !== undefined) this.spaceIsBack(await this.fsUsage(this.store.root), 0);
      } catch (err) {
        this.log.warn({ err: errorMessage(err) }, "cache check failed");
      }
    });
    return this.pendingCheck;
  }

  get state(): {
    bytes: number;
    objects: number;
    reserved: number;
    maxSize: number | undefined;
    writable: boolean;
    evictionBlocked: string | undefined;
  } {
    return {
      // With a fleet: the fleet's bytes as last read (the budget they are held to), while Redis answers.
      bytes:
        this.fleet && this.fleetDown === undefined && this.fleetBytes !== undefined
          ? this.fleetBytes
          : this.store.index.bytes,
      objects: this.store.index.objects,
      reserved: this.reservedForCache(),
      maxSize: this.budget.maxSize,
      writable: this.noSpace === undefined,
      evictionBlocked: this.evictionBlocked,
    };
  }

  /** Runs `work` after every decision queued before it has ended. */
  private serially<T>(work: () => Promise<T>): Promise<T> {
    const run = this.queue.then(work);
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Room reserved for downloads that will be committed (counted against the budget). */
  private reservedForCache(): number {
    let bytes = 0;
    for (const r of this.reservations) if (!r.diskOnly) bytes += r.bytes;
    return bytes;
  }

  /** Reserved room not written yet: the filesystem does not count it as used, but it is promised. */
  private unwritten(): number {
    let bytes = 0;
    for (const r of this.reservations) bytes += Math.max(0, r.bytes - r.written);
    return bytes;
  }

  /** Bytes that fit now without evicting; `cached`: they count against the budget too, not only the disk. */
  private roomWithoutEvicting(fs: { total: number; free: number }, cached: boolean, committed: number): number {
    let room = fs.free - this.unwritten() - headroomOf(fs);
    const { maxSize } = this.budget;
    if (cached && maxSize !== undefined) room = Math.min(room, maxSize - committed - this.reservedForCache());
    return room;
  }

  /** In no-space mode: whether space has come back (the mode is left then). */
  private spaceIsBack(fs: { total: number; free: number }, want: number): boolean {
    if (this.noSpace === undefined) return true;
    if (fs.free - this.unwritten() < want + 2 * headroomOf(fs)) return false;
    this.log.info({ free: fs.free }, "disk space is back: caching resumes");
    this.noSpace = undefined;
    return true;
  }

  /**
   * Committed bytes the budget counts: the fleet's (`fleet: true`) while its records answer, else this
   * replica's index.
   */
  private async committedBytes(): Promise<{ bytes: number; fleet: boolean }> {
    if (this.fleet === undefined) return { bytes: this.store.index.bytes, fleet: false };
    try {
      const bytes = await this.fleet.total();
      if (this.fleetDown !== undefined) {
        this.fleetDown = undefined;
        this.log.info("fleet budget: Redis answers again: the budget is the fleet's again");
      }
      this.fleetBytes = bytes;
      return { bytes, fleet: true };
    } catch (err) {
      this.fleetUnavailable(err);
      return { bytes: this.store.index.bytes, fleet: false };
    }
  }

  private fleetUnavailable(err: unknown): void {
    const reason = errorMessage(err);
    if (this.fleetDown === undefined)
      this.log.warn(
        { err: reason },
        "fleet budget: Redis unavailable: this replica keeps storage.maxSize over its own index until it answers",
      );
    this.fleetDown = reason;
    this.fleetMissedWrites = true;
  }

  /**
   * At each check, with a fleet: drops from the index what other replicas evicted (unless it was recorded
   * again since: committed anew), publishes this replica's pins.json pins, and records the bucket again when
   * the records are empty while the index is not (Redis restarted).
   */
  private async fleetUpkeep(): Promise<void> {
    const fleet = this.fleet!;
    try {
      const evicted = [...new Set(await fleet.evictedSince())];
      const recorded = await fleet.lastAccessOf(evicted);
      evicted.forEach((digest, i) => {
        if (recorded[i] === undefined && !this.store.inUse(digest)) this.store.index.remove(digest);
      });
      let pins: string[] | undefined;
      try {
        pins = ((await this.pinList?.list()) ?? []).map((p) => p.digest);
      } catch {
        pins = undefined; // a damaged pin file: eviction is stopped here (pinnedDigests); what was published expires
      }
      if (pins !== undefined) await fleet.publishPins(pins, Math.max(3 * this.intervalMs, 60_000));
      if ((await fleet.count()) === 0 && this.store.index.objects > 0) {
        this.fleetMissedWrites = false;
        const seeded = await fleet.seed(await this.store.scan());
        this.log.info({ objects: seeded }, "fleet budget: access records were empty: recorded the bucket again");
      } else if (this.fleetMissedWrites) {
        // What this replica committed while Redis was away is in its index only: recorded now (a record of an
        // object evicted meanwhile costs one idempotent delete when its turn comes).
        this.fleetMissedWrites = false;
        await fleet.seed(this.store.index.mostRecentlyUsed());
      }
      if (this.fleetDown !== undefined) await this.committedBytes();
    } catch (err) {
      this.fleetUnavailable(err);
    }
  }

  /** Of idle-expiry `victims` (idle here), those the fleet did not use within their limit either. */
  private async idleInFleet(
    victims: ReadonlyArray<{ digest: string; size: number; limit: number }>,
    now: number,
  ): Promise<Array<{ digest: string; size: number }>> {
    if (this.fleet === undefined || victims.length === 0) return [...victims];
    try {
      const times = await this.fleet.lastAccessOf(victims.map((v) => v.digest));
      return victims.filter((v, i) => times[i] === undefined || now - (times[i] ?? 0) >= v.limit);
    } catch (err) {
      this.fleetUnavailable(err);
      return [...victims];
    }
  }

  /**
   * Whether `want` more bytes fit now, evicting first if that makes room. `cached`: the bytes will be committed,
   * so they count against the budget and may evict; otherwise (a download passing through uncached) they need
   * room on the disk only, and never evict cached content.
   */
  private async makeRoom(want: number, fs: { total: number; free: number }, cached: boolean): Promise<boolean> {
    const used = await this.committedBytes();
    const need = this.budgetNeed(want, used.bytes, cached);
    if (need === "no") return false;
    let { least, target } = need;
    const headroom = headroomOf(fs);
    const diskShort = want + headroom - (fs.free - this.unwritten());
    if (diskShort > 0) {
      if (!cached || !this.contentOnDisk) return false;
      least = Math.max(least, diskShort);
      target = Math.max(target, diskShort);
    }
    if (least <= 0) return true;
    if (used.fleet && diskShort <= 0) {
      const fleetMade = await this.makeFleetRoom(want);
      if (fleetMade !== "down") return fleetMade;
    }
    const victims = await this.victims(target);
    if (victims === undefined || sumOf(victims) < least) return false; // eviction cannot make room: keep the cache whole
    await this.evict(victims, target, "budget");
    if (diskShort > 0) {
      const after = await this.fsUsage(this.store.root);
      if (after.free - this.unwritten() < want + headroom) return false;
    }
    return true;
  }

  /** What must be freed for `want` more bytes to fit the budget (`least`), and what to free (`target`). */
  private budgetNeed(want: number, committed: number, cached: boolean): { least: number; target: number } | "no" {
    const { maxSize, low } = this.budget;
    if (!cached || maxSize === undefined) return { least: 0, target: 0 };
    const used = committed + this.reservedForCache();
    if (used + want <= maxSize) return { least: 0, target: 0 };
    if (this.reservedForCache() + want > maxSize * low) return "no";
    return { least: used + want - maxSize, target: used + want - Math.floor(maxSize * low) };
  }

  /**
   * makeRoom over the fleet's records: under the eviction lock, sized again from the fleet's total once the lock
   * is held. Another replica evicting: waits (bounded) for its sweep, then fits only if that made room. `down`:
   * Redis did not answer (the caller decides over its own index).
   */
  private async makeFleetRoom(want: number): Promise<boolean | "down"> {
    const lock = await this.takeEvictionLock();
    if (lock === "down") return "down";
    if (lock === "busy") {
      await this.waitForFleetSweep();
      const after = await this.committedBytes();
      const need = this.budgetNeed(want, after.bytes, true);
      return need !== "no" && need.least <= 0;
    }
    try {
      const now = await this.committedBytes();
      if (!now.fleet) return "down";
      const need = this.budgetNeed(want, now.bytes, true);
      if (need === "no") return false;
      if (need.least <= 0) return true;
      const victims = await this.fleetVictims(need.target);
      if (victims === undefined || sumOf(victims) < need.least) return false;
      await this.evict(victims, need.target, "budget");
      return true;
    } finally {
      await lock.release();
    }
  }

  /** The fleet's eviction lock; `busy` when another replica holds it (counted), `down` when Redis cannot say. */
  private async takeEvictionLock(): Promise<EvictionLock | "busy" | "down"> {
    try {
      const lock = await this.fleet!.tryLock();
      if (lock) return lock;
      this.metrics?.fleetEvictionLockBusy.inc();
      return "busy";
    } catch (err) {
      this.fleetUnavailable(err);
      return "down";
    }
  }

  /** Waits until no replica holds the eviction lock, polling every 100 ms, about FLEET_SWEEP_WAIT_MS at most. */
  private async waitForFleetSweep(): Promise<void> {
    for (let waited = 0; waited < FLEET_SWEEP_WAIT_MS; waited += 100) {
      try {
        if (!(await this.fleet!.lockHeld())) return;
      } catch {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  private async evictOverWatermarks(): Promise<void> {
    const fs = await this.fsUsage(this.store.root);
    const { maxSize, high, low } = this.budget;
    const used = await this.committedBytes();
    const overBudget = (committed: number) => {
      const total = committed + this.reservedForCache();
      return maxSize !== undefined && total > maxSize * high ? total - Math.floor(maxSize * low) : 0;
    };
    let need = overBudget(used.bytes);
    const diskUsed = fs.total - fs.free + this.unwritten();
    const diskNeed =
      this.contentOnDisk && fs.total > 0 && diskUsed > fs.total * high ? diskUsed - Math.floor(fs.total * low) : 0;
    if (used.fleet && diskNeed <= 0) {
      if (need <= 0) return;
      const lock = await this.takeEvictionLock();
      if (lock === "busy") return; // another replica is sweeping the same fleet's budget
      if (lock !== "down") {
        try {
          const now = await this.committedBytes();
          if (now.fleet) {
            need = overBudget(now.bytes); // sized under the lock: a sweep that just ended freed some already
            if (need <= 0) return;
            const victims = await this.fleetVictims(need);
            if (victims) await this.evict(victims, need, "budget");
            return;
          }
        } finally {
          await lock.release();
        }
      }
      need = overBudget(this.store.index.bytes);
    }
    need = Math.max(need, diskNeed);
    if (need <= 0) return;
    const victims = await this.victims(need);
    if (victims) await this.evict(victims, need, "budget");
  }

  /**
   * Least-recently-used content that may go, up to `need` bytes: not pinned, not being read. Undefined when
   * what is pinned cannot be told (eviction is stopped then, and says so).
   */
  private async victims(need: number): Promise<Array<{ digest: string; size: number }> | undefined> {
    const pinned = await this.pinnedDigests(false); // in the queue of decisions: nothing that waits on an upstream
    if (pinned === undefined) return undefined;
    let freed = 0;
    const victims: Array<{ digest: string; size: number }> = [];
    for (const entry of this.store.index.leastRecentlyUsed()) {
      if (freed >= need) break;
      // In-flight downloads are not in the index yet; readers of just-committed ones hold open descriptors,
      // which an unlink does not disturb. Open cached reads are skipped so their space is not counted as freed.
      if (pinned.has(entry.digest) || this.store.inUse(entry.digest)) continue;
      victims.push(entry);
      freed += entry.size;
    }
    return victims;
  }

  /**
   * As `victims`, in the fleet's order of last access, and sparing what any running replica's pins.json pins
   * as well. Undefined when what is pinned cannot be told, or Redis stops answering meanwhile.
   */
  private async fleetVictims(need: number): Promise<FleetEntry[] | undefined> {
    const pinned = await this.pinnedDigests(false);
    if (pinned === undefined) return undefined;
    const victims: FleetEntry[] = [];
    try {
      for (const digest of await this.fleet!.fleetPins()) await this.addReachable(digest, pinned, true);
      let freed = 0;
      for await (const entry of this.fleet!.leastRecentlyUsed()) {
        if (freed >= need) break;
        if (pinned.has(entry.digest) || this.store.inUse(entry.digest)) continue;
        victims.push(entry);
        freed += entry.size;
      }
    } catch (err) {
      this.fleetUnavailable(err);
      return undefined;
    }
    return victims;
  }

  /**
   * Deletes `victims`; `reason` labels the metrics: `budget` (watermarks, admission) or `idle` (maxIdle). With a
   * fleet, each one's record goes first (a replica committing it again meanwhile records it anew; the reverse
   * order could leave an object no record counts); a delete that fails puts the record back.
   */
  private async evict(
    victims: ReadonlyArray<{ digest: string; size: number }>,
    need: number,
    reason: "budget" | "idle",
  ): Promise<void> {
    let evicted = 0;
    let bytes = 0;
    for (const victim of victims) {
      this.evicting.add(victim.digest);
      try {
        if (this.fleet) await this.fleet.removed(victim.digest).catch((err: unknown) => this.fleetUnavailable(err));
        try {
          await this.store.delete(victim.digest);
        } catch (err) {
          this.fleet?.added(victim.digest, victim.size);
          throw err;
        }
        await this.manifests.forget(victim.digest);
      } finally {
        this.evicting.delete(victim.digest);
      }
      evicted++;
      bytes += victim.size;
    }
    if (evicted > 0) {
      this.metrics?.evictions.inc({ reason }, evicted);
      this.metrics?.evictedBytes.inc({ reason }, bytes);
      this.log.info(
        { evicted, bytes, reason, cacheBytes: this.store.index.bytes },
        reason === "idle" ? "evicted idle content" : "evicted least recently used content",
      );
    }
    if (bytes < need)
      this.log.warn({ need, freed: bytes }, "could not free enough space: the rest is pinned or in use");
  }

  /**
   * Everything reachable from the pinned tags and digests: manifests, their children, configs and layers. Or
   * undefined when that cannot be told (a damaged pin file, a configured pin that resolves to nothing, a failing
   * metadata store): eviction is stopped then, and says so (`evictionBlocked`: log, /readyz, metrics) until the
   * pins can be told again. `askResolver`: a pinned tag whose pointer is gone is asked of the resolver.
   */
  private async pinnedDigests(askResolver: boolean): Promise<Set<string> | undefined> {
    const pinned = new Set<string>();
    try {
      for (const pin of (await this.pinList?.list()) ?? []) await this.addReachable(pin.digest, pinned, true);
      for (const digest of await this.configuredPins(askResolver)) await this.addReachable(digest, pinned, true);
    } catch (err) {
      const reason = errorMessage(err);
      if (this.evictionBlocked !== reason)
        this.log.error({ err: reason }, "eviction stopped: cannot tell what is pinned");
      this.evictionBlocked = reason;
      return undefined;
    }
    if (this.evictionBlocked !== undefined) this.log.info("what is pinned can be told again: eviction resumes");
    this.evictionBlocked = undefined;
    return pinned;
  }

  /**
   * The digests the configured pins stand for. Each pinned tag resolves to what its tag pointer says now;
   * without a pointer, to what the resolver finds (when `askResolver`); failing that, to the digest recorded
   * when it last resolved. What resolves now is recorded, so it stays pinned when its pointer is lost later;
   * recorded references no configured pin covers any more are dropped. A repository pin (no tag) stands for
   * every tag of it that the metadata store knows or that is recorded.
   *
   * A pinned tag that resolves to nothing at all (nothing recorded either), or a repository pin of which no tag
   * is known, pins content nobody can name: that throws, naming each such entry, and eviction stops until they
   * resolve. Reading them as "nothing pinned" would evict exactly what they protect (a mirror upgraded from a
   * version that recorded nothing, whose pointers are gone; a pin whose pointer was lost before any check).
   */
  private async configuredPins(askResolver: boolean): Promise<string[]> {
    if (this.pins.length === 0) return [];
    const covered = (reference: string) =>
      this.pins.some((p) =>
        p.tag === undefined
          ? reference.startsWith(`${p.upstream}/${p.repository}:`)
          : reference === `${p.upstream}/${p.repository}:${p.tag}`,
      );
    const recorded = new Map<string, string>();
    for (const entry of await this.configPinList.list())
      if (covered(entry.reference)) recorded.set(entry.reference, entry.digest);
    const resolved = new Map<string, string>();
    const unresolved: string[] = [];
    const seen = new Set<string>(); // a tag named by two entries (a repository pin and a tag pin) is asked once
    for (const pin of this.pins) {
      const repository = `${pin.upstream}/${pin.repository}`;
      // Only tags: other pointers kept beside them (a referrers list, referrers-cache.ts) are no tag to pin.
      let tags =
        pin.tag !== undefined
          ? [pin.tag]
          : (await this.metadata.listTags(pin.upstream, pin.repository)).filter(isValidTag);
      if (pin.tag === undefined) {
        const recordedTags = [...recorded.keys()]
          .filter((r) => r.startsWith(`${repository}:`))
          .map((r) => r.slice(repository.length + 1));
        tags = [...new Set([...tags, ...recordedTags])];
        if (tags.length === 0) {
          unresolved.push(
            `${repository} (every tag): no tag of it is known here (none pulled yet, or their pointers were lost before they were recorded); pull the tags to keep, or remove the entry`,
          );
          continue;
        }
      }
      for (const tag of tags) {
        const reference = `${repository}:${tag}`;
        if (seen.has(reference)) continue;
        seen.add(reference);
        const digest = await this.resolveTag(pin.upstream, pin.repository, tag, askResolver, recorded.has(reference));
        if (digest !== undefined) resolved.set(reference, digest);
        else if (!recorded.has(reference))
          unresolved.push(
            `${reference}: ${this.unresolvedWhy.get(reference) ?? "no tag pointer, and nothing recorded for it"}`,
          );
      }
    }
    const inForce = new Map([...recorded, ...resolved]);
    try {
      await this.configPinList.reconcile(resolved, covered);
    } catch (err) {
      // This sweep still honours them (inForce); only a restart before the next successful write could not.
      this.log.error({ err: errorMessage(err) }, "cannot record what the configured pins resolve to");
    }
    if (unresolved.length > 0)
      throw new Error(`storage.pinned names content that cannot be told: ${unresolved.join("; ")}`);
    return [...inForce.values()];
  }

  /**
   * What one pinned tag points at: its pointer, or, without one and when `askResolver`, the resolver's answer.
   * Undefined when neither tells; why is kept in `unresolvedWhy`, for the reason eviction stops (when nothing
   * is `recorded` for the tag). A tag the upstream says does not exist but that is recorded (deleted upstream
   * after it was pinned) stays pinned to what was recorded, with a warning naming it.
   */
  private async resolveTag(
    upstream: string,
    repository: string,
    tag: string,
    askResolver: boolean,
    recorded: boolean,
  ): Promise<string | undefined> {
    const reference = `${upstream}/${repository}:${tag}`;
    const pointer = await this.metadata.getTag(upstream, repository, tag);
    if (pointer) {
      this.unresolvedWhy.delete(reference);
      return pointer.digest;
    }
    if (!askResolver || this.resolvePin === undefined) return undefined;
    let why: string;
    try {
      const answer = await this.resolvePin({ upstream, repository, tag });
      if ("digest" in answer) {
        this.unresolvedWhy.delete(reference);
        return answer.digest;
      }
      // A typo in storage.pinned, or a tag deleted upstream.
      why = `upstream ${upstream} says it does not exist (${answer.missing}); correct or remove the entry`;
      if (recorded && this.unresolvedWhy.get(reference) !== why) {
        this.log.warn(
          { pin: reference, reason: answer.missing },
          "a storage.pinned tag no longer exists upstream: what was recorded for it stays pinned until the entry is removed",
        );
      }
    } catch (err) {
      why = `no tag pointer, nothing recorded for it, and the upstream could not be asked (${errorMessage(err)})`;
    }
    this.unresolvedWhy.set(reference, why);
    return undefined;
  }

  /**
   * Adds `digest` and everything it reaches. `isManifest`: it is named as a manifest (a pin, an index's child, a
   * subject), so its bytes are read from the blob store even when its sidecar is damaged (the manifest store then
   * answers "absent"; a walk needs the bytes, not the media type).
   */
  private async addReachable(digest: string, into: Set<string>, isManifest: boolean): Promise<void> {
    if (into.has(digest)) return;
    into.add(digest);
    // Not a use of the content: a walk must not make what it reads look recently pulled to idle expiry.
    const bytes = isManifest
      ? await this.manifests.bytesOf(digest, this.manifestMaxBytes, { touch: false })
      : (await this.manifests.get(digest, { touch: false }))?.bytes;
    if (bytes === undefined) return;
    const manifests = new Set(reachableManifests(bytes));
    for (const child of reachableDigests(bytes)) await this.addReachable(child, into, manifests.has(child));
  }
}

function sumOf(entries: ReadonlyArray<{ size: number }>): number {
  let total = 0;
  for (const e of entries) total += e.size;
  return total;
}
