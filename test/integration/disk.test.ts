/**
 * The disk budget against real pulls: eviction keeps the cache within budget in LRU order, pinned content
 * survives (also when Redis loses its tag pointer), parallel downloads and downloads of unknown size stay
 * within the budget, a mirror process killed with SIGKILL mid-download leaves nothing servable that is partial,
 * and a genuinely full filesystem (a small tmpfs) keeps pulls working.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, pushImage, randomLayer, type BuiltImage } from "../harness/image-builder.ts";
import { startTestMirror } from "../harness/mirror.ts";
import { freePort, runCommand, startProcess, Teardown, waitFor } from "../harness/processes.ts";
import { startRedis } from "../harness/redis.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { startRelay } from "../harness/relay.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";

const sha256 = (b: Buffer) => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
});

async function pull(url: string, repo: string, image: BuiltImage): Promise<void> {
  const m = await fetchRaw(`${url}/v2/${repo}/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
  expect(m.status).toBe(200);
  for (const blob of image.blobs()) {
    const res = await fetchRaw(`${url}/v2/${repo}/blobs/${blob.digest}`);
    expect(res.status).toBe(200);
    expect(sha256(res.body)).toBe(blob.digest);
  }
}

describe("disk budget", () => {
  it("evicts least recently used content, keeps pinned content, and stays under the high watermark", async () => {
    const images: BuiltImage[] = [];
    for (let i = 0; i < 6; i++) {
      images.push(buildImage({ format: "oci", layers: [randomLayer(400_000)], labels: { i: String(i) } }));
      await pushImage(upstream.url, `team/budget${i}`, "v1", images[i]!);
    }
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        extra: {
          storage: { maxSize: 1_300_000, highWatermark: 0.9, lowWatermark: 0.7, pinned: ["docker.io/team/budget0:v1"] },
        },
      }),
    );
    for (let i = 0; i < 6; i++) await pull(m.url, `team/budget${i}`, images[i]!);
    await pull(m.url, "team/budget1", images[1]!); // image 1 becomes the most recently used
    await new Promise((r) => setTimeout(r, 200)); // the janitor runs after each commit
    const store = m.mirror.blobStore;
    const has = (i: number) => store.index.has(images[i]!.layers[0]!.digest);
    expect(store.index.bytes).toBeLessThanOrEqual(1_300_000 * 0.9);
    expect(has(0)).toBe(true); // pinned, though the oldest
    expect(has(1)).toBe(true); // most recently used
    // Least recently used goes first: among images 2..5, an evicted one is never newer than a kept one.
    const kept = [2, 3, 4, 5].map(has);
    expect(kept.includes(false)).toBe(true);
    expect(kept.indexOf(true) === -1 || kept.slice(kept.indexOf(true)).every(Boolean)).toBe(true);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/mirror_evictions_total\{reason="budget"\} [1-9]/);
    expect(metrics).not.toMatch(/mirror_evictions_total\{reason="idle"\}/);
    expect(metrics).toMatch(/mirror_cache_budget_bytes 1300000/);
    // Evicted content is fetched again on demand.
    await pull(m.url, "team/budget2", images[2]!);
  });

  it("parallel misses never take the cache (committed plus in-flight bytes) over its budget", async () => {
    const relay = teardown.track(await startRelay(upstream.url));
    const images = Array.from({ length: 4 }, (_, i) =>
      buildImage({ format: "oci", layers: [randomLayer(300_000)], labels: { parallel: String(i) } }),
    );
    for (const [i, image] of images.entries()) await pushImage(upstream.url, `team/parallel${i}`, "v1", image);
    const budget = 1_000_000;
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: relay.url, default: true } },
        extra: { storage: { maxSize: budget, highWatermark: 0.9, lowWatermark: 0.5 } },
      }),
    );
    // Committed plus temp bytes, from one instant: a blob committed (renamed out of tmp/) while the temp files are
    // summed would count twice, so a sum during which the index changed is taken again.
    const onDisk = async () => {
      for (;;) {
        const committed = m.mirror.blobStore.index.bytes;
        let temp = 0;
        for (const name of await readdir(join(m.dataDir, "tmp")))
          temp += (await stat(join(m.dataDir, "tmp", name)).catch(() => ({ size: 0 }))).size;
        if (m.mirror.blobStore.index.bytes === committed) return committed + temp;
      }
    };
    for (const [i, image] of images.entries()) {
      const res = await fetchRaw(`${m.url}/v2/team/parallel${i}/manifests/v1`, {
        headers: { accept: ALL_MANIFEST_TYPES },
      });
      expect(res.status).toBe(200);
      await fetchRaw(`${m.url}/v2/team/parallel${i}/blobs/${image.config.digest}`);
    }
    relay.setFault({ kind: "throttle", bytesPerSecond: 600_000 }); // the four downloads overlap for about half a second
    let pulling = true;
    const pulls = Promise.all(
      images.map((image, i) => fetchRaw(`${m.url}/v2/team/parallel${i}/blobs/${image.layers[0]!.digest}`)),
    ).finally(() => (pulling = false));
    let peak = 0;
    for (let n = 0; pulling && n < 500; n++) {
      peak = Math.max(peak, await onDisk());
      await new Promise((r) => setTimeout(r, 10));
    }
    const answers = await pulls;
    for (const [i, res] of answers.entries()) {
      expect(res.status).toBe(200);
      expect(sha256(res.body)).toBe(images[i]!.layers[0]!.digest);
    }
    expect(peak).toBeGreaterThan(0);
    expect(peak).toBeLessThanOrEqual(budget);
    // 1200 KB asked for against 1000 KB: what did not fit went to its client uncached.
    expect(answers.some((res) => res.headers["x-mirror-cache"] === "uncached")).toBe(true);
  });

  it("serves a blob of unknown size that outgrows the budget verified, and stores none of it", async () => {
    const relay = teardown.track(await startRelay(upstream.url));
    const big = randomLayer(3 * 1024 * 1024);
    const image = buildImage({ format: "oci", layers: [big] });
    await pushImage(upstream.url, "team/nolength", "v1", image);
    relay.setFault({ kind: "noLength" }); // every blob comes without Content-Length
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: relay.url, default: true } },
        extra: { storage: { maxSize: 1_000_000 } },
      }),
    );
    await pull(m.url, "team/nolength", image); // every blob arrives whole and verified
    expect(relay.requests.some((r) => r.fault === "noLength")).toBe(true);
    const store = m.mirror.blobStore;
    expect(store.index.has(big.digest)).toBe(false);
    expect(store.index.has(image.config.digest)).toBe(true); // small enough: cached, size unknown or not
    expect(store.index.bytes).toBeLessThanOrEqual(1_000_000);
    expect(await store.tempFiles()).toEqual([]);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/mirror_fills_total\{upstream="docker.io",result="uncached"\} 1/);
  });

  it("keeps pinned content when Redis restarts empty and the mirror restarts over budget", async () => {
    const redis = teardown.track(await startRedis());
    const pinned = buildImage({ format: "oci", layers: [randomLayer(500_000)], labels: { pinned: "yes" } });
    const others = [0, 1].map((i) =>
      buildImage({ format: "oci", layers: [randomLayer(300_000)], labels: { other: String(i) } }),
    );
    await pushImage(upstream.url, "team/pinned", "v1", pinned);
    for (const [i, image] of others.entries()) await pushImage(upstream.url, `team/other${i}`, "v1", image);
    const dataDir = await mkdtemp(join(tmpdir(), "pins-redis-"));
    teardown.add("pins data dir", () => rm(dataDir, { recursive: true, force: true }));
    const config = (storage: Record<string, unknown>) => ({
      upstreams: { "docker.io": { url: upstream.url, default: true } },
      dataDir,
      extra: {
        redis: { url: redis.url, keyPrefix: "pins-test:" },
        storage: { pinned: ["docker.io/team/pinned:v1"], checkInterval: "1s", ...storage },
      },
    });
    const first = await startTestMirror(config({}));
    await pull(first.url, "team/pinned", pinned); // oldest of all: the first to go, were it not pinned
    for (const [i, image] of others.entries()) await pull(first.url, `team/other${i}`, image);
    // The running mirror records what the pin resolves to (at every check).
    await waitFor(async () => (await readFile(join(dataDir, "config-pins.json"), "utf8")).includes(pinned.digest), {
      timeoutMs: 10_000,
      what: "the pin's digest in config-pins.json",
    });
    await first.stop();
    await redis.stop();
    await redis.start(); // empty: the tag pointer is gone
    const second = teardown.track(
      await startTestMirror(config({ maxSize: 1_000_000, highWatermark: 0.9, lowWatermark: 0.5 })),
    );
    const store = second.mirror.blobStore; // the start-up check has evicted down to the low mark
    expect(store.index.bytes).toBeLessThanOrEqual(1_000_000 * 0.9);
    expect(store.index.has(pinned.layers[0]!.digest)).toBe(true);
    expect(store.index.has(pinned.config.digest)).toBe(true);
    expect(store.index.has(pinned.digest)).toBe(true);
    expect(others.some((image) => !store.index.has(image.layers[0]!.digest))).toBe(true);
  });

  it("fetches again from the upstream a pin whose pointer was lost before anything recorded it, and keeps its content", async () => {
    const redis = teardown.track(await startRedis());
    const relay = teardown.track(await startRelay(upstream.url));
    const pinned = buildImage({ format: "oci", layers: [randomLayer(500_000)], labels: { resolved: "yes" } });
    const others = [0, 1].map((i) =>
      buildImage({ format: "oci", layers: [randomLayer(300_000)], labels: { unrecorded: String(i) } }),
    );
    await pushImage(upstream.url, "team/unrecorded", "v1", pinned);
    for (const [i, image] of others.entries()) await pushImage(upstream.url, `team/unrecorded${i}`, "v1", image);
    const dataDir = await mkdtemp(join(tmpdir(), "pins-unrecorded-"));
    teardown.add("unrecorded pins data dir", () => rm(dataDir, { recursive: true, force: true }));
    const config = (storage: Record<string, unknown>) => ({
      upstreams: { "docker.io": { url: relay.url, default: true } },
      dataDir,
      extra: { redis: { url: redis.url, keyPrefix: "unrecorded-test:" }, storage: { checkInterval: "1s", ...storage } },
    });
    // A mirror that recorded no pins (a version before config-pins.json, or the pin not configured yet).
    const first = await startTestMirror(config({}));
    await pull(first.url, "team/unrecorded", pinned); // oldest of all: the first to go, were it not pinned
    for (const [i, image] of others.entries()) await pull(first.url, `team/unrecorded${i}`, image);
    await first.stop();
    // The pointer is gone everywhere, and nothing says what the pin resolved to: Redis restarted empty, and this
    // node's journal does not have it either (another replica pulled the tag, or the journal's bound dropped it).
    await redis.stop();
    await redis.start();
    await rm(join(dataDir, "metadata"), { recursive: true, force: true });
    relay.requests.length = 0;
    const second = teardown.track(
      await startTestMirror(
        config({ pinned: ["docker.io/team/unrecorded:v1"], maxSize: 1_000_000, highWatermark: 0.9, lowWatermark: 0.5 }),
      ),
    );
    const store = second.mirror.blobStore;
    // The periodic check asks the upstream what the tag is, records it, and eviction goes on around it.
    await waitFor(
      async () => (await readFile(join(dataDir, "config-pins.json"), "utf8").catch(() => "")).includes(pinned.digest),
      { timeoutMs: 10_000, what: "the pin's digest in config-pins.json" },
    );
    expect(relay.requests.some((r) => /^\/v2\/team\/unrecorded\/manifests\/v1\b/.test(r.path))).toBe(true);
    await waitFor(async () => store.index.bytes <= 1_000_000 * 0.9, {
      timeoutMs: 10_000,
      what: "eviction down to the budget",
    });
    expect(store.index.has(pinned.layers[0]!.digest)).toBe(true);
    expect(store.index.has(pinned.config.digest)).toBe(true);
    expect(store.index.has(pinned.digest)).toBe(true);
    expect(others.some((image) => !store.index.has(image.layers[0]!.digest))).toBe(true);
    const ready = await fetchRaw(`${second.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body.toString())).toMatchObject({ status: "ready" });
  });

  it("a pinned tag the upstream does not have stops eviction, and says so, while the mirror stays ready", async () => {
    const images = [0, 1, 2].map((i) =>
      buildImage({ format: "oci", layers: [randomLayer(400_000)], labels: { typo: String(i) } }),
    );
    for (const [i, image] of images.entries()) await pushImage(upstream.url, `team/typo${i}`, "v1", image);
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        extra: {
          storage: {
            pinned: ["docker.io/team/no-such-repo:v1"],
            checkInterval: "1s",
            maxSize: 1_000_000,
            highWatermark: 0.9,
            lowWatermark: 0.5,
          },
        },
      }),
    );
    const reasons = async () => {
      const res = await fetchRaw(`${m.url}/readyz`);
      expect(res.status).toBe(200); // still serving: ready, with the reason
      return (JSON.parse(res.body.toString()) as { status: string; reasons: string[] }).reasons.join("\n");
    };
    await waitFor(
      async () =>
        (await reasons()).includes("docker.io/team/no-such-repo:v1: upstream docker.io says it does not exist"),
      { timeoutMs: 10_000, what: "the unresolved pin in /readyz" },
    );
    expect(await reasons()).toMatch(/^eviction stopped: /);
    expect((await fetchRaw(`${m.url}/metrics`)).body.toString()).toMatch(/^mirror_eviction_blocked 1$/m);
    for (const [i, image] of images.entries()) await pull(m.url, `team/typo${i}`, image); // the third would need eviction
    const store = m.mirror.blobStore;
    expect(images.map((image) => store.index.has(image.layers[0]!.digest))).toEqual([true, true, false]); // served uncached, nothing evicted
  });

  it("a mirror killed with SIGKILL mid-download restarts with no partial blob and no temp files", async () => {
    const relay = teardown.track(await startRelay(upstream.url));
    const layer = randomLayer(4 * 1024 * 1024);
    const image = buildImage({ format: "oci", layers: [layer] });
    await pushImage(upstream.url, "team/crash", "v1", image);
    const dataDir = await mkdtemp(join(tmpdir(), "crash-"));
    teardown.add("crash data dir", () => rm(dataDir, { recursive: true, force: true }));
    const port = await freePort();
    const configFile = join(dataDir, "..", `crash-${port}.yaml`);
    await writeFile(
      configFile,
      `listen: "127.0.0.1:${port}"\nstorage: { path: ${JSON.stringify(dataDir)} }\nlog: { level: warn }\nupstreams:\n  docker.io: { url: ${JSON.stringify(relay.url)}, default: true }\n`,
    );
    teardown.add("crash config", () => rm(configFile, { force: true }));
    const start = () => {
      const p = startProcess(process.execPath, ["src/main.ts", "--config", configFile], {
        name: "mirror",
        env: { ...process.env } as Record<string, string>,
      });
      return p;
    };
    let proc = start();
    const url = `http://127.0.0.1:${port}`;
    await waitFor(async () => (await fetchRaw(`${url}/healthz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 20_000,
      what: "mirror process ready",
      whileRunning: proc,
    });
    expect(
      (await fetchRaw(`${url}/v2/team/crash/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } })).status,
    ).toBe(200);
    relay.setFault({ kind: "throttle", bytesPerSecond: 2 * 1024 * 1024 });
    const inflight = fetchRaw(`${url}/v2/team/crash/blobs/${layer.digest}`).catch((err: Error) => err);
    await waitFor(async () => (await readdir(join(dataDir, "tmp"))).length > 0, {
      timeoutMs: 10_000,
      what: "a temp file being written",
    });
    await new Promise((r) => setTimeout(r, 300));
    process.kill(proc.pid, "SIGKILL");
    await proc.exited;
    await inflight;
    expect((await readdir(join(dataDir, "tmp"))).length).toBe(1); // the partial download, left by the crash
    relay.setFault(null);
    proc = start();
    teardown.add("mirror process", () => proc.stop());
    await waitFor(async () => (await fetchRaw(`${url}/healthz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 20_000,
      what: "mirror process ready again",
      whileRunning: proc,
    });
    expect(await readdir(join(dataDir, "tmp"))).toEqual([]);
    const hex = layer.digest.slice(7);
    expect(await readdir(join(dataDir, "blobs", "sha256", hex.slice(0, 2))).catch(() => [])).not.toContain(hex);
    const again = await fetchRaw(`${url}/v2/team/crash/blobs/${layer.digest}`);
    expect(sha256(again.body)).toBe(layer.digest);
  });

  it("gives every one of many concurrent pulls of a blob over the budget the verified bytes, each from its own download", async () => {
    const big = randomLayer(2 * 1024 * 1024);
    const image = buildImage({ format: "oci", layers: [big] });
    await pushImage(upstream.url, "team/overbudget", "v1", image);
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        extra: { storage: { maxSize: 1_000_000 } },
      }),
    );
    expect(
      (await fetchRaw(`${m.url}/v2/team/overbudget/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } })).status,
    ).toBe(200);
    await upstream.sync();
    upstream.clearRequests();
    const pulls = await Promise.all(
      Array.from({ length: 8 }, () => fetchRaw(`${m.url}/v2/team/overbudget/blobs/${big.digest}`)),
    );
    expect(pulls.map((res) => res.status)).toEqual(Array(8).fill(200));
    for (const res of pulls) {
      expect(res.broken).toBeUndefined();
      expect(res.headers["x-mirror-cache"]).toBe("uncached");
      expect(sha256(res.body)).toBe(big.digest);
    }
    expect(await m.mirror.blobStore.size(big.digest)).toBeUndefined();
    await upstream.sync();
    expect(upstream.count({ method: "GET", kind: "blobs", pathIncludes: big.digest })).toBe(8);
    // Streamed uncached, but still received from the upstream: eight times the blob, in the upstream bytes.
    const fetchedBlobBytes = async () =>
      (await m.mirror.metrics.upstreamFetchedBytes.get()).values
        .filter((v) => v.labels.kind === "blob")
        .reduce((sum, v) => sum + v.value, 0);
    await waitFor(async () => (await fetchedBlobBytes()) >= 8 * big.bytes.length, {
      timeoutMs: 5_000,
      intervalMs: 20,
      what: "the uncached downloads counted",
    });
    expect(await fetchedBlobBytes()).toBe(8 * big.bytes.length);
  });

  it("keeps pulls working on a full filesystem, streaming what does not fit without caching it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "tmpfs-"));
    const mounted = await runCommand("mount", ["-t", "tmpfs", "-o", "size=3m", "tmpfs", dir], { timeoutMs: 10_000 });
    expect(mounted.code, mounted.stderr).toBe(0);
    teardown.add("tmpfs", async () => {
      await runCommand("umount", [dir], { timeoutMs: 10_000 });
      await rm(dir, { recursive: true, force: true });
    });
    await mkdir(join(dir, "cache"));
    const big = randomLayer(5 * 1024 * 1024);
    const small = randomLayer(100_000);
    const image = buildImage({ format: "oci", layers: [big, small] });
    await pushImage(upstream.url, "team/fulldisk", "v1", image);
    const m = teardown.track(
      await startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true } },
        dataDir: join(dir, "cache"),
      }),
    );
    await pull(m.url, "team/fulldisk", image);
    const res = await fetchRaw(`${m.url}/v2/team/fulldisk/blobs/${big.digest}`);
    expect(res.headers["x-mirror-cache"]).toBe("uncached");
    expect(await m.mirror.blobStore.size(big.digest)).toBeUndefined();
    expect(await m.mirror.blobStore.size(small.digest)).toBe(small.bytes.length);
    const metrics = (await fetchRaw(`${m.url}/metrics`)).body.toString();
    expect(metrics).toMatch(/mirror_uncached_blobs_total\{upstream="docker.io"\} [2-9]/);
  });
});
