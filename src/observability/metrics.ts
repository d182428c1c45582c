/**
 * Every Prometheus metric the mirror exports, defined here and nowhere else, on a registry passed in (no
 * module-level singletons: several mirrors can run in one process). Names carry the `mirror_` prefix and a unit
 * suffix; labels are low-cardinality only (upstream name, kind, result, status class), never a repository name
 * or a digest.
 *
 * docs/metrics.md lists every metric defined here (a test holds it to this file), and gives the PromQL and
 * recording rules for hit ratio and bandwidth saved.
 */
import { Counter, Gauge, Histogram, collectDefaultMetrics, type Registry } from "./prom-client.ts";

export type RequestKind = "manifest" | "blob" | "tags" | "referrers" | "other";
/** How a request was answered: from cache (hit), by fetching (miss), by joining a running fill (coalesced),
 * after a HEAD confirmed the cached pointer (revalidated), from a pointer the upstream could not confirm (stale),
 * or with an error / nothing cache-related (none). */
export type CacheResult = "hit" | "miss" | "coalesced" | "revalidated" | "stale" | "none";
/** The results of a content answer (a manifest, blob, tag list or referrers list), `none` excepted. */
export const CONTENT_RESULTS = ["hit", "coalesced", "revalidated", "stale", "miss"] as const;
export type ContentResult = (typeof CONTENT_RESULTS)[number];
/** Content results whose bytes needed no upstream transfer of their own: what the cache saved. */
export const FROM_CACHE: ReadonlySet<CacheResult> = new Set(["hit", "coalesced", "revalidated", "stale"]);

/**
 * What the scrape-time gauges read, asked at every scrape: the parts' own state, described here by shape (the
 * janitor, the fill coordinator, the upstream clients fit it) so this module imports no other layer.
 */
export interface LiveState {
  metadataStore(): { store: string; degraded: boolean };
  cache: {
    readonly state: {
      bytes: number;
      objects: number;
      maxSize: number | undefined;
      writable: boolean;
      evictionBlocked: string | undefined;
    };
  };
  fills: { readonly inFlight: number; readonly readers: number };
  upstreams: ReadonlyArray<{
    readonly name: string;
    readonly health: { readonly state: string };
    readonly rateLimit: { limit: number | undefined; remaining: number | undefined } | undefined;
  }>;
}

export class Metrics {
  readonly registry: Registry;
  readonly requests: Counter<"upstream" | "kind" | "result" | "status_class">;
  readonly requestDuration: Histogram<"kind" | "result">;
  readonly sentBytes: Counter<"upstream" | "kind" | "source">;
  readonly upstreamFetchedBytes: Counter<"upstream" | "kind">;
  readonly upstreamRequests: Counter<"upstream" | "method" | "status_class">;
  readonly upstreamDuration: Histogram<"upstream" | "method" | "status_class">;
  readonly upstreamUp: Gauge<"upstream">;
  readonly rateLimitLimit: Gauge<"upstream">;
  readonly rateLimitRemaining: Gauge<"upstream">;
  readonly tokenRequests: Counter<"upstream" | "result">;
  readonly fillsInFlight: Gauge;
  readonly fillReaders: Gauge;
  readonly fills: Counter<"upstream" | "result">;
  readonly staleServed: Counter<"upstream" | "reason">;
  readonly metadataStoreUp: Gauge<"store">;
  readonly cacheBytes: Gauge;
  readonly cacheObjects: Gauge;
  readonly cacheBudgetBytes: Gauge;
  readonly cacheWritable: Gauge;
  /** With `storage.s3` only (showObjectStore). */
  readonly objectStoreUp: Gauge;
  readonly objectStoreFailures: Counter;
  readonly evictionBlocked: Gauge;
  readonly evictions: Counter<"reason">;
  readonly evictedBytes: Counter<"reason">;
  readonly fleetEvictionLockBusy: Counter;
  readonly uncachedServed: Counter<"upstream">;
  readonly fleetFills: Counter<"source">;
  // Warm-up sets (cache/warmup.ts).
  readonly warmupImages: Gauge<"set" | "result">;
  readonly warmupLastRun: Gauge<"set">;
  readonly warmupListInvalid: Gauge<"set">;
  // Ordered fallbacks (registry/upstream-fallback.ts).
  readonly upstreamFallbacks: Counter<"upstream" | "fallback" | "reason">;

