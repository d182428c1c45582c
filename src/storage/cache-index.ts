/**
 * The index of committed content: digest → size, in least-recently-used order, with no automatic eviction: the
 * janitor decides what goes, because pinned and in-use content must stay.
 *
 * The order is a Map's insertion order (least recently used first): a use deletes the entry and sets it again, at
 * the end. Not lru-cache, which the rest of the mirror uses for bounded caches: this index is unbounded and is
 * filled with every committed object at start-up, where lru-cache's `set` with size accounting cost ~2.7 µs per
 * entry (276 ms for 100,000 blobs, bench START) against ~0.2 µs for a Map.
 *
 * It is rebuilt at start-up from a scan of the store. Recency survives restarts through the store's record of
 * accesses (file modification times on the filesystem): an access is recorded at most once per
 * `touchIntervalMs` per digest, and the scan inserts objects oldest first, so the hottest content is the last
 * to be evicted after a restart. The same record is what idle expiry (`storage.maxIdle`) reads after a restart:
 * no write per pull, one `utimes` per object per interval, and nothing to keep consistent beside the file.
 */
import { setImmediate } from "node:timers/promises";

/** Entries made at a rebuild between two turns of the event loop. */
const FILL_STEP = 10_000;

/** What the index needs of the store it describes. */
export interface IndexSource {
  /** Every committed object, with its size and when it was last recorded as accessed (ms since the epoch). */
  scan(): Promise<Array<{ digest: string; size: number; lastAccess: number }>>;
  /** Records that `digest` was accessed at `when`, so recency survives a restart; best effort, never throws. */
  recordAccess(digest: string, when: Date): void;
}

/** Told of every addition and use of an entry (the fleet's access records: fleet-content-records.ts). */
export interface IndexObserver {
  added(digest: string, size: number): void;
  /** Called on every use, unthrottled: it must only note the use, never do I/O on the caller's path. */
  used(digest: string): void;
}

interface Entry {
  size: number;
  /** Last time an access was recorded in the store (ms), to throttle touches. */
  touchedAt: number;
  /**
   * Last access (ms), exact while the process runs; after a restart, the recorded one (at most one touch
   * interval earlier than the real last access). What idle expiry compares with.
   */
  usedAt: number;
}

export class CacheIndex {
  private readonly source: IndexSource;
  /** Least recently used first (insertion order; see the top of this file). */
  private entries = new Map<string, Entry>();
  /** Sum of the entries' sizes, each counted as at least 1 byte. */
  private total = 0;
  private readonly touchIntervalMs: number;
  private readonly now: () => number;
  private readonly observers: IndexObserver[] = [];
  /**
   * Settles once the index holds every committed object: at once, unless a rebuild is running. What decides by the
   * whole index (the janitor's budget and expiry, the admin API's listings) waits for it.
   */
  get complete(): Promise<void> {
    return this.rebuilt;
  }
  private rebuilt: Promise<void> = Promise.resolve();
  /** A rebuild is running: the index does not hold every committed object yet (`complete` settles when it ends). */
  get building(): boolean {
    return this.rebuilding;
  }
  private rebuilding = false;

  constructor(source: IndexSource, opts: { touchIntervalMs?: number; now?: () => number } = {}) {
    this.source = source;
    this.touchIntervalMs = opts.touchIntervalMs ?? 10 * 60_000;
    this.now = opts.now ?? Date.now;
    // No bound: the index must hold every committed object (≈100 bytes each), or it could not account for them.
  }

  /**
   * Rebuilds the index from a scan of the store (or what stands for one: `scan`), oldest access first, so recency
   * order is restored. What the index held before is replaced; what it learnt while the scan ran (content
   * committed or opened meanwhile: the filesystem store serves while it scans a large store, blob-store.ts) is
   * newer than the scan: it stays, as the most recently used. `complete` waits for the rebuild.
   */
  rebuild(
    scan: () => Promise<Array<{ digest: string; size: number; lastAccess: number }>> = () => this.source.scan(),
  ): Promise<{ objects: number; bytes: number; ms: number }> {
    this.rebuilding = true;
    const filled = this.fill(scan);
    this.rebuilt = filled.then(
      () => void (this.rebuilding = false),
      () => void (this.rebuilding = false),
    );
    return filled;
  }

