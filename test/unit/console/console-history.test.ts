import { mkdtemp, readFile, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import {
  appendSample,
  ConsoleHistory,
  HISTORY_FILE,
  sampleOf,
  type HistorySample,
} from "../../../src/console/console-history.ts";
import { zeroCounts, type StoredTraffic } from "../../../src/observability/traffic-totals.ts";

const HOUR = 3_600_000;
const at = (t: number): HistorySample => ({
  t,
  requests: t,
  fromCache: 0,
  sentFromCache: 0,
  sentFromUpstream: 0,
  fetchedFromUpstream: 0,
});

const dirs: string[] = [];
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});
async function dataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "console-history-"));
  dirs.push(dir);
  await mkdir(join(dir, "tmp"));
  return dir;
}

function traffic(sentFromCache: number): StoredTraffic {
  const counts = zeroCounts();
  counts.requests.hit = 3;
  counts.requests.coalesced = 1;
  counts.requests.miss = 2;
  counts.bytes.sentFromCache = sentFromCache;
  counts.bytes.sentFromUpstream = 7;
  counts.bytes.fetchedFromUpstream = 9;
  return { since: new Date(0).toISOString(), ...counts };
}

describe("history samples", () => {
  it("sums answers from cache as the traffic totals define them (every result but miss)", () => {
    expect(sampleOf(traffic(5), 42)).toEqual({
      t: 42,
      requests: 6,
      fromCache: 4,
      sentFromCache: 5,
      sentFromUpstream: 7,
      fetchedFromUpstream: 9,
    });
  });

  it("keeps every sample of the last 25 hours, one an hour before that, none older than 31 days", () => {
    let samples: HistorySample[] = [];
    const start = 1_700_000_000_000 - (1_700_000_000_000 % HOUR);
    // A sample every 10 minutes for 40 days.
    const step = 10 * 60_000;
    const end = start + 40 * 24 * HOUR;
    for (let t = start; t <= end; t += step) samples = appendSample(samples, at(t));
    const fine = samples.filter((s) => end - s.t <= 25 * HOUR);
    expect(fine).toHaveLength(25 * 6 + 1);
    const coarse = samples.filter((s) => end - s.t > 25 * HOUR);
    expect(coarse.every((s) => end - s.t <= 31 * 24 * HOUR)).toBe(true);
    const hours = coarse.map((s) => Math.floor(s.t / HOUR));
    expect(new Set(hours).size).toBe(hours.length);
    expect(coarse.length).toBeGreaterThanOrEqual(31 * 24 - 25 - 1);
    expect(samples.map((s) => s.t)).toEqual([...samples.map((s) => s.t)].sort((a, b) => a - b));
  });

  it("caps the fine samples of a short interval", () => {
    let samples: HistorySample[] = [];
    for (let t = 0; t < 3_000_000; t += 1_000) samples = appendSample(samples, at(t));
    expect(samples).toHaveLength(1_500);
    expect(samples.at(-1)!.t).toBe(2_999_000);
  });
});

describe("ConsoleHistory", () => {
  it("survives a restart: what one instance recorded, the next reads from the data directory", async () => {
    const dir = await dataDir();
    const first = new ConsoleHistory(dir);
    expect(await first.load()).toBeUndefined();
    await first.record(
      async () => traffic(100),
      (err) => expect.fail(String(err)),
    );
    await first.record(
      async () => traffic(250),
      (err) => expect.fail(String(err)),
    );
    const second = new ConsoleHistory(dir);
    expect(await second.load()).toBeUndefined();
    expect(second.since(0).map((s) => s.sentFromCache)).toEqual([100, 250]);
    expect(JSON.parse(await readFile(join(dir, HISTORY_FILE), "utf8"))).toMatchObject({ version: 1 });
  });

  it("reports a damaged file and starts anew", async () => {
    const dir = await dataDir();
    await writeFile(join(dir, HISTORY_FILE), '{"version":1,"samples":[{"t":"yesterday"}]}');
    const history = new ConsoleHistory(dir);
    expect(await history.load()).toBe("not a console history file (version 1)");
    expect(history.since(0)).toEqual([]);
  });
});
