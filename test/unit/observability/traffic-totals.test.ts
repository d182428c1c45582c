/**
 * Traffic totals over a real metrics registry: what the counters say becomes the since-start totals, the
 * earlier totals are added for the all-time ones, the ratios follow docs/metrics.md, the stored form round-trips
 * and refuses what is not one, and saves never overlap and end with one at stop().
 */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { Metrics } from "../../../src/observability/metrics.ts";
import {
  parseStoredTraffic,
  serializeStoredTraffic,
  summarize,
  TrafficTotals,
  zeroCounts,
  type StoredTraffic,
} from "../../../src/observability/traffic-totals.ts";

function countedMetrics(): Metrics {
  const m = new Metrics(new Registry(), { processMetrics: false });
  const req = (kind: string, result: string, n: number, status_class = "2xx") =>
    m.requests.inc({ upstream: "docker.io", kind, result, status_class }, n);
  req("manifest", "hit", 6);
  req("blob", "hit", 2);
  req("blob", "coalesced", 1);
  req("manifest", "revalidated", 1);
  req("manifest", "stale", 1, "2xx");
  req("blob", "miss", 3);
  req("other", "none", 50); // pings, probes: no content answer
  m.sentBytes.inc({ upstream: "docker.io", kind: "blob", source: "cache" }, 9000);
  m.sentBytes.inc({ upstream: "docker.io", kind: "manifest", source: "cache" }, 1000);
  m.sentBytes.inc({ upstream: "docker.io", kind: "blob", source: "upstream" }, 2500);
  m.upstreamFetchedBytes.inc({ upstream: "docker.io", kind: "blob" }, 4000);
  m.upstreamFetchedBytes.inc({ upstream: "ghcr.io", kind: "manifest" }, 500);
  return m;
}

const earlier: StoredTraffic = {
  since: "2026-01-01T00:00:00.000Z",
  requests: { hit: 100, coalesced: 0, revalidated: 0, stale: 0, miss: 20 },
  bytes: { sentFromCache: 50_000, sentFromUpstream: 10_000, fetchedFromUpstream: 12_000 },
};

describe("TrafficTotals", () => {
  it("reads this process's totals from the counters, content answers only", async () => {
    const totals = new TrafficTotals(countedMetrics(), { earlier: undefined, now: new Date("2026-12-02T10:00:00Z") });
    const { sinceStart, total } = await totals.report();
    expect(sinceStart).toEqual({
      since: "2026-12-02T10:00:00.000Z",
      requests: { hit: 8, coalesced: 1, revalidated: 1, stale: 1, miss: 3, total: 14 },
      bytes: { sentFromCache: 10_000, sentFromUpstream: 2500, fetchedFromUpstream: 4500, saved: 10_000 },
      hitRatio: 11 / 14,
      byteHitRatio: 10_000 / 12_500,
    });
    // A data directory counted for the first time: all time is since this start.
    expect(total).toEqual(sinceStart);
  });

  it("adds the totals saved by earlier runs to this run's for the all-time totals", async () => {
    const totals = new TrafficTotals(countedMetrics(), { earlier });
    const { total } = await totals.report();
    expect(total.since).toBe(earlier.since);
    expect(total.requests).toEqual({ hit: 108, coalesced: 1, revalidated: 1, stale: 1, miss: 23, total: 134 });
    expect(total.bytes).toEqual({
      sentFromCache: 60_000,
      sentFromUpstream: 12_500,
      fetchedFromUpstream: 16_500,
      saved: 60_000,
    });
    const stored = await totals.stored();
    expect(stored.since).toBe(earlier.since);
    expect(stored.requests.hit).toBe(108);
    expect(stored.bytes.fetchedFromUpstream).toBe(16_500);
  });

  it("has no ratio before the first answer", () => {
    const s = summarize({ since: earlier.since, ...zeroCounts() });
    expect([s.hitRatio, s.byteHitRatio, s.requests.total]).toEqual([null, null, 0]);
  });

  it("saves one at a time, and once more at stop with every count in it", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    const totals = new TrafficTotals(metrics, { earlier });
    const saved: StoredTraffic[] = [];
    let running = 0;
    let overlapped = false;
    totals.saveEvery(
      5,
      async (t) => {
        running++;
        overlapped ||= running > 1;
        await new Promise((r) => setTimeout(r, 15)); // slower than the period
        saved.push(t);
        running--;
      },
      (err) => {
        throw err;
      },
    );
    for (let i = 0; i < 100 && saved.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    metrics.requests.inc({ upstream: "u", kind: "blob", result: "miss", status_class: "2xx" }, 5);
    await totals.stop();
    expect(overlapped).toBe(false);
    expect(saved.length).toBeGreaterThanOrEqual(2);
    expect(saved.at(-1)!.requests.miss).toBe(earlier.requests.miss + 5);
    const count = saved.length;
    await new Promise((r) => setTimeout(r, 30));
    expect(saved.length).toBe(count); // no periodic save after stop
  });

  it("reports a failed save and goes on saving", async () => {
    const totals = new TrafficTotals(new Metrics(new Registry(), { processMetrics: false }), { earlier });
    const errors: unknown[] = [];
    let attempts = 0;
    totals.saveEvery(
      1_000_000,
      async () => {
        attempts++;
        if (attempts === 1) throw new Error("disk full");
      },
      (err) => errors.push(err),
    );
    await totals.stop();
    await totals.stop();
    expect(attempts).toBe(2);
    expect(errors).toEqual([new Error("disk full")]);
  });
});

describe("the stored totals", () => {
  it("round-trip through their text", () => {
    expect(parseStoredTraffic(serializeStoredTraffic(earlier))).toEqual(earlier);
  });

  it.each([
    ["not JSON", "{"],
    ["another version", JSON.stringify({ ...earlier, version: 2 })],
    ["no version", JSON.stringify(earlier)],
    ["a bad date", JSON.stringify({ ...earlier, version: 1, since: "yesterday" })],
    ["a negative count", JSON.stringify({ ...earlier, version: 1, requests: { ...earlier.requests, hit: -1 } })],
    [
      "a count that is text",
      JSON.stringify({ ...earlier, version: 1, bytes: { ...earlier.bytes, sentFromCache: "9" } }),
    ],
    ["a missing result", JSON.stringify({ ...earlier, version: 1, requests: { hit: 1 } })],
    ["null", "null"],
  ])("refuse %s", (_what, text) => {
    expect(parseStoredTraffic(text)).toBeUndefined();
  });
});
