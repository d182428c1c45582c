/**
 * The live state the overview shows besides the traffic totals (which it reads from `/admin/v1/totals`): each
 * upstream's health, rate limit and last error, the cache's use against its budget and watermarks, the downloads
 * running. Read from the same parts the `/metrics` gauges read at each scrape (metrics.ts `showOnScrape`), so
 * the two cannot disagree; described here by shape, so this module imports no lower layer.
 */

export interface StatusSources {
  upstreams: ReadonlyArray<{
    readonly name: string;
    readonly config: { readonly url: string; readonly default?: boolean | undefined; readonly tagTtl: number };
    readonly health: {
      readonly state: string;
      retryInMs(): number;
      readonly lastError: { at: number; message: string } | undefined;
    };
    readonly rateLimit: { limit: number | undefined; remaining: number | undefined } | undefined;
  }>;
  cache: {
    readonly state: {
      bytes: number;
      objects: number;
      reserved: number;
      maxSize: number | undefined;
      writable: boolean;
      evictionBlocked: string | undefined;
    };
  };
  watermarks: { high: number; low: number };
  fills: {
    downloading(): Array<{
      digest: string;
      upstream: string;
      repository: string;
      written: number;
      size: number | undefined;
      readers: number;
    }>;
  };
}

export interface ConsoleStatus {
  upstreams: Array<{
    name: string;
    url: string;
    default: boolean;
    /** How long a tag is served without asking the upstream: older tags are stale until revalidated. */
    tagTtlMs: number;
    up: boolean;
    retryInMs: number;
    rateLimit: { limit: number | null; remaining: number | null };
    lastError: { at: string; message: string } | null;
  }>;
  storage: {
    bytes: number;
    objects: number;
    reserved: number;
    maxSize: number | null;
    highWatermark: number;
    lowWatermark: number;
    writable: boolean;
    evictionBlocked: string | null;
  };
  fills: Array<{
    digest: string;
    upstream: string;
    repository: string;
    written: number;
    size: number | null;
    readers: number;
  }>;
}

export function consoleStatus(s: StatusSources): ConsoleStatus {
  const cache = s.cache.state;
  return {
    upstreams: s.upstreams.map((u) => ({
      name: u.name,
      url: u.config.url,
      default: u.config.default === true,
      tagTtlMs: u.config.tagTtl,
      up: u.health.state === "up",
      retryInMs: u.health.retryInMs(),
      rateLimit: { limit: u.rateLimit?.limit ?? null, remaining: u.rateLimit?.remaining ?? null },
      lastError: u.health.lastError
        ? { at: new Date(u.health.lastError.at).toISOString(), message: u.health.lastError.message }
        : null,
    })),
    storage: {
      bytes: cache.bytes,
      objects: cache.objects,
      reserved: cache.reserved,
      maxSize: cache.maxSize ?? null,
      highWatermark: s.watermarks.high,
      lowWatermark: s.watermarks.low,
      writable: cache.writable,
      evictionBlocked: cache.evictionBlocked ?? null,
    },
    fills: s.fills.downloading().map((f) => ({ ...f, size: f.size ?? null })),
  };
}
