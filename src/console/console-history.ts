/**
 * The history behind the console's charts: the traffic totals (observability/traffic-totals.ts, the numbers of
 * `/admin/v1/totals` and `/metrics`) sampled every `console.historyInterval` into
 * `<storage.path>/console-history.json`, so the day and 30-day views survive restarts. Bounded: every sample of
 * the last 25 hours is kept, older ones thinned to one per hour, and nothing older than 31 days (about 1,500 +
 * 750 samples whatever the interval is, some 200 KB). A damaged file is reported and the history starts anew.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { timerDelay } from "../config/timer-delay.ts";
import { FROM_CACHE, CONTENT_RESULTS } from "../observability/metrics.ts";
import type { StoredTraffic } from "../observability/traffic-totals.ts";
import { replaceFileDurably } from "../storage/durable-replace.ts";
import { errorMessage } from "../caught-errors.ts";

export const HISTORY_FILE = "console-history.json";
const HOUR = 3_600_000;
const FINE_SPAN = 25 * HOUR;
const KEPT_SPAN = 31 * 24 * HOUR;
/** A cap on fine samples too, for an interval of a second (tests): the last day at most every minute's worth. */
const MAX_FINE = 1_500;

/** Running totals at one instant (cumulative since the data directory was first served). */
export interface HistorySample {
  /** Milliseconds since the epoch. */
  t: number;
  requests: number;
  fromCache: number;
  sentFromCache: number;
  sentFromUpstream: number;
  fetchedFromUpstream: number;
}

export function sampleOf(traffic: StoredTraffic, t: number): HistorySample {
  return {
    t,
    requests: CONTENT_RESULTS.reduce((sum, r) => sum + traffic.requests[r], 0),
    fromCache: CONTENT_RESULTS.filter((r) => FROM_CACHE.has(r)).reduce((sum, r) => sum + traffic.requests[r], 0),
    sentFromCache: traffic.bytes.sentFromCache,
    sentFromUpstream: traffic.bytes.sentFromUpstream,
    fetchedFromUpstream: traffic.bytes.fetchedFromUpstream,
  };
}

/** Adds `sample` and thins what is kept to the bounds above; the input is not changed. */
export function appendSample(samples: readonly HistorySample[], sample: HistorySample): HistorySample[] {
  const all = [...samples.filter((s) => s.t < sample.t), sample];
  const out: HistorySample[] = [];
  let lastHour = -1;
  for (const s of all) {
    const age = sample.t - s.t;
    if (age > KEPT_SPAN) continue;
    if (age > FINE_SPAN) {
      const hour = Math.floor(s.t / HOUR);
      if (hour === lastHour) continue;
      lastHour = hour;
    }
    out.push(s);
  }
  const fineFrom = out.findIndex((s) => sample.t - s.t <= FINE_SPAN);
  const fine = out.length - fineFrom;
  return fine > MAX_FINE ? [...out.slice(0, fineFrom), ...out.slice(out.length - MAX_FINE)] : out;
}

function parseHistory(text: string): HistorySample[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  const v = parsed as { version?: unknown; samples?: unknown } | null;
  if (v === null || typeof v !== "object" || v.version !== 1 || !Array.isArray(v.samples)) return undefined;
  const keys = ["t", "requests", "fromCache", "sentFromCache", "sentFromUpstream", "fetchedFromUpstream"] as const;
  const out: HistorySample[] = [];
  for (const s of v.samples as unknown[]) {
    const r = s as Record<string, unknown> | null;
    if (r === null || typeof r !== "object") return undefined;
    if (!keys.every((k) => typeof r[k] === "number" && Number.isFinite(r[k]) && r[k] >= 0)) return undefined;
    out.push(Object.fromEntries(keys.map((k) => [k, r[k]])) as unknown as HistorySample);
  }
  return out.sort((a, b) => a.t - b.t);
}

export class ConsoleHistory {
  readonly path: string;
  private readonly tempDir: string;
  private samples: HistorySample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private saving: Promise<void> = Promise.resolve();

  constructor(dir: string) {
    this.path = join(dir, HISTORY_FILE);
    this.tempDir = join(dir, "tmp");
  }

  /** Reads the file; answers why it could not be used, if it exists and is damaged. */
  async load(): Promise<string | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      return errorMessage(err);
    }
    const samples = parseHistory(text);
    if (!samples) return "not a console history file (version 1)";
    this.samples = samples;
    return undefined;
  }

  /** The samples at or after `since` (ms since the epoch), oldest first. */
  since(since: number): HistorySample[] {
    return this.samples.filter((s) => s.t >= since);
  }

  /** Takes one sample now and saves the file (saves never overlap). */
  record(traffic: () => Promise<StoredTraffic>, onError: (err: unknown) => void): Promise<void> {
    this.saving = this.saving.then(async () => {
      try {
        this.samples = appendSample(this.samples, sampleOf(await traffic(), Date.now()));
        const text = `${JSON.stringify({ version: 1, samples: this.samples })}\n`;
        await replaceFileDurably(this.path, text, { tempDir: this.tempDir });
      } catch (err) {
        onError(err);
      }
    });
    return this.saving;
  }

  every(ms: number, traffic: () => Promise<StoredTraffic>, onError: (err: unknown) => void): void {
    void this.record(traffic, onError);
    this.timer = setInterval(() => void this.record(traffic, onError), timerDelay(ms));
    this.timer.unref();
  }

  /** Stops sampling after one last sample (at shutdown). */
  async stop(traffic: () => Promise<StoredTraffic>, onError: (err: unknown) => void): Promise<void> {
    if (this.timer === undefined) return;
    clearInterval(this.timer);
    this.timer = undefined;
    await this.record(traffic, onError);
  }
}
