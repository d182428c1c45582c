/**
 * Metrics after a known sequence of pulls through a real upstream: cold, warm, coalesced and stale requests
 * produce exactly the counts and byte totals they should, and no label ever carries a repository or digest.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf, type Sample } from "./prometheus-text.ts";

let upstream: Registry;
let relay: Relay;
let mirror: TestMirror;

beforeAll(async () => {
  upstream = await startRegistry();
  relay = await startRelay(upstream.url);
  mirror = await startTestMirror({
    upstreams: { "docker.io": { url: relay.url, default: true, tagTtl: "2s", timeouts: { connect: "1s" } } },
  });
});
afterAll(async () => {
  await mirror?.stop();
  await relay?.stop();
  await upstream?.dispose();
});

/** Scrapes until the request counter has seen `requests` registry requests (access lines land on socket close). */
async function scrape(requests: number): Promise<Sample[]> {
  for (let i = 0; i < 50; i++) {
    const samples = parsePrometheusText((await fetchRaw(`${mirror.url}/metrics`)).body.toString());
    const seen =
      valueOf(samples, "mirror_requests_total", { kind: "manifest" }) +
      valueOf(samples, "mirror_requests_total", { kind: "blob" });
    if (seen >= requests) return samples;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`metrics never showed ${requests} requests`);
}

describe("metrics", () => {
  it("count a known sequence of cold, warm, coalesced and stale requests exactly", async () => {
    const small = randomLayer(300_000);
    const big = randomLayer(2 * 1024 * 1024);
    const image = buildImage({ format: "oci", layers: [small, big] });
    await pushImage(upstream.url, "team/metrics", "v1", image);
    const api = `${mirror.url}/v2/team/metrics`;

    const coldManifest = await fetchRaw(`${api}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } }); // miss
    const coldSmall = await fetchRaw(`${api}/blobs/${small.digest}`); // miss
    const warmSmall = await fetchRaw(`${api}/blobs/${small.digest}`); // hit
    const warmManifest = await fetchRaw(`${api}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } }); // hit
    relay.setFault({ kind: "throttle", bytesPerSecond: 4 * 1024 * 1024 });
    const concurrent = await Promise.all([0, 1, 2].map(() => fetchRaw(`${api}/blobs/${big.digest}`))); // 1 miss + 2 coalesced
    relay.setFault(null);
    expect([coldManifest, coldSmall, warmSmall, warmManifest].map((r) => r.headers["x-mirror-cache"])).toEqual([
      "miss",
      "miss",
      "hit",
      "hit",
    ]);
    expect(concurrent.map((r) => String(r.headers["x-mirror-cache"])).sort()).toEqual([
      "coalesced",
      "coalesced",
      "miss",
    ]);
    await new Promise((r) => setTimeout(r, 2_100)); // past the tag TTL
    await relay.stop(); // the upstream is now unreachable: the tag is served stale
    const stale = await fetchRaw(`${api}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
    expect(stale.headers["x-mirror-cache"]).toBe("stale");

    // Answers that are no content: a ping, a catalog, probes, an unknown path (the scrapes below are more).
    for (const path of ["/v2/", "/v2/_catalog", "/healthz", "/readyz", "/v2/nothing/here"])
      await fetchRaw(`${mirror.url}${path}`);

    const s = await scrape(8);
    const req = (kind: string, result: string) =>
      valueOf(s, "mirror_requests_total", { upstream: "docker.io", kind, result, status_class: "2xx" });
    expect(req("manifest", "miss")).toBe(1);
    expect(req("manifest", "hit")).toBe(1);
    expect(req("manifest", "stale")).toBe(1);
    expect(req("blob", "miss")).toBe(2);
    expect(req("blob", "hit")).toBe(1);
    expect(req("blob", "coalesced")).toBe(2);

    const m = image.manifest.length;
    const sent = (kind: string, source: string) =>
      valueOf(s, "mirror_sent_bytes_total", { upstream: "docker.io", kind, source });
    expect(sent("blob", "upstream")).toBe(small.bytes.length + big.bytes.length);
    expect(sent("blob", "cache")).toBe(small.bytes.length + 2 * big.bytes.length);
    expect(sent("manifest", "upstream")).toBe(m);
    expect(sent("manifest", "cache")).toBe(2 * m);
    // Those were sent too, but from neither the cache nor an upstream: not counted as sent bytes at all.
    expect(valueOf(s, "mirror_sent_bytes_total", { kind: "other" })).toBe(0);
    expect(valueOf(s, "mirror_sent_bytes_total")).toBe(2 * small.bytes.length + 3 * big.bytes.length + 3 * m);
    // Each byte came from the upstream exactly once.
    expect(valueOf(s, "mirror_upstream_fetched_bytes_total", { upstream: "docker.io", kind: "blob" })).toBe(
      small.bytes.length + big.bytes.length,
    );
    expect(valueOf(s, "mirror_upstream_fetched_bytes_total", { upstream: "docker.io", kind: "manifest" })).toBe(m);
    expect(valueOf(s, "mirror_fills_total", { upstream: "docker.io", result: "committed" })).toBe(2);
    expect(valueOf(s, "mirror_stale_served_total", { upstream: "docker.io" })).toBe(1);
    expect(valueOf(s, "mirror_fills_in_flight")).toBe(0);
    expect(
      valueOf(s, "mirror_upstream_requests_total", { upstream: "docker.io", method: "GET", status_class: "2xx" }),
    ).toBe(3); // manifest + 2 blobs
    expect(
      valueOf(s, "mirror_upstream_requests_total", { upstream: "docker.io", method: "HEAD", status_class: "2xx" }),
    ).toBe(1); // tag HEAD of the first pull
    expect(
      valueOf(s, "mirror_upstream_requests_total", { upstream: "docker.io", status_class: "error" }),
    ).toBeGreaterThanOrEqual(1);
    expect(valueOf(s, "mirror_request_duration_seconds_count", { kind: "blob" })).toBe(5);

    // No label value names a repository or a digest.
    for (const sample of s) {
      for (const value of Object.values(sample.labels)) {
        expect(value, `${sample.name} ${JSON.stringify(sample.labels)}`).not.toMatch(/team\/|sha256|library\//);
      }
    }
  });

  it("are served on their own listener with metrics.listen, and not on the registry port", async () => {
    const separate = await startTestMirror({
      upstreams: { "docker.io": { url: upstream.url, default: true } },
      extra: { metrics: { listen: "127.0.0.1:0" } },
    });
    try {
      const address = separate.mirror.metricsAddress;
      expect(address?.address).toBe("127.0.0.1");
      expect(address?.port).not.toBe(separate.port);
      const scraped = await fetchRaw(`http://127.0.0.1:${address!.port}/metrics`);
      expect(scraped.status).toBe(200);
      const samples = parsePrometheusText(scraped.body.toString());
      // Scrape-time gauges are set on this listener too.
      expect(valueOf(samples, "mirror_cache_writable")).toBe(1);
      expect(valueOf(samples, "mirror_upstream_up", { upstream: "docker.io" })).toBe(1);
      expect((await fetchRaw(`${separate.url}/metrics`)).status).toBe(404);
    } finally {
      await separate.stop();
    }
  });
});
