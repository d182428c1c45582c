/**
 * Which failures of the request's upstream let a fallback answer, and in which order fallbacks are asked, with
 * stand-in upstream clients (the real path runs in integration/upstream-fallback.test.ts).
 */
import { describe, expect, it } from "vitest";
import { Registry } from "prom-client";
import { RegistryError } from "../../../src/oci/errors.ts";
import { Metrics } from "../../../src/observability/metrics.ts";
import { fallbackReason, UpstreamFallbacks } from "../../../src/registry/upstream-fallback.ts";
import type { UpstreamClient } from "../../../src/upstream/upstream-client.ts";

const up = (name: string, config: { fallbacks?: string[]; libraryPrefix?: string | null; offline?: boolean } = {}) =>
  ({ name, config: { fallbacks: [], libraryPrefix: null, offline: false, ...config } }) as unknown as UpstreamClient;

describe("fallbackReason", () => {
  it("is down, ratelimited or timeout for the upstream's own outage, and nothing else", () => {
    const err = (code: ConstructorParameters<typeof RegistryError>[0], detail: object) =>
      new RegistryError(code, "x", { detail });
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "a", code: "ECONNREFUSED" }), "a")).toBe("down");
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "a" }), "a")).toBe("down"); // marked down by health
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "a", code: "UND_ERR_HEADERS_TIMEOUT" }), "a")).toBe("timeout");
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "a", timeout: "total" }), "a")).toBe("timeout");
    expect(fallbackReason(err("TOOMANYREQUESTS", { upstream: "a", status: 429 }), "a")).toBe("ratelimited");
    // The mirror's own 429 (queues full), an offline upstream, another upstream's failure, a 404, a 5xx: no.
    expect(fallbackReason(new RegistryError("TOOMANYREQUESTS", "queue full"), "a")).toBeUndefined();
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "a", offline: true }), "a")).toBeUndefined();
    expect(fallbackReason(err("UNAVAILABLE", { upstream: "b" }), "a")).toBeUndefined();
    expect(fallbackReason(err("MANIFEST_UNKNOWN", { upstream: "a", status: 404 }), "a")).toBeUndefined();
    expect(fallbackReason(err("UPSTREAM_ERROR", { upstream: "a", status: 500 }), "a")).toBeUndefined();
    expect(fallbackReason(new Error("boom"), "a")).toBeUndefined();
  });
});

describe("UpstreamFallbacks", () => {
  const primary = up("docker.io", { fallbacks: ["offline", "denies", "empty", "good"], libraryPrefix: "library" });
  const all = [
    primary,
    up("offline", { offline: true }),
    up("denies"),
    up("empty"),
    up("good", { libraryPrefix: "library" }),
  ];
  const down = new RegistryError("UNAVAILABLE", "down", { detail: { upstream: "docker.io", code: "ECONNREFUSED" } });

  it("asks the fallbacks in order, skipping offline and excluding ones, and counts the one that answered", async () => {
    const metrics = new Metrics(new Registry(), { processMetrics: false });
    const fallbacks = new UpstreamFallbacks({
      upstreams: all,
      permits: (upstream) => upstream !== "denies",
      metrics,
    });
    const asked: string[] = [];
    const answer = await fallbacks.run({ upstream: primary, repo: "library/busybox" }, async (t) => {
      asked.push(`${t.upstream.name}/${t.repo}`);
      if (t.upstream.name === "docker.io") throw down;
      if (t.upstream.name === "empty") throw new RegistryError("MANIFEST_UNKNOWN", "no");
      return "bytes";
    });
    expect(answer).toEqual({ value: "bytes", source: "good" });
    expect(asked).toEqual(["docker.io/library/busybox", "empty/library/busybox", "good/library/busybox"]);
    expect((await metrics.upstreamFallbacks.get()).values.map((v) => [v.labels, v.value])).toEqual([
      [{ upstream: "docker.io", fallback: "good", reason: "down" }, 1],
    ]);
  });

  it("answers with the primary's error when no fallback can, and asks none for a non-outage", async () => {
    const fallbacks = new UpstreamFallbacks({ upstreams: all, permits: () => true });
    await expect(
      fallbacks.run({ upstream: primary, repo: "library/x" }, async () => {
        throw down;
      }),
    ).rejects.toBe(down);
    let calls = 0;
    const notFound = new RegistryError("MANIFEST_UNKNOWN", "no", { detail: { upstream: "docker.io", status: 404 } });
    await expect(
      fallbacks.run({ upstream: primary, repo: "library/x" }, async () => {
        calls++;
        throw notFound;
      }),
    ).rejects.toBe(notFound);
    expect(calls).toBe(1);
  });

  it("gives a single-component name the fallback's library prefix", async () => {
    const plain = up("plain", { fallbacks: ["hub"] });
    const fallbacks = new UpstreamFallbacks({
      upstreams: [plain, up("hub", { libraryPrefix: "library" })],
      permits: () => true,
    });
    const asked: string[] = [];
    await fallbacks.run({ upstream: plain, repo: "busybox" }, async (t) => {
      asked.push(`${t.upstream.name}/${t.repo}`);
      if (t.upstream.name === "plain")
        throw new RegistryError("UNAVAILABLE", "down", { detail: { upstream: "plain" } });
      return 1;
    });
    expect(asked).toEqual(["plain/busybox", "hub/library/busybox"]);
  });
});
