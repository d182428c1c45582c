/**
 * Ordered fallbacks against real registries: a primary upstream that is stopped, or behind the fault relay
 * answering 429, has its requests answered by its fallback (another registry holding the same `library/`
 * names), digest-verified and marked with `X-Mirror-Source`; a fallback is not asked for a repository its own
 * rules exclude, nor when the primary's answer is not an outage (a 404); and a fallback's bad bytes are refused
 * like anyone's.
 */
import { createHash } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, busyboxLayer, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror, type TestMirror } from "../harness/mirror.ts";
import { startRelay, type Relay } from "../harness/relay.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { runCommand, Teardown } from "../harness/processes.ts";
import { ALL_MANIFEST_TYPES, errorCode, fetchRaw } from "./client.ts";
import { parsePrometheusText, valueOf } from "./prometheus-text.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const teardown = new Teardown();
afterAll(() => teardown.run());
let primary: Registry;
let primaryRelay: Relay;
let fallback: Registry;
let fallbackRelay: Relay;
let mirror: TestMirror;
const images = new Map<string, BuiltImage>();

const busybox = (label: string) =>
  buildImage({ format: "oci", layers: [busyboxLayer("oci")], cmd: ["/bin/sh"], labels: { label } });

beforeAll(async () => {
  primary = teardown.track(await startRegistry());
  primaryRelay = teardown.track(await startRelay(primary.url));
  fallback = teardown.track(await startRegistry());
  fallbackRelay = teardown.track(await startRelay(fallback.url));
  for (const [repo, tag, image] of [
    ["library/busybox", "stopped", busybox("stopped")],
    ["library/busybox", "limited", busybox("limited")],
    ["library/secret", "1", busybox("secret")],
    ["library/onlyhere", "1", busybox("onlyhere")],
    ["library/corrupt", "1", buildImage({ format: "oci", layers: [randomLayer(64_000)] })],
  ] as const) {
    await pushImage(fallback.url, repo, tag, image);
    images.set(`${repo}:${tag}`, image);
  }
  // The primary holds the tags the fallback is asked for too; it just cannot answer for them.
  await pushImage(primary.url, "library/busybox", "stopped", images.get("library/busybox:stopped")!);
  await pushImage(primary.url, "library/busybox", "limited", images.get("library/busybox:limited")!);
  mirror = teardown.track(
    await startTestMirror({
      upstreams: {
        // The primary, reached directly (stopped in the last test), as Docker Hub: `busybox` is `library/busybox`.
        "docker.io": {
          url: primary.url,
          default: true,
          libraryPrefix: "library",
          retries: 0,
          fallbacks: ["mirror.gcr.io"],
        },
        // The same registry behind the fault relay (429s).
        "hub.example": { url: primaryRelay.url, libraryPrefix: "library", retries: 0, fallbacks: ["mirror.gcr.io"] },
        // The fallback: no library prefix of its own, the same `library/…` names; one repository excluded.
        "mirror.gcr.io": { url: fallbackRelay.url, repositories: { deny: ["library/secret"] } },
      },
    }),
  );
});

const manifest = (path: string) => fetchRaw(`${mirror.url}/v2/${path}`, { headers: { accept: ALL_MANIFEST_TYPES } });

async function fallbacksCounted(labels: Record<string, string>): Promise<number> {
  const text = (await fetchRaw(`${mirror.url}/metrics`)).body.toString("utf8");
  return valueOf(parsePrometheusText(text), "mirror_upstream_fallbacks_total", labels);
}

