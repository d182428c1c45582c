/**
 * The index snapshot (index-snapshot.ts) through the filesystem store: what a clean shutdown saves is what the next
 * start indexes, without scanning the shards it can trust, and exactly what a scan would have found.
 */
import { randomBytes } from "node:crypto";
import { readFile, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BlobStore } from "../../../src/storage/blob-store.ts";
import { putContent } from "../../../src/storage/content-store.ts";
import { SNAPSHOT_FILE } from "../../../src/storage/index-snapshot.ts";
import { digestOf, populatedStore, shardOf } from "./stored-blobs.ts";

const dirs: string[] = [];

afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});

const populated = (count: number) => populatedStore(count, (dir) => dirs.push(dir));

async function started(dir: string): Promise<{ store: BlobStore; init: Awaited<ReturnType<BlobStore["init"]>> }> {
  const store = new BlobStore(dir);
  const init = await store.init();
  return { store, init };
}

const order = (store: BlobStore) => [...store.index.mostRecentlyUsed()];

describe("index snapshot", () => {
  it("a clean shutdown's snapshot gives the next start what a scan would, without scanning, and is removed", async () => {
    const { dir, digests } = await populated(12);
    const { store: first } = await started(dir); // a full scan: no snapshot yet
    const byScan = order(first);
    expect(byScan.map((e) => e.digest)).toEqual([...digests].reverse());
    expect(await first.saveIndex()).toEqual({ objects: 12 });
    expect(await first.tempFiles()).toEqual([]);

    const { store: second, init } = await started(dir);
    expect(init).toMatchObject({ objects: 12, snapshot: { objects: 12, shardsScanned: 0 } });
    expect(order(second)).toEqual(byScan);
    expect(second.index.bytes).toBe(first.index.bytes);
    await expect(stat(join(dir, SNAPSHOT_FILE))).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("scans the shards changed since the snapshot: content added or removed behind it is seen", async () => {
    const { dir, digests } = await populated(8);
    const { store: first } = await started(dir);
    await first.saveIndex();
    // While the mirror is stopped: one blob removed, one added (by hand, or another tool).
    const removed = digests[3]!;
    await rm(first.pathOf(removed));
    const added = randomBytes(333);
    await putContent(first, digestOf(added), added);

    const { store: second, init } = await started(dir);
    const changedShards = new Set([shardOf(removed), shardOf(digestOf(added))]);
    expect(init).toMatchObject({ objects: 8, snapshot: { objects: 8 - changedShardCount(digests, changedShards) } });
    expect((init.snapshot as { shardsScanned: number }).shardsScanned).toBe(changedShards.size);
    expect(second.index.has(removed)).toBe(false);
    expect(second.index.sizeOf(digestOf(added))).toBe(333);
    for (const d of digests) if (d !== removed) expect(second.index.has(d)).toBe(true);
  });

  it("scans a shard that changed just before the snapshot was written (timestamps may be coarse)", async () => {
    const { dir, digests } = await populated(4);
    const { store: first } = await started(dir);
    const late = randomBytes(50);
    await putContent(first, digestOf(late), late); // its shard changed now, within the quiet time
    await first.saveIndex();
    const { store: second, init } = await started(dir);
    expect(init).toMatchObject({ objects: 5 });
    const scannedShards = (init.snapshot as { shardsScanned: number }).shardsScanned;
    expect(scannedShards).toBe(1);
    expect(second.index.sizeOf(digestOf(late))).toBe(50);
    for (const d of digests) expect(second.index.has(d)).toBe(true);
  });

  it("ignores a damaged snapshot and scans everything", async () => {
    const { dir, digests } = await populated(5);
    const { store: first } = await started(dir);
    await first.saveIndex();
    const path = join(dir, SNAPSHOT_FILE);
    const bytes = await readFile(path);
    bytes[bytes.length - 100]! ^= 0xff; // a size or time in the last record
    await writeFile(path, bytes);
    const { store: second, init } = await started(dir);
    expect(init).toMatchObject({ objects: 5, snapshot: { ignored: "damaged (checksum)" } });
    expect(order(second)).toEqual(order(first));
    expect(new Set(order(second).map((e) => e.digest))).toEqual(new Set(digests));
    await expect(stat(path)).rejects.toMatchObject({ code: "ENOENT" });
  });

  it("is used once: after a start that took it, a crash leaves the next start to the scan, with later accesses", async () => {
    const { dir, digests } = await populated(3);
    const { store: first } = await started(dir);
    await first.saveIndex();
    const { store: second } = await started(dir); // took the snapshot
    // Used while running: recorded in the file's time (touch interval 10 min: the first use is recorded).
    const oldest = digests[0]!;
    const opened = await second.open(oldest);
    await opened!.close();
    await waitForMtime(second.pathOf(oldest), Date.now() - 60_000);
    // ...and then the process dies without saving: the next start scans, and sees that use.
    const { store: third, init } = await started(dir);
    expect(init.snapshot).toBeUndefined();
    expect(order(third)[0]!.digest).toBe(oldest);
  });
});

function changedShardCount(digests: string[], shards: Set<string>): number {
  return digests.filter((d) => shards.has(shardOf(d))).length;
}

async function waitForMtime(path: string, after: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await stat(path)).mtimeMs > after) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`${path} was not touched`);
}
