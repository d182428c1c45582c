import { describe, expect, it } from "vitest";
import { UpstreamHealth } from "../../../src/upstream/upstream-health.ts";

function health() {
  let now = 1_000_000;
  const h = new UpstreamHealth({ failureThreshold: 3, initialBackoffMs: 1_000, maxBackoffMs: 4_000, now: () => now });
  return { h, advance: (ms: number) => (now += ms) };
}

describe("UpstreamHealth", () => {
  it("remembers the last failure, when and what, also after a success", () => {
    const { h, advance } = health();
    expect(h.lastError).toBeUndefined();
    h.failure("upstream u is unavailable (ECONNREFUSED)");
    advance(500);
    h.failure("GET answered 503");
    h.success();
    expect(h.lastError).toEqual({ at: 1_000_500, message: "GET answered 503" });
  });
  it("stays up below the threshold, and a success resets the count", () => {
    const { h } = health();
    h.failure();
    h.failure();
    h.success();
    h.failure();
    h.failure();
    expect(h.state).toBe("up");
    expect(h.allow()).toBe(true);
  });
  it("goes down at the threshold and refuses requests until the back-off has passed", () => {
    const { h, advance } = health();
    for (let i = 0; i < 3; i++) h.failure();
    expect(h.state).toBe("down");
    expect(h.allow()).toBe(false);
    expect(h.retryInMs()).toBe(1_000);
    advance(999);
    expect(h.allow()).toBe(false);
    advance(1);
    expect(h.allow()).toBe(true); // the probe
    expect(h.allow()).toBe(false); // only one at a time
  });
  it("doubles the back-off after each failed probe, up to the maximum, and recovers on success", () => {
    const { h, advance } = health();
    for (let i = 0; i < 3; i++) h.failure();
    const periods: number[] = [];
    for (let i = 0; i < 4; i++) {
      advance(h.retryInMs());
      expect(h.allow()).toBe(true);
      h.failure();
      periods.push(h.retryInMs());
    }
    expect(periods).toEqual([2_000, 4_000, 4_000, 4_000]);
    advance(h.retryInMs());
    expect(h.allow()).toBe(true);
    h.success();
    expect(h.state).toBe("up");
    expect(h.allow()).toBe(true);
    for (let i = 0; i < 3; i++) h.failure();
    expect(h.retryInMs()).toBe(1_000); // back to the initial period
  });
});
