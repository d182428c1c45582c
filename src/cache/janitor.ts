/**
 * Keeps the cache inside its budget and the disk from filling (ARCHITECTURE: "janitor").
 *
 * - **Eviction.** When the indexed bytes pass the high watermark of `storage.maxSize`, or the filesystem's
 *   used fraction passes the high watermark, least-recently-used content is deleted until both are under the
 *   low watermark. Pinned content (config `storage.pinned`: everything reachable from those tags; and the
 *   digests pinned by `mirror import --pin`, kept in `<storage.path>/pins.json`), content a response is reading
 *   and content a fill has just committed are skipped.
 * - **Admission.** Before a download is cached, there must be room for it (evicting first if that makes room).
 *   If there is not, the blob is streamed to the client verified but uncached.
 * - **No space.** A write that fails with ENOSPC puts the mirror in no-space mode: misses are streamed without
 *   caching, cached content is still served, and /readyz and metrics say so, until space returns.
 */
import { statfs } from "node:fs/promises";
import type { Logger } from "pino";
import type { Pin } from "../config/pins.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { BlobStore } from "./blob-store.ts";
import { reachableDigests } from "./manifest-references.ts";
import type { ManifestStore } from "./manifest-store.ts";
import type { MetadataStore } from "./metadata-store.ts";
import type { PinList } from "./pin-list.ts";

export interface Budget {
  /** Bytes; undefined means only the filesystem's watermarks apply. */
  maxSize: number | undefined;
  high: number;
  low: number;
}

export type FsUsage = (path: string) => Promise<{ total: number; free: number }>;

const defaultFsUsage: FsUsage = async (path) => {
  const s = await statfs(path);
  return { total: s.blocks * s.bsize, free: s.bavail * s.bsize };
};

export class Janitor {
  private readonly store: BlobStore;
  private readonly manifests: ManifestStore;
  private readonly metadata: MetadataStore;
  private readonly budget: Budget;
  private readonly pins: readonly Pin[];
  private readonly pinList: PinList | undefined;
  private readonly log: Logger;
  private readonly metrics: Metrics | undefined;
  private readonly fsUsage: FsUsage;
  private sweeping: Promise<{ evicted: number; bytes: number }> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Set after ENOSPC; cleared when space returns. */
  noSpace: string | undefined;

  constructor(opts: {
    store: BlobStore;
    manifests: ManifestStore;
    metadata: MetadataStore;
    budget: Budget;
    pins: readonly Pin[];
    /** Digests pinned at run time (import); re-read at every sweep, so edits apply without a restart. */
    pinList?: PinList;
    log: Logger;
    metrics?: Metrics;
    fsUsage?: FsUsage;
  }) {
    this.store = opts.store;
    this.manifests = opts.manifests;
    this.metadata = opts.metadata;
    this.budget = opts.budget;
    this.pins = opts.pins;
    this.pinList = opts.pinList;
    this.log = opts.log;
    this.metrics = opts.metrics;
    this.fsUsage = opts.fsUsage ?? defaultFsUsage;
  }

  /** Periodic check (filesystem watermarks can move without us writing anything). */
  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.check(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Called after content is committed: evict if that crossed a watermark. */
  committed(): void {
    void this.check();
  }

  noteNoSpace(err: Error): void {
    if (this.noSpace === undefined) this.log.error({ err: err.message }, "disk full: streaming misses without caching until space returns");
    this.noSpace = err.message;
  }

  /** May a download of `size` bytes (undefined: unknown) be cached now? Evicts first if that makes room. */
  async admit(size: number | undefined): Promise<boolean> {
    const want = size ?? 0;
    const fs = await this.fsUsage(this.store.root);
    const headroom = Math.min(64 * 1024 * 1024, Math.floor(fs.total * 0.05));
    if (this.noSpace !== undefined) {
      if (fs.free < want + 2 * headroom) return false;
      this.log.info({ free: fs.free }, "disk space is back: caching resumes");
      this.noSpace = undefined;
    }
    // Evict to make room only when eviction can: a blob larger than what could ever be freed is refused
    // outright, rather than emptying the cache for nothing.
    const { maxSize } = this.budget;
    if (maxSize !== undefined && this.store.index.bytes + want > maxSize) {
      if (want > maxSize * this.budget.low) return false;
      await this.sweep(this.store.index.bytes + want - Math.floor(maxSize * this.budget.low));
      if (this.store.index.bytes + want > maxSize) return false;
    }
    if (fs.free < want + headroom) {
      if (want + headroom > fs.free + this.store.index.bytes) return false;
      await this.sweep(want + headroom - fs.free);
      if ((await this.fsUsage(this.store.root)).free < want + headroom) return false;
    }
    return true;
  }

  /** Evicts if a watermark is crossed. */
  async check(): Promise<void> {
    try {
      const need = await this.bytesOverWatermarks();
      if (need > 0) await this.sweep(need);
      if (this.noSpace !== undefined) await this.admit(0); // clears no-space mode when room came back
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, "cache check failed");
    }
  }