  constructor(registry: Registry, opts: { processMetrics?: boolean } = {}) {
    this.registry = registry;
    const registers = [registry];
    this.requests = new Counter({
      name: "mirror_requests_total",
      help: "Registry API requests answered, by upstream, kind (manifest, blob, tags, referrers), cache result and status class.",
      labelNames: ["upstream", "kind", "result", "status_class"],
      registers,
    });
    this.requestDuration = new Histogram({
      name: "mirror_request_duration_seconds",
      help: "Time to answer a registry API request, from arrival to the last byte sent.",
      labelNames: ["kind", "result"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.sentBytes = new Counter({
      name: "mirror_sent_bytes_total",
      help: "Body bytes sent to clients, by source: cache (no upstream transfer needed) or upstream (a client reading the download it caused).",
      labelNames: ["upstream", "kind", "source"],
      registers,
    });
    this.upstreamFetchedBytes = new Counter({
      name: "mirror_upstream_fetched_bytes_total",
      help: "Body bytes received from each upstream.",
      labelNames: ["upstream", "kind"],
      registers,
    });
    this.upstreamRequests = new Counter({
      name: "mirror_upstream_requests_total",
      help: "Requests sent to each upstream, by method and status class (error = no response).",
      labelNames: ["upstream", "method", "status_class"],
      registers,
    });
    this.upstreamDuration = new Histogram({
      name: "mirror_upstream_request_duration_seconds",
      help: "Time from sending a request to an upstream to its response headers.",
      labelNames: ["upstream", "method", "status_class"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.upstreamUp = new Gauge({
      name: "mirror_upstream_up",
      help: "1 while the upstream is considered healthy, 0 while it is marked down.",
      labelNames: ["upstream"],
      registers,
    });
    this.rateLimitLimit = new Gauge({
      name: "mirror_upstream_ratelimit_limit",
      help: "Latest ratelimit-limit header from the upstream (pulls per window).",
      labelNames: ["upstream"],
      registers,
    });
    this.rateLimitRemaining = new Gauge({
      name: "mirror_upstream_ratelimit_remaining",
      help: "Latest ratelimit-remaining header from the upstream.",
      labelNames: ["upstream"],
      registers,
    });
    this.tokenRequests = new Counter({
      name: "mirror_upstream_token_requests_total",
      help: "Token requests sent to upstream token services.",
      labelNames: ["upstream", "result"],
      registers,
    });
    this.fillsInFlight = new Gauge({
      name: "mirror_fills_in_flight",
      help: "Blob downloads from upstreams in progress.",
      registers,
    });
    this.fillReaders = new Gauge({
      name: "mirror_fill_readers",
      help: "Client responses currently reading from in-progress downloads.",
      registers,
    });
    this.fills = new Counter({
      name: "mirror_fills_total",
      help: "Blob downloads ended, by result (committed, failed, or uncached: an unknown-size download that outgrew the budget, served verified but not stored).",
      labelNames: ["upstream", "result"],
      registers,
    });
    this.staleServed = new Counter({
      name: "mirror_stale_served_total",
      help: "Cached content answered without the upstream's confirmation, by reason: the upstream's error code, DEADLINE (no answer within revalidateTimeout) or BACKGROUND (staleWhileRevalidate).",
      labelNames: ["upstream", "reason"],
      registers,
    });
    this.metadataStoreUp = new Gauge({
      name: "mirror_metadata_store_up",
      help: "1 while the metadata store answers, 0 while degraded (answering from the embedded fallback).",
      labelNames: ["store"],
      registers,
    });
    this.cacheBytes = new Gauge({
      name: "mirror_cache_size_bytes",
      help: "Bytes of committed content in the cache.",
      registers,
    });
    this.cacheObjects = new Gauge({
      name: "mirror_cache_objects",
      help: "Committed objects (blobs and manifests) in the cache.",
      registers,
    });
    // Registered only while there is a budget (showOnScrape): a gauge without labels is otherwise exported as 0,
    // which a dashboard would read as a budget of nothing.
    this.cacheBudgetBytes = new Gauge({
      name: "mirror_cache_budget_bytes",
      help: "storage.maxSize, the cache's budget (absent when unbounded).",
      registers: [],
    });
    this.cacheWritable = new Gauge({
      name: "mirror_cache_writable",
      help: "1 while downloads are cached; 0 in no-space mode (misses streamed uncached).",
      registers,
    });
    // Registered only with an object store (showObjectStore): a mirror on its own disk has none to report.
    this.objectStoreUp = new Gauge({
      name: "mirror_object_store_up",
      help: "With storage.s3: 1 while the object store answers, 0 while it is unavailable (misses and hits streamed from upstreams, nothing cached).",
      registers: [],
    });
    this.objectStoreFailures = new Counter({
      name: "mirror_object_store_failures_total",
      help: "With storage.s3: requests to the object store that failed for want of it (connection refused, timeout, 5xx).",
      registers: [],
    });
    this.evictionBlocked = new Gauge({
      name: "mirror_eviction_blocked",
      help: "1 while eviction is stopped because what is pinned cannot be told (a damaged pin file, a storage.pinned entry that resolves to nothing): downloads that need eviction are served uncached.",
      registers,
    });
    this.evictions = new Counter({
      name: "mirror_evictions_total",
      help: "Objects evicted, by reason: budget (to keep the cache within its budget and the disk's watermarks) or idle (not pulled for storage.maxIdle or a rule's maxIdle).",
      labelNames: ["reason"],
      registers,
    });
    this.evictedBytes = new Counter({
      name: "mirror_evicted_bytes_total",
      help: "Bytes evicted, by reason (as mirror_evictions_total).",
      labelNames: ["reason"],
      registers,
    });
    this.fleetEvictionLockBusy = new Counter({
      name: "mirror_fleet_eviction_lock_busy_total",
      help: "With storage.s3 and redis.url: sweeps and admissions of this replica that found another replica evicting (the fleet's eviction lock held) and did not evict themselves.",
      registers,
    });
    this.uncachedServed = new Counter({
      name: "mirror_uncached_blobs_total",
      help: "Blobs streamed to a client from the upstream without caching (no space, over budget, or the object store unavailable).",
      labelNames: ["upstream"],
      registers,
    });
    this.fleetFills = new Counter({
      name: "mirror_fleet_fill_sources_total",
      help: "Where a replica of a fleet got a blob it downloaded: the upstream (holding the lease, or why without it) or a peer replica.",
      labelNames: ["source"],
      registers,
    });
    this.warmupImages = new Gauge({
      name: "mirror_warmup_images",
      help: "Images of each warm-up set by the result of its last run: ok or failed.",
      labelNames: ["set", "result"],
      registers,
    });
    this.warmupLastRun = new Gauge({
      name: "mirror_warmup_last_run_timestamp_seconds",
      help: "When each warm-up set's last run ended (Unix seconds).",
      labelNames: ["set"],
      registers,
    });
    this.warmupListInvalid = new Gauge({
      name: "mirror_warmup_list_invalid",
      help: "1 while a warm-up set's file is unreadable or invalid (the last good list is used), else 0.",
      labelNames: ["set"],
      registers,
    });
    this.upstreamFallbacks = new Counter({
      name: "mirror_upstream_fallbacks_total",
      help: "Requests answered through a fallback upstream, by upstream, fallback and why the upstream was passed over.",
      labelNames: ["upstream", "fallback", "reason"],
      registers,
    });
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: registry });
  }

  private readonly collectors: Array<() => void> = [];

  /** Registers a function that sets gauges from live state just before each scrape. */
  onScrape(collect: () => void): void {
    this.collectors.push(collect);
  }

  /**
   * Shows the mirror's live state in the gauges that describe it (metadata store, cache size and budget, fills,
   * upstream health and rate limits), set from `live` just before each scrape.
   */
  showOnScrape(live: LiveState): void {
    this.onScrape(() => {
      const state = live.metadataStore();
      this.metadataStoreUp.set({ store: state.store }, state.degraded ? 0 : 1);
      const cache = live.cache.state;
      this.cacheBytes.set(cache.bytes);
      this.cacheObjects.set(cache.objects);
      this.showBudget(cache.maxSize);
      this.cacheWritable.set(cache.writable ? 1 : 0);
      this.evictionBlocked.set(cache.evictionBlocked !== undefined ? 1 : 0);
      this.fillsInFlight.set(live.fills.inFlight);
      this.fillReaders.set(live.fills.readers);
      for (const u of live.upstreams) {
        this.upstreamUp.set({ upstream: u.name }, u.health.state === "up" ? 1 : 0);
        if (u.rateLimit?.limit !== undefined) this.rateLimitLimit.set({ upstream: u.name }, u.rateLimit.limit);
        if (u.rateLimit?.remaining !== undefined)
          this.rateLimitRemaining.set({ upstream: u.name }, u.rateLimit.remaining);
      }
    });
  }

  /** Shows the object store's health (`storage.s3`): its gauge and failure counter exist from now on. */
  showObjectStore(health: { readonly up: boolean }): void {
    this.registry.registerMetric(this.objectStoreUp);
    this.registry.registerMetric(this.objectStoreFailures);
    this.onScrape(() => this.objectStoreUp.set(health.up ? 1 : 0));
  }

  private showBudget(maxSize: number | undefined): void {
    const name = "mirror_cache_budget_bytes";
    const registered = this.registry.getSingleMetric(name) !== undefined;
    if (maxSize === undefined) {
      if (registered) this.registry.removeSingleMetric(name);
      return;
    }
    if (!registered) this.registry.registerMetric(this.cacheBudgetBytes);
    this.cacheBudgetBytes.set(maxSize);
  }

  /** The exposition text, after refreshing scrape-time gauges. */
  async render(): Promise<string> {
    for (const collect of this.collectors) collect();
    return this.registry.metrics();
  }
}

/** `200` → `2xx`; undefined (no response) → `error`. */
export function statusClass(status: number | undefined): string {
  return status === undefined ? "error" : `${Math.floor(status / 100)}xx`;
}
