/**
 * The index of committed content: digest → size, in least-recently-used order (lru-cache with size accounting,
 * no automatic eviction: the janitor decides what goes, because pinned and in-use content must stay).
 *
 * It is rebuilt at start-up from a scan of the store. Recency survives restarts through the store's record of
 * accesses (file modification times on the filesystem): an access is recorded at most once per
 * `touchIntervalMs` per digest, and the scan inserts objects oldest first, so the hottest content is the last
 * to be evicted after a restart. The same record is what idle expiry (`storage.maxIdle`) reads after a restart:
 * no write per pull, one `utimes` per object per interval, and nothing to keep consistent beside the file.
 */
import { LRUCache } from "lru-cache";

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
  private readonly entries: LRUCache<string, Entry>;
  private readonly touchIntervalMs: number;
  private readonly now: () => number;
  private readonly observers: IndexObserver[] = [];

  constructor(source: IndexSource, opts: { touchIntervalMs?: number; now?: () => number } = {}) {
    this.source = source;
    this.touchIntervalMs = opts.touchIntervalMs ?? 10 * 60_000;
    this.now = opts.now ?? Date.now;
    // No bound: the index must hold every committed object (≈100 bytes each), or it could not account for them.
    this.entries = new LRUCache<string, Entry>({
      maxSize: Number.MAX_SAFE_INTEGER,
      sizeCalculation: (e) => Math.max(1, e.size),
    });
  }

  /** Rebuilds the index from a scan of the store, oldest access first, so recency order is restored. */
  async rebuild(): Promise<{ objects: number; bytes: number; ms: number }> {
    const started = performance.now();
    const found = await this.source.scan();
    found.sort((a, b) => a.lastAccess - b.lastAccess);
    this.entries.clear();
    let bytes = 0;
    for (const f of found) {
      this.entries.set(f.digest, { size: f.size, touchedAt: f.lastAccess, usedAt: f.lastAccess });
      bytes += f.size;
    }
    return { objects: found.length, bytes, ms: performance.now() - started };
  }

  /** Tells `observer` of every later addition and use (not of what `rebuild` finds). */
  observe(observer: IndexObserver): void {
    this.observers.push(observer);
  }

  /** Content was committed (or found in the store while not indexed). */
  add(digest: string, size: number): void {
    const now = this.now();
    this.entries.set(digest, { size, touchedAt: now, usedAt: now });
    for (const o of this.observers) o.added(digest, size);
  }

  /** Content was read: it becomes the most recently used, and the store records that (throttled). */
  touch(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    const now = this.now();
    entry.usedAt = now;
    for (const o of this.observers) o.used(digest);
    if (now - entry.touchedAt < this.touchIntervalMs) return;
    entry.touchedAt = now;
    this.source.recordAccess(digest, new Date(now));
  }

  remove(digest: string): void {
    this.entries.delete(digest);
  }

  has(digest: string): boolean {
    return this.entries.has(digest);
  }

  sizeOf(digest: string): number | undefined {
    return this.entries.peek(digest)?.size;
  }

  get bytes(): number {
    return this.entries.calculatedSize;
  }

  get objects(): number {
    return this.entries.size;
  }

  /** Most recently used first, with when each was last recorded as accessed (without changing recency). */
  *mostRecentlyUsed(): Generator<{ digest: string; size: number; lastAccess: number }> {
    for (const digest of this.entries.keys()) {
      const entry = this.entries.peek(digest);
      if (entry) yield { digest, size: entry.size, lastAccess: entry.touchedAt };
    }
  }

  /**
   * Digests from least to most recently used (without changing recency), with when each was last used (ms):
   * that order is the order of `usedAt`, since every use moves an entry to the front.
   */
  *leastRecentlyUsed(): Generator<{ digest: string; size: number; usedAt: number }> {
    for (const digest of this.entries.rkeys()) {
      const entry = this.entries.peek(digest);
      if (entry) yield { digest, size: entry.size, usedAt: entry.usedAt };
    }
  }
}
