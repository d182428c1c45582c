/**
 * An upstream that fails in each way real ones do, through the harness relay: each case gives the documented
 * answer within the configured timeouts, and nothing partial is ever committed.
 */
import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { freePort, Teardown } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const teardown = new Teardown();
afterAll(() => teardown.run());

let registry: Registry;
let relay: Relay;
let mirror: TestMirror;
const layer = randomLayer(800_000);
const image = buildImage({ format: "oci", layers: [layer] });
const timeouts = { connect: "1s", headers: "1s", bodyIdle: "1s" };

beforeAll(async () => {
  registry = teardown.track(await startRegistry());
  await pushImage(registry.url, "team/faults", "v1", image);
  relay = teardown.track(await startRelay(registry.url));
  mirror = teardown.track(
    await startTestMirror({
      upstreams: {
        "docker.io": { url: relay.url, default: true, tagTtl: "1ms", timeouts, health: { failureThreshold: 100 } },
      },
    }),
  );
});

const manifest = (m: TestMirror, tag = "v1") =>
  fetchRaw(`${m.url}/v2/team/faults/manifests/${tag}`, { headers: { accept: ALL_MANIFEST_TYPES } });
const timed = async <T>(work: () => Promise<T>) => {
  const started = Date.now();
  const result = await work();
  return { result, ms: Date.now() - started };
};

