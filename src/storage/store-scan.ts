/**
 * The filesystem store's start-up scan: every committed file (`blobs/sha256/<hh>/<hex>`), its size and its
 * modification time (the recorded last access, cache-index.ts). One `stat` per file, synchronous on purpose: it
 * runs once, at start-up; through the threadpool with promises it cost ~24 µs per file here, plain syscalls in a
 * loop a third of that.
 *
 * After a crash there is no index snapshot (index-snapshot.ts), and a large store takes long to scan: 100,000
 * blobs ~0.5–1 s here, plus ~0.3 s to sort them into the index. So the mirror scans a large store in a worker
 * thread (`ScanWorker`), on another core, while it already serves: reads do not need the index (the store opens
 * the file, blob-store.ts), and what decides by the whole index waits for it (CacheIndex.complete).
 *
 * What the worker read of a shard directory is trusted by the index snapshot's rule: the directory's modification
 * time is still the one recorded before reading it, and was at least QUIET_MS older than the scan's start. The
 * shards that changed since (the mirror's own commits while the worker ran, among others) are scanned again on
 * the main thread when the worker is done.
 */
import { lstatSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { setImmediate } from "node:timers/promises";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import {
  byShardName,
  readRecords,
  RECORD,
  shardTimes,
  trustedShards,
  writeRecord,
  type SnapshotEntry,
} from "./index-snapshot.ts";

/** A committed file's name in its shard directory: the digest's hex. */
const HEX64 = /^[0-9a-f]{64}$/;
const SHARD = /^[0-9a-f]{2}$/;

/** Where the store keeps committed content under its root (`storage.path`). */
export function blobsDirOf(root: string): string {
  return join(root, "blobs", "sha256");
}

/**
 * Calls `visit` for every committed file in the shard directories `wanted` names; returns how many directories it
 * read.
 */
export function forEachStoredFile(
  blobsDir: string,
  wanted: (shard: string) => boolean,
  visit: (name: string, size: number, mtimeMs: number) => void,
): number {
  const shards = readdirSync(blobsDir, { withFileTypes: true }).filter(
    (d) => d.isDirectory() && SHARD.test(d.name) && wanted(d.name),
  );
  for (const shard of shards) {
    // Names only, and one lstat per name (which says whether it is a plain file, as a directory entry's type
    // would): no Dirent object per file, and no path.join per file (100,000 of each at the bench's size).
    const dir = `${join(blobsDir, shard.name)}/`;
    for (const name of readdirSync(dir)) {
      if (!HEX64.test(name)) continue;
      const s = lstatSync(dir + name, { throwIfNoEntry: false });
      if (s?.isFile()) visit(name, s.size, s.mtimeMs);
    }
  }
  return shards.length;
}

/**
 * Below this many committed files the scan takes a few tens of ms on the main thread: the store is
 * scanned before it serves, without a worker.
 */
export const BACKGROUND_SCAN_MIN_OBJECTS = 5_000;
const WORKER_ROLE = "registry-mirror-store-scan";
/** Records read between two turns of the event loop (the index is filled in steps too: cache-index.ts). */
const READ_STEP = 10_000;

/** What the worker sends back: the records (index-snapshot.ts's layout) and what they may be trusted for. */
interface ScanMessage {
  records: ArrayBuffer;
  count: number;
  /** Each shard directory's mtime (ns, -1 if none), read before any of them was scanned. */
  shardTimes: BigInt64Array;
  startedAt: number;
  ms: number;
}

export type ScanWorkerResult =
  | {
      entries: SnapshotEntry[];
      /** The shard directories the entries may be trusted for; the others are to be scanned again. */
      trusted: (shard: string) => boolean;
      /** How long the worker took. */
      workerMs: number;
    }
  | { failed: string };

/** A scan of the store running in a worker thread; `take` its result once. */
export class ScanWorker {
  private readonly worker: Worker;
  private readonly blobsDir: string;
  private readonly result: Promise<ScanMessage | { failed: string }>;

  private constructor(blobsDir: string) {
    this.blobsDir = blobsDir;
    this.worker = new Worker(new URL(import.meta.url), { workerData: { role: WORKER_ROLE, blobsDir } });
    this.result = new Promise((resolve) => {
      this.worker.once("message", (m: ScanMessage) => resolve(m));
      this.worker.once("error", (err: Error) => resolve({ failed: err.message }));
      this.worker.once("exit", (code) => resolve({ failed: `the scan's worker exited (${code})` }));
    });
  }

  /**
   * Starts scanning the content in `blobsDir` if it holds `minObjects` names or more (counted shard by shard until
   * there are that many: a large store's first few shards, a small store's every one); undefined for a smaller
   * store, which is scanned at once.
   */
  static start(blobsDir: string, minObjects: number): ScanWorker | undefined {
    let names = 0;
    for (const shard of readdirSync(blobsDir)) {
      if (!SHARD.test(shard)) continue;
      names += readdirSync(join(blobsDir, shard)).length;
      if (names >= minObjects) return new ScanWorker(blobsDir);
    }
    return undefined;
  }

  /** Waits for the worker; what it read, with the shards that changed since (or just before) left untrusted. */
  async take(): Promise<ScanWorkerResult> {
    const m = await this.result;
    void this.worker.terminate();
    if ("failed" in m) return m;
    const trusted = trustedShards(this.blobsDir, m.shardTimes, m.startedAt);
    const buf = Buffer.from(m.records, 0, m.count * RECORD);
    // Read in steps, letting requests in between: the mirror is serving (~1.5 µs per record here).
    const entries: SnapshotEntry[] = [];
    for (let n = 0; n < m.count; n += READ_STEP) {
      if (n > 0) await setImmediate();
      for (const e of readRecords(buf, n * RECORD, Math.min(READ_STEP, m.count - n), trusted)) entries.push(e);
    }
    return { entries, trusted: byShardName(trusted), workerMs: m.ms };
  }
}

/** The worker: scans every shard into records, in a buffer transferred to the main thread (no copy). */
function runWorker(port: NonNullable<typeof parentPort>, blobsDir: string): void {
  const startedAt = Date.now();
  const times = shardTimes(blobsDir);
  let buf = Buffer.allocUnsafeSlow(RECORD * 4096);
  let count = 0;
  forEachStoredFile(
    blobsDir,
    () => true,
    (name, size, mtimeMs) => {
      if ((count + 1) * RECORD > buf.length) {
        const bigger = Buffer.allocUnsafeSlow(buf.length * 2);
        buf.copy(bigger, 0, 0, count * RECORD);
        buf = bigger;
      }
      writeRecord(buf, count * RECORD, name, size, mtimeMs);
      count++;
    },
  );
  // Oldest access first, the order the index is filled in (cache-index.ts): sorted here, off the main thread, the
  // main thread's sort only has the shards it scans again to merge in.
  const sorted = sortByLastAccess(buf, count);
  // allocUnsafeSlow: the buffer owns its whole ArrayBuffer, so it can be transferred.
  const records = sorted.buffer;
  const message: ScanMessage = { records, count, shardTimes: times, startedAt, ms: Date.now() - startedAt };
  port.postMessage(message, [records]);
}

if (!isMainThread && parentPort && (workerData as { role?: unknown } | undefined)?.role === WORKER_ROLE)
  runWorker(parentPort, (workerData as { blobsDir: string }).blobsDir);

/** The `count` records in `buf`, in a new buffer, oldest lastAccess first. */
function sortByLastAccess(buf: Buffer, count: number): Buffer<ArrayBuffer> {
  const times = new Float64Array(count);
  for (let i = 0; i < count; i++) times[i] = buf.readDoubleLE(i * RECORD + 40);
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  order.sort((a, b) => times[a]! - times[b]!);
  const sorted = Buffer.allocUnsafeSlow(Math.max(1, count * RECORD));
  for (let i = 0; i < count; i++) buf.copy(sorted, i * RECORD, order[i]! * RECORD, (order[i]! + 1) * RECORD);
  return sorted;
}
