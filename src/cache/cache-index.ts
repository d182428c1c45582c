/**
 * The index of committed content: digest → size, in least-recently-used order (lru-cache with size accounting,
 * no automatic eviction: the janitor decides what goes, because pinned and in-use content must stay).
 *
 * It is rebuilt at start-up by scanning the store. Recency survives restarts through file modification times:
 * an access touches the file (at most once per `touchIntervalMs` per digest), and the scan inserts files oldest
 * first, so the hottest content is the last to be evicted after a restart.
 */
import { opendir, stat, utimes } from "node:fs/promises";
import { join } from "node:path";
import { LRUCache } from "lru-cache";
import type { BlobStore } from "./blob-store.ts";

interface Entry {
  size: number;
  /** Last time the file's mtime was set (ms), to throttle touches. */
  touchedAt: number;
}

export class CacheIndex {
  private readonly store: BlobStore;
  private readonly entries: LRUCache<string, Entry>;
  private readonly touchIntervalMs: number;
  private readonly now: () => number;

  constructor(store: BlobStore, opts: { touchIntervalMs?: number; now?: () => number } = {}) {
    this.store = store;
    this.touchIntervalMs = opts.touchIntervalMs ?? 10 * 60_000;
    this.now = opts.now ?? Date.now;
    // No bound: the index must hold every committed object (≈100 bytes each), or it could not account for them.
    this.entries = new LRUCache<string, Entry>({ maxSize: Number.MAX_SAFE_INTEGER, sizeCalculation: (e) => Math.max(1, e.size) });
  }

  /** Scans the store (blobs/sha256/xx/<hex>), oldest modification first, so recency order is restored. */
  async rebuild(): Promise<{ objects: number; bytes: number; ms: number }> {
    const started = performance.now();
    const found: Array<{ digest: string; size: number; mtimeMs: number }> = [];
    const root = join(this.store.root, "blobs", "sha256");
    const shards = await opendir(root);
    for await (const shard of shards) {
      if (!shard.isDirectory() || !/^[0-9a-f]{2}$/.test(shard.name)) continue;
      const names: string[] = [];
      for await (const file of await opendir(join(root, shard.name))) {
        if (file.isFile() && /^[0-9a-f]{64}$/.test(file.name)) names.push(file.name);
      }
      // Stats in parallel batches: the scan is bound by syscalls, not by any one of them.
      for (let i = 0; i < names.length; i += 256) {
        const batch = names.slice(i, i + 256);
        const stats = await Promise.all(batch.map((n) => stat(join(root, shard.name, n)).catch(() => undefined)));
        stats.forEach((s, j) => {
          if (s) found.push({ digest: `sha256:${batch[j]!}`, size: s.size, mtimeMs: s.mtimeMs });
        });
      }
    }
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    this.entries.clear();
    let bytes = 0;
    for (const f of found) {
      this.entries.set(f.digest, { size: f.size, touchedAt: f.mtimeMs });
      bytes += f.size;
    }
    return { objects: found.length, bytes, ms: performance.now() - started };
  }

  /** Content was committed. */
  add(digest: string, size: number): void {
    this.entries.set(digest, { size, touchedAt: this.now() });
  }

  /** Content was read: it becomes the most recently used, and its file's mtime records that (throttled). */
  touch(digest: string): void {
    const entry = this.entries.get(digest);
    if (!entry) return;
    const now = this.now();
    if (now - entry.touchedAt < this.touchIntervalMs) return;
    entry.touchedAt = now;
    const when = new Date(now);
    utimes(this.store.pathOf(digest), when, when).catch(() => undefined); // gone already: nothing to record
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

  /** Digests from least to most recently used (without changing recency). */
  *leastRecentlyUsed(): Generator<{ digest: string; size: number }> {
    for (const digest of this.entries.rkeys()) {
      const entry = this.entries.peek(digest);
      if (entry) yield { digest, size: entry.size };
    }
  }
}