  private async fill(
    scan: () => Promise<Array<{ digest: string; size: number; lastAccess: number }>>,
  ): Promise<{ objects: number; bytes: number; ms: number }> {
    const started = performance.now();
    this.entries.clear();
    this.total = 0;
    const found = await scan();
    found.sort((a, b) => a.lastAccess - b.lastAccess);
    // Filled aside, in steps that let requests in between (the filesystem store may be serving: ~1-2 µs per entry
    // here), then swapped in with what was learnt meanwhile at the end.
    const filled = new Map<string, Entry>();
    let total = 0;
    let bytes = 0;
    let objects = 0;
    for (let i = 0; i < found.length; i++) {
      if (i > 0 && i % FILL_STEP === 0) await setImmediate();
      const f = found[i]!;
      const before = filled.size;
      const entry = { size: f.size, touchedAt: f.lastAccess, usedAt: f.lastAccess };
      filled.set(f.digest, entry);
      if (filled.size === before) continue; // twice in the scan: counted once
      objects++;
      total += weight(entry);
      bytes += f.size;
    }
    const learnt = this.entries;
    this.entries = filled;
    this.total = total;
    for (const [digest, entry] of learnt) this.put(digest, entry);
    return { objects, bytes, ms: performance.now() - started };
  }

  /** Tells `observer` of every later addition and use (not of what `rebuild` finds). */
  observe(observer: IndexObserver): void {
    this.observers.push(observer);
  }

  /** Content was committed (or found in the store while not indexed). */
  add(digest: string, size: number): void {
    const now = this.now();
    this.put(digest, { size, touchedAt: now, usedAt: now });
    for (const o of this.observers) o.added(digest, size);
  }

  /** Content was read: it becomes the most recently used, and the store records that (throttled). */
  touch(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    this.entries.delete(digest); // to the end: the most recently used
    this.entries.set(digest, entry);
    const now = this.now();
    entry.usedAt = now;
    for (const o of this.observers) o.used(digest);
    if (now - entry.touchedAt < this.touchIntervalMs) return;
    entry.touchedAt = now;
    this.source.recordAccess(digest, new Date(now));
  }

  remove(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    this.entries.delete(digest);
    this.total -= weight(entry);
  }

  has(digest: string): boolean {
    return this.entries.has(digest);
  }

  sizeOf(digest: string): number | undefined {
    return this.entries.get(digest)?.size;
  }

  get bytes(): number {
    return this.total;
  }

  get objects(): number {
    return this.entries.size;
  }

  /** Most recently used first, with when each was last recorded as accessed (without changing recency). */
  *mostRecentlyUsed(): Generator<{ digest: string; size: number; lastAccess: number }> {
    // From a copy of the order: a caller may await between items (the fleet's seed), and uses meanwhile would move
    // entries to the end of the Map.
    const digests = [...this.entries.keys()];
    for (let i = digests.length - 1; i >= 0; i--) {
      const entry = this.entries.get(digests[i]!);
      if (entry) yield { digest: digests[i]!, size: entry.size, lastAccess: entry.touchedAt };
    }
  }

  /**
   * Digests from least to most recently used (without changing recency), with when each was last used (ms):
   * that order is the order of `usedAt`, since every use moves an entry to the end. The Map is walked as it is:
   * a use during the walk would move an entry to the end, where the walk meets it again, so callers finish the
   * walk before anything can be used (the janitor's walks run without awaiting).
   */
  *leastRecentlyUsed(): Generator<{ digest: string; size: number; usedAt: number }> {
    for (const [digest, entry] of this.entries) yield { digest, size: entry.size, usedAt: entry.usedAt };
  }

  /** Sets `digest` as the most recently used, replacing what it held. */
  private put(digest: string, entry: Entry): void {
    const old = this.entries.get(digest);
    if (old) {
      this.entries.delete(digest);
      this.total -= weight(old);
    }
    this.entries.set(digest, entry);
    this.total += weight(entry);
  }
}

/** What an entry counts for in `bytes`: its size, and at least 1 (an empty blob still takes an entry). */
function weight(entry: Entry): number {
  return Math.max(1, entry.size);
}
