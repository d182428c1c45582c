/** The scrape-time gauges: set from the parts' live state when a scrape renders, not when the state changes. */
import { Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { Metrics, type LiveState } from "../../../src/observability/metrics.ts";

function live(): LiveState & {
  cache: { state: LiveState["cache"]["state"] };
  fills: { inFlight: number; readers: number };
  degraded: boolean;
} {
  const state = {
    degraded: false,
    metadataStore: () => ({ store: "redis", degraded: state.degraded }),
    cache: {
      state: {
        bytes: 1000,
        objects: 3,
        maxSize: 5000 as number | undefined,
        writable: true,
        evictionBlocked: undefined as string | undefined,
      },
    },
    fills: { inFlight: 2, readers: 5 },
    upstreams: [
      { name: "docker.io", health: { state: "up" }, rateLimit: { limit: 100, remaining: 42 } },
      { name: "ghcr.io", health: { state: "down" }, rateLimit: undefined },
    ],
  };
  return state;
}

const lines = (text: string) => text.split("\n").filter((l) => l.startsWith("mirror_"));

describe("Metrics.showOnScrape", () => {
  it("renders the live state of every part it is shown", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    metrics.showOnScrape(live());
    expect(lines(await metrics.render())).toEqual(
      expect.arrayContaining([
        'mirror_metadata_store_up{store="redis"} 1',
        "mirror_cache_size_bytes 1000",
        "mirror_cache_objects 3",
        "mirror_cache_budget_bytes 5000",
        "mirror_cache_writable 1",
        "mirror_eviction_blocked 0",
        "mirror_fills_in_flight 2",
        "mirror_fill_readers 5",
        'mirror_upstream_up{upstream="docker.io"} 1',
        'mirror_upstream_up{upstream="ghcr.io"} 0',
        'mirror_upstream_ratelimit_limit{upstream="docker.io"} 100',
        'mirror_upstream_ratelimit_remaining{upstream="docker.io"} 42',
      ]),
    );
    expect(
      lines(await metrics.render()).filter((l) => l.includes('upstream="ghcr.io"') && l.includes("ratelimit")),
    ).toEqual([]);
  });

  it("reads the state again at every scrape", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    const state = live();
    metrics.showOnScrape(state);
    await metrics.render();
    state.degraded = true;
    state.cache.state = {
      bytes: 0,
      objects: 0,
      maxSize: undefined,
      writable: false,
      evictionBlocked: "pin file damaged",
    };
    state.fills.inFlight = 0;
    expect(lines(await metrics.render())).toEqual(
      expect.arrayContaining([
        'mirror_metadata_store_up{store="redis"} 0',
        "mirror_cache_size_bytes 0",
        "mirror_cache_writable 0",
        "mirror_eviction_blocked 1",
        "mirror_fills_in_flight 0",
      ]),
    );
    // The budget went away: so does its gauge (not a budget of 0).
    expect(lines(await metrics.render()).filter((l) => l.startsWith("mirror_cache_budget_bytes"))).toEqual([]);
  });

  it("exports no budget gauge for an unbounded cache, as docs/metrics.md says, and exports it once there is one", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    const state = live();
    state.cache.state = { ...state.cache.state, maxSize: undefined };
    metrics.showOnScrape(state);
    const text = await metrics.render();
    expect(text).not.toContain("mirror_cache_budget_bytes");
    expect(lines(text)).toContain("mirror_cache_size_bytes 1000");
    state.cache.state = { ...state.cache.state, maxSize: 7000 };
    expect(lines(await metrics.render())).toContain("mirror_cache_budget_bytes 7000");
    expect(lines(await metrics.render()).filter((l) => l.startsWith("mirror_cache_budget_bytes"))).toEqual([
      "mirror_cache_budget_bytes 7000",
    ]);
  });
});