describe("ordered fallbacks", () => {
  it("answer a rate-limited (429) upstream's tag and blobs from the fallback, verified and marked", async () => {
    primaryRelay.setFault({ kind: "status", status: 429, headers: { "Retry-After": "30" } });
    const image = images.get("library/busybox:limited")!;
    const res = await manifest("hub.example/busybox/manifests/limited");
    expect(res.status, res.body.toString()).toBe(200);
    expect(res.headers["x-mirror-source"]).toBe("mirror.gcr.io");
    expect(res.headers["docker-content-digest"]).toBe(image.digest);
    expect(sha256(res.body)).toBe(image.digest);
    for (const blob of image.blobs()) {
      const b = await fetchRaw(`${mirror.url}/v2/hub.example/busybox/blobs/${blob.digest}`);
      expect(b.status).toBe(200);
      expect(b.broken).toBeUndefined();
      expect(b.headers["x-mirror-source"]).toBe("mirror.gcr.io");
      expect(sha256(b.body)).toBe(blob.digest);
    }
    expect(await fallbacksCounted({ upstream: "hub.example", fallback: "mirror.gcr.io", reason: "ratelimited" })).toBe(
      1 + image.blobs().length,
    );
    // The primary was asked first, every time.
    expect(primaryRelay.requests.filter((r) => r.status === 429).length).toBeGreaterThanOrEqual(3);
    await fallback.sync();
    expect(fallback.count({ repo: "library/busybox", method: "GET" })).toBeGreaterThanOrEqual(3);
  });

  it("never ask a fallback for a repository its own rules exclude: the primary's error is the answer", async () => {
    primaryRelay.setFault({ kind: "status", status: 429 });
    fallback.clearRequests();
    const res = await manifest("hub.example/secret/manifests/1");
    expect(res.status).toBe(429);
    expect(errorCode(res)).toBe("TOOMANYREQUESTS");
    expect(res.headers["x-mirror-source"]).toBeUndefined();
    await fallback.sync();
    expect(fallback.count({ repo: "library/secret" })).toBe(0);
  });

  it("ask no fallback when the primary answers, even with a 404", async () => {
    primaryRelay.setFault(null);
    fallback.clearRequests();
    const res = await manifest("hub.example/onlyhere/manifests/1");
    expect(res.status).toBe(404);
    expect(errorCode(res)).toBe("MANIFEST_UNKNOWN");
    await fallback.sync();
    expect(fallback.count({ repo: "library/onlyhere" })).toBe(0);
  });

  it("refuse a fallback's bytes that do not match their digest, as anyone's", async () => {
    primaryRelay.setFault({ kind: "status", status: 429 });
    fallbackRelay.setFault({ kind: "corrupt" });
    const image = images.get("library/corrupt:1")!;
    const res = await manifest("hub.example/corrupt/manifests/1");
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(image.digest);
    const layer = image.layers[0]!;
    const b = await fetchRaw(`${mirror.url}/v2/hub.example/corrupt/blobs/${layer.digest}`);
    // Headers may already be out when the mismatch is found: then the transfer breaks; either way no bad bytes.
    expect(b.status !== 200 || b.broken !== undefined).toBe(true);
    expect(await mirror.mirror.blobStore.size(layer.digest)).toBeUndefined();
    fallbackRelay.setFault(null);
    primaryRelay.setFault(null);
  });

  it("answer an unavailable (503) upstream from the fallback, as down; a 500 is the upstream's answer", async () => {
    const unavailable = busybox("unavailable");
    const broken = busybox("broken");
    for (const url of [primary.url, fallback.url]) {
      await pushImage(url, "library/busybox", "unavailable", unavailable);
      await pushImage(url, "library/busybox", "broken", broken);
    }
    const down = () => fallbacksCounted({ upstream: "hub.example", fallback: "mirror.gcr.io", reason: "down" });
    const before = await down();
    primaryRelay.setFault({ kind: "status", status: 503, headers: { "Retry-After": "60" } });
    try {
      const res = await manifest("hub.example/busybox/manifests/unavailable");
      expect(res.status, res.body.toString()).toBe(200);
      expect(res.headers["x-mirror-source"]).toBe("mirror.gcr.io");
      expect(sha256(res.body)).toBe(unavailable.digest);
      expect(await down()).toBe(before + 1);
      primaryRelay.setFault({ kind: "status", status: 500 });
      await fallback.sync(); // the fallback's own log of the pull above is in before it is cleared
      fallback.clearRequests();
      const failed = await manifest("hub.example/busybox/manifests/broken");
      expect(failed.status).toBe(502);
      expect(errorCode(failed)).toBe("UPSTREAM_ERROR");
      expect(failed.headers["x-mirror-source"]).toBeUndefined();
      await fallback.sync();
      expect(fallback.count({ repo: "library/busybox", method: "GET" })).toBe(0);
    } finally {
      primaryRelay.setFault(null);
    }
  });

  it("serve library/busybox from the fallback while the primary is stopped, digest verified", async () => {
    await primary.stop();
    const image = images.get("library/busybox:stopped")!;
    const res = await manifest("busybox/manifests/stopped");
    expect(res.status, res.body.toString()).toBe(200);
    expect(res.headers["x-mirror-source"]).toBe("mirror.gcr.io");
    expect(res.headers["docker-content-digest"]).toBe(image.digest);
    expect(sha256(res.body)).toBe(image.digest);
    // By digest too, and each blob (the busybox layer is already cached from the 429 test: served from the cache).
    const byDigest = await manifest(`library/busybox/manifests/${image.digest}`);
    expect(byDigest.status).toBe(200);
    expect(sha256(byDigest.body)).toBe(image.digest);
    for (const blob of image.blobs()) {
      const b = await fetchRaw(`${mirror.url}/v2/busybox/blobs/${blob.digest}`);
      expect(b.status).toBe(200);
      expect(b.broken).toBeUndefined();
      expect(sha256(b.body)).toBe(blob.digest);
    }
    expect(await fallbacksCounted({ upstream: "docker.io", fallback: "mirror.gcr.io", reason: "down" })).toBe(
      2 + image.blobs().length,
    );
  });

  it("refuse to start (the mirror process, exit 2) on a bad fallback or warm-up list, listing every problem", async () => {
    const dir = await mkdtemp(join(tmpdir(), "fallback-config-"));
    try {
      await writeFile(
        join(dir, "mirror.yaml"),
        [
          `storage: { path: ${join(dir, "data")} }`,
          "listen: 127.0.0.1:0",
          "upstreams:",
          `  docker.io: { url: ${primary.url}, default: true, fallbacks: [mirror.gcr.io, nosuch, docker.io] }`,
          `  mirror.gcr.io: { url: ${fallback.url}, fallbacks: [docker.io] }`,
          "warmup:",
          '  - { name: base, images: ["library/busybox:stopped", "Not A Reference"] }',
          "",
        ].join("\n"),
      );
      const res = await runCommand(process.execPath, [resolve("src/main.ts"), "--config", join(dir, "mirror.yaml")], {
        timeoutMs: 30_000,
      });
      expect(res.code, res.stderr).toBe(2);
      expect(res.stderr).toContain("upstreams.docker.io.fallbacks.1: nosuch names no configured upstream");
      expect(res.stderr).toContain("upstreams.docker.io.fallbacks.2: docker.io is this upstream itself");
      expect(res.stderr).toContain("upstreams.docker.io.fallbacks: docker.io → mirror.gcr.io → docker.io form a cycle");
      expect(res.stderr).toMatch(/warmup\.0 \(base\): images\[1\]: "Not A Reference"/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