  get state(): { bytes: number; objects: number; maxSize: number | undefined; writable: boolean } {
    return { bytes: this.store.index.bytes, objects: this.store.index.objects, maxSize: this.budget.maxSize, writable: this.noSpace === undefined };
  }

  private async bytesOverWatermarks(): Promise<number> {
    let need = 0;
    const { maxSize, high, low } = this.budget;
    if (maxSize !== undefined && this.store.index.bytes > maxSize * high) need = this.store.index.bytes - Math.floor(maxSize * low);
    const fs = await this.fsUsage(this.store.root);
    const used = fs.total - fs.free;
    if (fs.total > 0 && used > fs.total * high) need = Math.max(need, used - Math.floor(fs.total * low));
    return need;
  }

  /** Deletes least-recently-used, unpinned, unused content until `need` bytes are freed. One sweep at a time. */
  sweep(need: number): Promise<{ evicted: number; bytes: number }> {
    if (this.sweeping) return this.sweeping.then(() => this.sweep(need));
    this.sweeping = this.evict(need).finally(() => (this.sweeping = undefined));
    return this.sweeping;
  }

  private async evict(need: number): Promise<{ evicted: number; bytes: number }> {
    let pinned: Set<string>;
    try {
      pinned = await this.pinnedDigests();
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "cannot tell what is pinned: evicting nothing");
      return { evicted: 0, bytes: 0 };
    }
    let freed = 0;
    let evicted = 0;
    const victims: Array<{ digest: string; size: number }> = [];
    for (const entry of this.store.index.leastRecentlyUsed()) {
      if (freed >= need) break;
      // In-flight downloads are not in the index yet; readers of just-committed ones hold open descriptors,
      // which an unlink does not disturb. Open cached reads are skipped so their space is not counted as freed.
      if (pinned.has(entry.digest) || this.store.inUse(entry.digest)) continue;
      victims.push(entry);
      freed += entry.size;
    }
    let bytes = 0;
    for (const victim of victims) {
      await this.store.delete(victim.digest);
      await this.manifests.forget(victim.digest);
      evicted++;
      bytes += victim.size;
    }
    if (evicted > 0) {
      this.metrics?.evictions.inc(evicted);
      this.metrics?.evictedBytes.inc(bytes);
      this.log.info({ evicted, bytes, cacheBytes: this.store.index.bytes }, "evicted least recently used content");
    }
    if (bytes < need) this.log.warn({ need, freed: bytes }, "could not free enough space: the rest is pinned or in use");
    return { evicted, bytes };
  }

  /** Everything reachable from the pinned tags and digests: manifests, their children, configs and layers. */
  private async pinnedDigests(): Promise<Set<string>> {
    const pinned = new Set<string>();
    // A pin list that cannot be read at all (permissions, I/O) fails the sweep: evicting without it could drop
    // content an operator pinned. One that does not parse keeps its last good contents (PinList.list).
    const recorded = (await this.pinList?.list((err) => this.log.warn({ err: err.message }, "pin list does not parse"))) ?? [];
    for (const pin of recorded) await this.addReachable(pin.digest, pinned);
    for (const pin of this.pins) {
      const tags = pin.tag !== undefined ? [pin.tag] : await this.metadata.listTags(pin.upstream, pin.repository);
      for (const tag of tags) {
        const pointer = await this.metadata.getTag(pin.upstream, pin.repository, tag);
        if (pointer) await this.addReachable(pointer.digest, pinned);
      }
    }
    return pinned;
  }

  private async addReachable(digest: string, into: Set<string>): Promise<void> {
    if (into.has(digest)) return;
    into.add(digest);
    const manifest = await this.manifests.get(digest);
    if (!manifest) return;
    for (const child of reachableDigests(manifest.bytes)) await this.addReachable(child, into);
  }
}

