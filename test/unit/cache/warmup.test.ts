/**
 * The warm-up scheduler with a stand-in prefetcher (the real one is exercised in integration/warmup.test.ts):
 * runs of one set never overlap, a run now while one is going reports that run, each failure is logged, and a
 * closed scheduler starts nothing more.
 */
import { pino } from "pino";
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { WarmupSets } from "../../../src/cache/warmup.ts";
import type { JobStatus, PrefetchRequest } from "../../../src/cache/prefetcher.ts";
import { parseConfig } from "../../../src/config/load.ts";
import { UpstreamResolver } from "../../../src/config/upstream-resolver.ts";
import { Metrics } from "../../../src/observability/metrics.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

function fixture(images: string[]) {
  const config = parseConfig({
    upstreams: { "docker.io": { url: "https://registry-1.docker.io", default: true } },
    warmup: [{ name: "s", every: "1h", firstRunAfter: "1h", images }],
  });
  const upstreams = Object.values(config.upstreams).map((c) => ({ name: c.name, config: c }) as UpstreamClient);
  const started: PrefetchRequest[] = [];
  const releases: Array<() => void> = [];
  const prefetcher = {
    run(req: PrefetchRequest): Promise<JobStatus> {
      started.push(req);
      return new Promise((resolve) =>
        releases.push(() => {
          const missing = req.repository.endsWith("missing");
          resolve({
            id: String(started.length),
            reference: req.repository,
            state: missing ? "failed" : "done",
            manifests: missing ? 0 : 1,
            blobs: { total: 1, done: missing ? 0 : 1 },
            bytes: { total: 10, done: missing ? 0 : 10 },
            errors: missing ? ["MANIFEST_UNKNOWN"] : [],
            ...(missing ? {} : { digest: `sha256:${"a".repeat(64)}` }),
            startedAt: new Date().toISOString(),
          });
        }),
      );
    },
  };
  const lines: Array<{ msg: string; reference?: string; reason?: string }> = [];
  const log = pino(
    { level: "info" },
    {
      write: (line: string) =>
        void lines.push(JSON.parse(line) as { msg: string; reference?: string; reason?: string }),
    },
  );
  const sets = new WarmupSets({
    sets: config.warmup,
    prefetcher,
    resolver: new UpstreamResolver(upstreams),
    pins: { set: async () => undefined },
    metrics: new Metrics(new Registry(), { processMetrics: false }),
    log,
  });
  const settle = async () => {
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  };
  return { sets, started, releases, lines, settle };
}

describe("WarmupSets", () => {
  it("never overlaps runs of one set: run now while one is going reports that run", async () => {
    const { sets, started, releases, settle } = fixture(["library/a:1", "library/missing:1"]);
    expect(sets.runNow("s")).toEqual({ started: true, run: 1 });
    await settle();
    expect(sets.runNow("s")).toEqual({ started: false, run: 1 });
    expect(sets.get("s")).toMatchObject({ running: true, current: { run: 1 } });
    expect(started).toHaveLength(1); // one image at a time
    releases[0]!();
    await settle();
    expect(started).toHaveLength(2);
    expect(sets.runNow("s")).toEqual({ started: false, run: 1 });
    releases[1]!();
    await settle();
    const status = sets.get("s")!;
    expect(status.running).toBe(false);
    expect(status.lastRun).toMatchObject({ run: 1, ok: 1, failed: 1, bytes: 10 });
    expect(status.nextRunAt).not.toBeNull();
    expect(sets.runNow("s")).toEqual({ started: true, run: 2 });
    expect(sets.runNow("nosuch")).toBeUndefined();
    sets.close();
  });

  it("logs one line per failed image, naming it and the reason", async () => {
    const { sets, releases, lines, settle } = fixture(["library/missing:1", "library/a:1"]);
    sets.runNow("s");
    await settle();
    releases[0]!();
    await settle();
    releases[1]!();
    await settle();
    const failures = lines.filter((l) => l.msg === "warm-up image failed");
    expect(failures).toEqual([
      expect.objectContaining({ reference: "docker.io/library/missing:1", reason: "MANIFEST_UNKNOWN" }),
    ]);
    sets.close();
  });

  it("stops a run after its current image once closed, and schedules nothing more", async () => {
    const { sets, started, releases, settle } = fixture(["library/a:1", "library/b:1"]);
    sets.runNow("s");
    await settle();
    sets.close();
    releases[0]!();
    await settle();
    expect(started).toHaveLength(1);
    expect(sets.get("s")).toMatchObject({ running: false, nextRunAt: null, lastRun: { ok: 1 } });
  });
});