describe("upstream faults", () => {
  it("connection refused: 503 UNAVAILABLE at once", async () => {
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: `http://127.0.0.1:${await freePort()}`, default: true, timeouts } },
      }),
    );
    const { result, ms } = await timed(() => manifest(m));
    expect(result.status).toBe(503);
    expect(errorCode(result)).toBe("UNAVAILABLE");
    expect(ms).toBeLessThan(3_000);
  });

  it("stall before headers: 503 within the headers timeout, nothing cached", async () => {
    relay.setFault({ kind: "stallHeaders", match: /blobs/ });
    try {
      const { result, ms } = await timed(() => fetchRaw(`${mirror.url}/v2/team/faults/blobs/${layer.digest}`));
      expect(result.status).toBe(503);
      expect(ms).toBeGreaterThanOrEqual(900);
      expect(ms).toBeLessThan(5_000);
      expect(await mirror.mirror.blobStore.size(layer.digest)).toBeUndefined();
    } finally {
      relay.setFault(null);
    }
  });

  it("stall mid-body: the transfer breaks within the body-idle timeout, nothing is committed", async () => {
    await manifest(mirror);
    relay.setFault({ kind: "stallBody", afterBytes: 100_000, match: /blobs/ });
    try {
      const { result, ms } = await timed(() => fetchRaw(`${mirror.url}/v2/team/faults/blobs/${layer.digest}`));
      expect(result.broken ?? result.status >= 500).toBeTruthy();
      expect(ms).toBeLessThan(5_000);
      await new Promise((r) => setTimeout(r, 100));
      expect(await mirror.mirror.blobStore.size(layer.digest)).toBeUndefined();
      expect(await mirror.mirror.blobStore.tempFiles()).toEqual([]);
    } finally {
      relay.setFault(null);
    }
    const good = await fetchRaw(`${mirror.url}/v2/team/faults/blobs/${layer.digest}`);
    expect(sha256(good.body)).toBe(layer.digest);
  });

  it("500: 502 UPSTREAM_ERROR for what is not cached", async () => {
    relay.setFault({ kind: "status", status: 500, match: /manifests\/never-cached/ });
    try {
      const res = await manifest(mirror, "never-cached");
      expect(res.status).toBe(502);
      expect(errorCode(res)).toBe("UPSTREAM_ERROR");
    } finally {
      relay.setFault(null);
    }
  });

  it("429 without cached content: TOOMANYREQUESTS with the upstream's Retry-After", async () => {
    relay.setFault({ kind: "status", status: 429, headers: { "Retry-After": "7" }, match: /manifests\/uncached/ });
    try {
      const res = await manifest(mirror, "uncached");
      expect(res.status).toBe(429);
      expect(errorCode(res)).toBe("TOOMANYREQUESTS");
      expect(res.headers["retry-after"]).toBe("7");
    } finally {
      relay.setFault(null);
    }
  });

  it("503 without cached content: 503 UNAVAILABLE with the upstream's Retry-After, for a manifest and a blob", async () => {
    relay.setFault({ kind: "status", status: 503, headers: { "Retry-After": "30" }, match: /manifests\/uncached/ });
    try {
      const res = await manifest(mirror, "uncached");
      expect(res.status).toBe(503);
      expect(errorCode(res)).toBe("UNAVAILABLE");
      expect(res.headers["retry-after"]).toBe("30");
    } finally {
      relay.setFault(null);
    }
    const blob = randomLayer(4096);
    await pushImage(registry.url, "team/faults", "unavailable", buildImage({ format: "oci", layers: [blob] }));
    relay.setFault({ kind: "status", status: 503, match: /blobs\// });
    try {
      const res = await fetchRaw(`${mirror.url}/v2/team/faults/blobs/${blob.digest}`);
      expect(res.status).toBe(503);
      expect(errorCode(res)).toBe("UNAVAILABLE");
      expect(res.headers["retry-after"]).toBeUndefined(); // none sent, none made up
      expect(await mirror.mirror.blobStore.size(blob.digest)).toBeUndefined();
    } finally {
      relay.setFault(null);
    }
  });

  it("429 with cached content: the cached tag is served, marked stale", async () => {
    expect((await manifest(mirror)).status).toBe(200);
    relay.setFault({ kind: "status", status: 429, headers: { "Retry-After": "7" } });
    try {
      const res = await manifest(mirror);
      expect(res.status).toBe(200);
      expect(res.body.equals(image.manifest)).toBe(true);
      expect(res.headers["x-mirror-cache"]).toBe("stale");
    } finally {
      relay.setFault(null);
    }
  });

  it("retries a request whose connection was reset before any response", async () => {
    relay.requests.length = 0;
    relay.setFault({ kind: "reset", match: /^HEAD .*manifests\/v1/, times: 1 });
    try {
      const res = await manifest(mirror);
      expect(res.status).toBe(200);
      expect(res.headers["x-mirror-cache"]).not.toBe("stale");
      expect(relay.requests.filter((r) => r.method === "HEAD" && r.path.includes("manifests/v1"))).toHaveLength(2);
    } finally {
      relay.setFault(null);
    }
  });

  it("an answer trickling in under the idle timeout: 503 at timeouts.total, for manifests, error bodies and tag lists", async () => {
    const r = teardown.track(await startRelay(registry.url));
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: r.url,
            default: true,
            timeouts: { ...timeouts, total: "2s" },
            health: { failureThreshold: 100 },
          },
        },
      }),
    );
    // Two bytes a second: never a second's pause (bodyIdle), and never done (a manifest alone would take minutes).
    r.setFault({ kind: "throttle", bytesPerSecond: 2, match: /manifests|tags/ });
    const answers = {
      manifest: await manifest(m),
      "error body": await fetchRaw(`${m.url}/v2/team/never-pushed/tags/list`), // the registry's 404 error body, trickled
      "tag list": await fetchRaw(`${m.url}/v2/team/faults/tags/list`),
    };
    for (const [what, res] of Object.entries(answers)) {
      expect(res.status, `${what}: ${res.body.toString()}`).toBe(503);
      expect(errorCode(res)).toBe("UNAVAILABLE");
      expect(res.body.toString()).toContain("upstream docker.io did not finish answering within 2 s (timeouts.total)");
    }
    expect(r.requests.filter((q) => q.fault === "throttle" && q.method === "GET").map((q) => q.status)).toEqual([
      200, 404, 200,
    ]);
  });

  it("marks a failing upstream down and then answers from cache at once, without waiting on it", async () => {
    const r = teardown.track(await startRelay(registry.url));
    const m = teardown.track(
      await startTestMirror({
        upstreams: {
          "docker.io": {
            url: r.url,
            default: true,
            tagTtl: "1ms",
            timeouts,
            health: { failureThreshold: 2, initialBackoff: "30s" },
          },
        },
      }),
    );
    expect((await manifest(m)).status).toBe(200);
    r.setFault({ kind: "stallHeaders" });
    for (let i = 0; i < 2; i++) expect((await manifest(m)).headers["x-mirror-cache"]).toBe("stale"); // each waits the 1 s timeout
    r.requests.length = 0;
    const { result, ms } = await timed(() => manifest(m));
    expect(result.status).toBe(200);
    expect(result.headers["x-mirror-cache"]).toBe("stale");
    expect(ms).toBeLessThan(300);
    expect(r.requests).toHaveLength(0);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/mirror_upstream_up\{upstream="docker.io"\} 0/);
  });
});
