/**
 * The two numbers an office asks of a mirror, how often the cache answered and how many bytes it spared the
 * upstreams, as running totals: since this process started, and since the data directory was first served
 * (carried across restarts in a small file, saved periodically and at shutdown). Read from the counters in
 * metrics.ts, so `/admin/v1/totals` and `/metrics` can never disagree about this process. docs/metrics.md
 * defines every number.
 */
import { CONTENT_RESULTS, FROM_CACHE, type ContentResult, type Metrics } from "./metrics.ts";

export interface TrafficCounts {
  /** Content answers (manifests, blobs, tag lists, referrers lists; HEAD included) by how they were answered. */
  requests: Record<ContentResult, number>;
  bytes: {
    /** Body bytes of content answers sent to clients that needed no upstream transfer of their own. */
    sentFromCache: number;
    /** Body bytes of content answers sent to clients while being fetched for them (misses). */
    sentFromUpstream: number;
    /** Body bytes received from upstreams (content: manifests, blobs, tag and referrers lists). */
    fetchedFromUpstream: number;
  };
}

/** What the traffic file holds: the counts since `since`, the first start with this data directory. */
export interface StoredTraffic extends TrafficCounts {
  since: string;
}

export interface TrafficSummary {
  since: string;
  requests: Record<ContentResult | "total", number>;
  bytes: TrafficCounts["bytes"] & { saved: number };
  /** Content answers from the cache over all content answers; null before the first. */
  hitRatio: number | null;
  /** Bytes saved over all content bytes sent; null before the first. */
  byteHitRatio: number | null;
}

export interface TrafficReport {
  sinceStart: TrafficSummary;
  total: TrafficSummary;
}

export function zeroCounts(): TrafficCounts {
  return {
    requests: Object.fromEntries(CONTENT_RESULTS.map((r) => [r, 0])) as Record<ContentResult, number>,
    bytes: { sentFromCache: 0, sentFromUpstream: 0, fetchedFromUpstream: 0 },
  };
}

export class TrafficTotals {
  private readonly metrics: Metrics;
  private readonly startedAt: string;
  private readonly earlier: StoredTraffic;
  private saving: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private save: ((traffic: StoredTraffic) => Promise<void>) | undefined;
  private onError: (err: unknown) => void = () => undefined;

  /** `earlier`: what the traffic file held at start (undefined: none, this data directory starts counting now). */
  constructor(metrics: Metrics, opts: { earlier: StoredTraffic | undefined; now?: Date }) {
    this.metrics = metrics;
    this.startedAt = (opts.now ?? new Date()).toISOString();
    this.earlier = opts.earlier ?? { since: this.startedAt, ...zeroCounts() };
  }

  /** This process's counts, read from the metrics. */
  async sinceStart(): Promise<TrafficCounts> {
    const counts = zeroCounts();
    for (const { labels, value } of (await this.metrics.requests.get()).values) {
      const result = labels.result as ContentResult;
      if (Object.hasOwn(counts.requests, result)) counts.requests[result] += value;
    }
    for (const { labels, value } of (await this.metrics.sentBytes.get()).values) {
      if (labels.source === "cache") counts.bytes.sentFromCache += value;
      else counts.bytes.sentFromUpstream += value;
    }
    for (const { value } of (await this.metrics.upstreamFetchedBytes.get()).values)
      counts.bytes.fetchedFromUpstream += value;
    return counts;
  }

  /** What the traffic file should hold now: the earlier counts plus this process's. */
  async stored(): Promise<StoredTraffic> {
    const now = await this.sinceStart();
    const e = this.earlier;
    return {
      since: e.since,
      requests: Object.fromEntries(CONTENT_RESULTS.map((r) => [r, e.requests[r] + now.requests[r]])) as Record<
        ContentResult,
        number
      >,
      bytes: {
        sentFromCache: e.bytes.sentFromCache + now.bytes.sentFromCache,
        sentFromUpstream: e.bytes.sentFromUpstream + now.bytes.sentFromUpstream,
        fetchedFromUpstream: e.bytes.fetchedFromUpstream + now.bytes.fetchedFromUpstream,
      },
    };
  }

  async report(): Promise<TrafficReport> {
    return {
      sinceStart: summarize({ since: this.startedAt, ...(await this.sinceStart()) }),
      total: summarize(await this.stored()),
    };
  }

  /**
   * Saves through `save` every `everyMs` until stop(). Saves never overlap (each waits for the one before), so
   * the last one started is the last one written.
   */
  saveEvery(everyMs: number, save: (traffic: StoredTraffic) => Promise<void>, onError: (err: unknown) => void): void {
    this.save = save;
    this.onError = onError;
    this.timer = setInterval(() => void this.saveNow(), everyMs);
    this.timer.unref();
  }

  /** Stops the periodic saves and saves once more (at shutdown, when every request has been counted). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.saveNow();
  }

  private saveNow(): Promise<void> {
    const save = this.save;
    if (save === undefined) return this.saving;
    this.saving = this.saving.then(async () => {
      try {
        await save(await this.stored());
      } catch (err) {
        this.onError(err);
      }
    });
    return this.saving;
  }
}

export function summarize(counts: StoredTraffic): TrafficSummary {
  const total = CONTENT_RESULTS.reduce((sum, r) => sum + counts.requests[r], 0);
  const fromCache = CONTENT_RESULTS.filter((r) => FROM_CACHE.has(r)).reduce((sum, r) => sum + counts.requests[r], 0);
  const sent = counts.bytes.sentFromCache + counts.bytes.sentFromUpstream;
  return {
    since: counts.since,
    requests: { ...counts.requests, total },
    bytes: { ...counts.bytes, saved: counts.bytes.sentFromCache },
    hitRatio: total > 0 ? fromCache / total : null,
    byteHitRatio: sent > 0 ? counts.bytes.sentFromCache / sent : null,
  };
}

/**
 * The traffic file's content, checked: undefined when it is not one (the caller starts counting anew). Every
 * count a finite number at least 0; keys beyond these are ignored.
 */
export function parseStoredTraffic(text: string): StoredTraffic | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  const v = parsed as { version?: unknown; since?: unknown; requests?: unknown; bytes?: unknown } | null;
  if (v === null || typeof v !== "object" || v.version !== 1) return undefined;
  if (typeof v.since !== "string" || Number.isNaN(Date.parse(v.since))) return undefined;
  const count = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x) && x >= 0;
  const requests = v.requests as Record<string, unknown> | null;
  const bytes = v.bytes as Record<string, unknown> | null;
  if (requests === null || typeof requests !== "object" || bytes === null || typeof bytes !== "object")
    return undefined;
  const out = zeroCounts();
  for (const r of CONTENT_RESULTS) {
    if (!count(requests[r])) return undefined;
    out.requests[r] = requests[r];
  }
  for (const k of ["sentFromCache", "sentFromUpstream", "fetchedFromUpstream"] as const) {
    if (!count(bytes[k])) return undefined;
    out.bytes[k] = bytes[k];
  }
  return { since: new Date(v.since).toISOString(), ...out };
}

/** The traffic file's text (version 1). */
export function serializeStoredTraffic(traffic: StoredTraffic): string {
  return `${JSON.stringify({ version: 1, savedAt: new Date().toISOString(), ...traffic }, null, 2)}\n`;
}
