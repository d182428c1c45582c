/**
 * The start-up scan in a worker (store-scan.ts) through the filesystem store: after a crash (no index snapshot) a
 * large store is scanned while the store already serves, and the index it ends with is what a scan before serving
 * would have given, plus what was committed and read meanwhile, as the most recently used.
 */
import { randomBytes } from "node:crypto";
import { readdir, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";
import { SNAPSHOT_FILE } from "../../../src/storage/index-snapshot.ts";
import { ScanWorker } from "../../../src/storage/store-scan.ts";
import { digestOf, populatedStore, shardOf } from "./stored-blobs.ts";

const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const populated = (count: number) => populatedStore(count, (dir) => dirs.push(dir));

const order = (store: BlobStore) => [...store.index.mostRecentlyUsed()].map((e) => e.digest);

describe("the start-up scan in a worker", () => {
  it("is not started for a store smaller than the threshold: init scans it before returning", async () => {
    const { dir, digests } = await populated(6);
    expect(ScanWorker.start(join(dir, "blobs", "sha256"), 1_000)).toBeUndefined();
    const store = new BlobStore(dir, { backgroundScanFrom: 1_000 });
    const init = await store.init();
    expect(init.background).toBeUndefined();
    expect(init.objects).toBe(6);
    expect(order(store)).toEqual([...digests].reverse());
  });

  it("ends with the index a scan before serving gives: same objects, sizes and recency, every shard from the worker", async () => {
    const { dir, digests } = await populated(40);
    const byScan = new BlobStore(dir);
    await byScan.init();
    const expected = [...byScan.index.mostRecentlyUsed()];

    const store = new BlobStore(dir, { backgroundScanFrom: 2 });
    const init = await store.init();
    expect(init.background).toBeDefined();
    const done = await init.background!;
    expect(done).toMatchObject({ objects: 40, worker: { objects: 40, shardsScanned: 0 } });
    expect([...store.index.mostRecentlyUsed()]).toEqual(expected);
    expect(store.index.bytes).toBe(byScan.index.bytes);
    expect(order(store)).toEqual([...digests].reverse());
    await store.index.complete;
  });

  it("serves while it scans: what is committed and read before the index is complete ends as the most recently used", async () => {
    const { dir, digests } = await populated(40);
    const store = new BlobStore(dir, { backgroundScanFrom: 2 });
    const init = await store.init();
    expect(init.background).toBeDefined();
    // Right after init, with the worker still starting: a stored blob is read (the store opens the file, not the
    // index), and a new one is committed. Had the scan ended first, the order would be the same: that is the
    // point (the merge itself is cache-index.test.ts's).
    const read = await store.open(digests[0]!);
    expect(read?.size).toBe(100);
    await read!.close();
    const fresh = randomBytes(77);
    await putContent(store, digestOf(fresh), fresh);
    await init.background;
    const now = order(store);
    expect(now).toHaveLength(41);
    // The two most recent: the commit and the read, in the order they happened; the rest in the recorded order.
    expect(now.slice(0, 2)).toEqual([digestOf(fresh), digests[0]]);
    expect(now.slice(2)).toEqual(digests.slice(1).reverse());
    expect(store.index.sizeOf(digestOf(fresh))).toBe(77);
    expect(store.index.bytes).toBe(77 + digests.reduce((sum, _, i) => sum + 100 + i, 0));
  });

  it("does not vouch for a shard changed while the worker scans: the store scans it again on the main thread", async () => {
    const { dir, digests } = await populated(40);
    const blobsDir = join(dir, "blobs", "sha256");
    // Whether the worker has read that shard yet or not, the removal changes the shard's time from the one the
    // worker recorded before it began.
    const worker = ScanWorker.start(blobsDir, 2)!;
    const gone = digests[3]!;
    await unlink(join(blobsDir, shardOf(gone), gone.slice("sha256:".length)));
    const scanned = await worker.take();
    if ("failed" in scanned) throw new Error(scanned.failed);
    expect(scanned.trusted(shardOf(gone))).toBe(false);
    expect(scanned.entries.map((e) => e.digest)).not.toContain(gone);
    expect(scanned.entries.every((e) => scanned.trusted(shardOf(e.digest)))).toBe(true);

    // Through the store: a blob removed while the worker scans is not in the index it ends with.
    const store = new BlobStore(dir, { backgroundScanFrom: 2 });
    const init = await store.init();
    const removed = digests[5]!;
    await unlink(store.pathOf(removed));
    const done = await init.background!;
    expect(store.index.has(removed)).toBe(false);
    expect(store.index.objects).toBe(38);
    expect("failed" in done.worker ? -1 : done.worker.shardsScanned).toBeGreaterThanOrEqual(1);
  });

  it("does not vouch for a shard changed within the quiet time before the scan began", async () => {
    const { dir, digests } = await populated(10);
    // A commit a moment before the start (a crash right after it): its shard's time is that moment.
    const store = new BlobStore(dir);
    await store.init();
    const late = randomBytes(55);
    await putContent(store, digestOf(late), late);
    const scanned = await ScanWorker.start(join(dir, "blobs", "sha256"), 2)!.take();
    if ("failed" in scanned) throw new Error(scanned.failed);
    expect(scanned.trusted(shardOf(digestOf(late)))).toBe(false);
    const restarted = new BlobStore(dir, { backgroundScanFrom: 2 });
    const done = await (await restarted.init()).background!;
    expect(done.worker).toMatchObject({ shardsScanned: 1 });
    expect(restarted.index.sizeOf(digestOf(late))).toBe(55);
    expect(restarted.index.objects).toBe(digests.length + 1);
  });

  it("a stop before the index is complete saves no snapshot rather than wait for the scan", async () => {
    const { dir } = await populated(40);
    const store = new BlobStore(dir, { backgroundScanFrom: 2 });
    const init = await store.init();
    expect(store.index.building).toBe(true);
    await expect(store.saveIndex()).rejects.toThrow("the cache index was still being built");
    await init.background;
    expect(store.index.building).toBe(false);
    await expect(readdir(dir)).resolves.not.toContain(SNAPSHOT_FILE);
    // Once it is complete, it is saved.
    await expect(store.saveIndex()).resolves.toEqual({ objects: 40 });
    await expect(readdir(dir)).resolves.toContain(SNAPSHOT_FILE);
  });
});
