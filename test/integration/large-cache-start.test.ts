/**
 * A mirror restarted over a large cache after a crash (no index snapshot: index-snapshot.ts) serves at once while
 * a worker scans the cache (storage/store-scan.ts): pulls of cached content are hits with no upstream request,
 * and the janitor, which waits for the whole index, holds the budget once it is complete, evicting the least
 * recently used. Against a real upstream registry; upstream traffic counted in its own log.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { buildImage, pushImage, randomLayer } from "../harness/image-builder.ts";
import { startTestMirror } from "../harness/mirror.ts";
import { Teardown, waitFor } from "../harness/processes.ts";
import { startRegistry, type Registry } from "../harness/registry.ts";
import { ALL_MANIFEST_TYPES, fetchRaw } from "./client.ts";
import { BlobStore } from "../../src/storage/blob-store.ts";
import { SNAPSHOT_FILE } from "../../src/storage/index-snapshot.ts";
import { BACKGROUND_SCAN_MIN_OBJECTS } from "../../src/storage/store-scan.ts";

const sha256 = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const teardown = new Teardown();
afterAll(() => teardown.run());
let upstream: Registry;
beforeAll(async () => {
  upstream = teardown.track(await startRegistry());
});

/**
 * `count` blobs of `size` bytes written straight into the store's layout, recorded as last pulled two hours ago;
 * then every shard directory is set to have last changed a minute ago, as in a cache written before the crash.
 */
async function addOldBlobs(dataDir: string, count: number, size: number): Promise<void> {
  const root = join(dataDir, "blobs", "sha256");
  const then = (Date.now() - 2 * 3_600_000) / 1000;
  for (let i = 0; i < count; i++) {
    const bytes = Buffer.alloc(size, `old blob ${i} `);
    const hex = sha256(bytes);
    await mkdir(join(root, hex.slice(0, 2)), { recursive: true });
    await writeFile(join(root, hex.slice(0, 2), hex), bytes);
    await utimes(join(root, hex.slice(0, 2), hex), then, then);
  }
  const past = (Date.now() - 60_000) / 1000;
  for (const shard of await readdir(root)) await utimes(join(root, shard), past, past);
}

describe("a large cache after a crash", () => {
  it("is served while a worker scans it; once the index is complete the budget holds, oldest evicted first", async () => {
    const image = buildImage({ format: "oci", layers: [randomLayer(40_000), randomLayer(30_000)] });
    const content = [image.digest, ...image.blobs().map((b) => b.digest)];
    await pushImage(upstream.url, "team/large", "v1", image);
    const dataDir = await mkdtemp(join(tmpdir(), "large-cache-"));
    teardown.add("data dir", () => rm(dataDir, { recursive: true, force: true }));
    const start = (storage: Record<string, unknown> = {}) =>
      startTestMirror({
        upstreams: { "docker.io": { url: upstream.url, default: true, tagTtl: "1h" } },
        dataDir,
        extra: { storage },
      });
    const pull = async (url: string) => {
      const manifest = await fetchRaw(`${url}/v2/team/large/manifests/v1`, { headers: { accept: ALL_MANIFEST_TYPES } });
      expect(manifest.status).toBe(200);
      const how = [manifest.headers["x-mirror-cache"]];
      for (const blob of image.blobs()) {
        const res = await fetchRaw(`${url}/v2/team/large/blobs/${blob.digest}`);
        expect(res.status).toBe(200);
        expect(`sha256:${sha256(res.body)}`).toBe(blob.digest);
        how.push(res.headers["x-mirror-cache"]);
      }
      return how;
    };

    const first = await start();
    expect(await pull(first.url)).toContain("miss");
    await first.stop();
    // As after a crash: no snapshot of the index.
    await rm(join(dataDir, SNAPSHOT_FILE));
    const old = BACKGROUND_SCAN_MIN_OBJECTS + 1_000;
    await addOldBlobs(dataDir, old, 1_000);
    const imageBytes = image.manifest.length + image.blobs().reduce((sum, b) => sum + b.bytes.length, 0);
    const maxSize = imageBytes + (old / 2) * 1_000;

    const init = vi.spyOn(BlobStore.prototype, "init");
    upstream.clearRequests();
    const second = teardown.track(await start({ maxSize }));
    const started = (await init.mock.results[0]!.value) as Awaited<ReturnType<BlobStore["init"]>>;
    init.mockRestore();
    expect(started.background).toBeDefined();
    // Cached content is served from the cache whether or not the scan has ended: no request upstream.
    expect(await pull(second.url)).toEqual(content.map(() => "hit"));
    await upstream.sync();
    expect(upstream.requests().filter((r) => r.repo === "team/large")).toEqual([]);

    const scanned = await started.background!;
    expect(scanned).toMatchObject({ objects: old + content.length, worker: { objects: old + content.length } });
    // The janitor waited for the whole index, then evicted the least recently used down to the budget: old blobs
    // only, never the image pulled just now.
    const index = second.mirror.blobStore.index;
    await waitFor(async () => index.bytes <= maxSize, { timeoutMs: 20_000, what: "the budget to hold" });
    expect(content.every((d) => index.has(d))).toBe(true);
    expect(index.objects).toBeLessThan(old + content.length);
    expect(index.objects).toBeGreaterThan(content.length);
  });
});
