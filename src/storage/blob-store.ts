/**
 * The content store on the local filesystem: `blobs/sha256/<hh>/<hex>` for blobs and manifests alike, written
 * only through a temp file in `tmp/` that the writer verifies, fsyncs and renames into place (the one rename
 * into this layout, in `FileWriter.commit`). A file at a final path is therefore always complete and verified;
 * a crash leaves at worst a temp file, which `init()` deletes.
 *
 * What is particular to a filesystem stays here: large writes are hashed by a worker thread that reads the temp
 * file back (hash-worker.ts), and flushed to disk in steps as they arrive (fdatasync in the background), so that
 * neither the hash nor the final fsync stands between the last byte written and the commit for longer than a
 * few MiB take. A write to a file may store fewer bytes than it was given (a nearly full disk, a file-size
 * limit) without failing, so every write is continued until it completes or fails with the reason (`writeAt`,
 * temp-file-write.ts); and a commit refuses a temp file whose length is not the verified size. Committed files
 * are read with positional reads into pooled buffers (file-range-stream.ts).
 *
 * Layout:
 *   <root>/blobs/sha256/ab/abcdef…   committed content
 *   <root>/tmp/<hex>.<random>        writes in progress (read only through their writer)
 *   <root>/index-snapshot            the index as a clean shutdown left it, read and removed at start-up
 */
import type { EventEmitter } from "node:events";
import { mkdir, open, readdir, rename, rm, stat, utimes, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { digestHex } from "../oci/digest.ts";
import { CacheIndex } from "./cache-index.ts";
import {
  type ContentStore,
  type ContentWriter,
  type StoredContent,
  type WriteReservation,
  type WriterOptions,
} from "./content-store.ts";
import { BufferPool, FileHandleRangeStream } from "./file-range-stream.ts";
import { FileHasher } from "./hash-worker.ts";
import { takeIndexSnapshot, writeIndexSnapshot } from "./index-snapshot.ts";
import { blobsDirOf, forEachStoredFile, ScanWorker } from "./store-scan.ts";
import { openTempFile, TempFileWriter, type TempFile } from "./temp-file-write.ts";

/** A temp file is flushed to disk (fdatasync, in the background) every this many bytes. */
const SYNC_STEP = 64 * 1024 * 1024;

/** What a scan in the background found, once the index is complete (BlobStore.init). */
export interface BackgroundScan {
  objects: number;
  bytes: number;
  /** From init's start to the complete index. */
  scanMs: number;
  /** What the worker gave (the shard directories scanned again on the main thread), or why it gave nothing. */
  worker: { objects: number; shardsScanned: number; workerMs: number } | { failed: string };
}

export class BlobStore implements ContentStore {
  readonly root: string;
  readonly index: CacheIndex;
  /** Where writes in progress live: emptied by `init()`, on the same filesystem as the content. */
  readonly tempDir: string;
  private readonly blobsDir: string;
  /** Hashes large writes off the main thread. */
  private readonly hasher: FileHasher;
  /** Read buffers of committed content being served, reused across responses. */
  private readonly buffers: BufferPool;
  /** Open read handles per digest: content being served is never evicted. */
  private readonly readers = new Map<string, number>();
  private readonly commitListeners: Array<(digest: string, size: number) => void> = [];
  private readonly deleteListeners: Array<(digest: string) => void> = [];
  /** From how many committed files init scans in a worker while the store serves (store-scan.ts). */
  private readonly backgroundScanFrom: number | undefined;

  constructor(
    root: string,
    opts: {
      touchIntervalMs?: number;
      hasher?: FileHasher;
      buffers?: BufferPool;
      /** Scan a store this large in the background; unset: always before init returns. */
      backgroundScanFrom?: number;
    } = {},
  ) {
    this.root = root;
    this.blobsDir = blobsDirOf(root);
    this.backgroundScanFrom = opts.backgroundScanFrom;
    this.tempDir = join(root, "tmp");
    this.hasher = opts.hasher ?? new FileHasher();
    this.buffers = opts.buffers ?? new BufferPool();
    this.index = new CacheIndex(this, opts);
  }

  /**
   * Also reads (and removes) the index snapshot of the last clean shutdown, if any: the shards it can be trusted
   * for are not scanned (index-snapshot.ts); `snapshot` says what it gave (the objects taken from it and the shard
   * directories scanned all the same) or why it was ignored. Without one, a store of `backgroundScanFrom` objects
   * or more is scanned in a worker (store-scan.ts): init returns at once, with the index empty so far, and
   * `background` settles once the index is complete (`index.complete` too).
   */
  async init(): Promise<{
    removedTempFiles: number;
    objects: number;
    bytes: number;
    scanMs: number;
    snapshot?: { objects: number; shardsScanned: number } | { ignored: string };
    background?: Promise<BackgroundScan>;
  }> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tempDir, { recursive: true });
    const leftovers = await readdir(this.tempDir);
    await Promise.all(leftovers.map((name) => rm(join(this.tempDir, name), { force: true, recursive: true })));
    const started = performance.now();
    const taken = await takeIndexSnapshot({ root: this.root, blobsDir: this.blobsDir });
    if (taken !== undefined && !("ignored" in taken)) {
      let snapshot: { objects: number; shardsScanned: number } | undefined;
      const scan = await this.index.rebuild(async () => {
        const completed = this.completeScan(taken);
        snapshot = completed.gave;
        return completed.found;
      });
      return { removedTempFiles: leftovers.length, ...this.scanned(scan, started), ...(snapshot ? { snapshot } : {}) };
    }
    const ignored = taken ? { snapshot: taken } : {};
    const worker =
      this.backgroundScanFrom === undefined ? undefined : ScanWorker.start(this.blobsDir, this.backgroundScanFrom);
    if (worker) {
      let gave: BackgroundScan["worker"] | undefined;
      const background = this.index
        .rebuild(async () => {
          const scanned = await worker.take();
          if ("failed" in scanned) {
            gave = scanned;
            return this.scan();
          }
          const completed = this.completeScan(scanned);
          gave = { ...completed.gave, workerMs: scanned.workerMs };
          return completed.found;
        })
        .then((scan) => ({ ...this.scanned(scan, started), worker: gave! }));
      return { removedTempFiles: leftovers.length, objects: 0, bytes: 0, scanMs: 0, ...ignored, background };
    }
    const scan = await this.index.rebuild(() => this.scan());
    return { removedTempFiles: leftovers.length, ...this.scanned(scan, started), ...ignored };
  }

  private scanned(scan: { objects: number; bytes: number }, started: number) {
    return { objects: scan.objects, bytes: scan.bytes, scanMs: performance.now() - started };
  }

  /**
   * Saves the index for the next start (index-snapshot.ts), at a clean shutdown: after the last commit, delete and
   * recorded access of this process, so it holds what a scan would find then. Best effort: without it the next
   * start scans. Refused while the index is still being built.
   */
  async saveIndex(): Promise<{ objects: number }> {
    // A stop while the start-up scan still runs (a large store after a crash) does not wait for it: nothing is
    // saved, and the next start scans, as this one did.
    if (this.index.building) throw new Error("the cache index was still being built");
    return writeIndexSnapshot({
      root: this.root,
      blobsDir: this.blobsDir,
      tempDir: this.tempDir,
      entries: this.index.mostRecentlyUsed(),
    });
  }

  /**
   * Every committed file (blobs/sha256/xx/<hex>), its modification time standing for its last access: one `stat`
   * per file, synchronous (store-scan.ts says why).
   */
  async scan(): Promise<Array<{ digest: string; size: number; lastAccess: number }>> {
    return this.scanShards(() => true).found;
  }

  /** What a partial scan gave (the snapshot's, the worker's) and a scan of the shard directories it does not vouch for. */
  private completeScan(partial: {
    entries: Array<{ digest: string; size: number; lastAccess: number }>;
    trusted: (shard: string) => boolean;
  }): {
    found: Array<{ digest: string; size: number; lastAccess: number }>;
    gave: { objects: number; shardsScanned: number };
  } {
    const scanned = this.scanShards((shard) => !partial.trusted(shard));
    return {
      found: partial.entries.concat(scanned.found),
      gave: { objects: partial.entries.length, shardsScanned: scanned.shards },
    };
  }

  /** The scan of the shard directories `wanted` names (see `scan`). */
  private scanShards(wanted: (shard: string) => boolean): {
    found: Array<{ digest: string; size: number; lastAccess: number }>;
    shards: number;
  } {
    const found: Array<{ digest: string; size: number; lastAccess: number }> = [];
    const shards = forEachStoredFile(this.blobsDir, wanted, (name, size, mtimeMs) =>
      found.push({ digest: `sha256:${name}`, size, lastAccess: mtimeMs }),
    );
    return { found, shards };
  }

  /** An access is recorded as the file's modification time, which the start-up scan reads back. */
  recordAccess(digest: string, when: Date): void {
    utimes(this.pathOf(digest), when, when).catch(() => undefined); // gone already: nothing to record
  }

  inUse(digest: string): boolean {
    return (this.readers.get(digest) ?? 0) > 0;
  }

  /** Unlinking is atomic: a crash leaves the file whole or gone. Readers that already opened it keep their handle. */
  async delete(digest: string): Promise<void> {
    await rm(this.pathOf(digest), { force: true });
    this.index.remove(digest);
    for (const listener of this.deleteListeners) listener(digest);
  }

  onDelete(listener: (digest: string) => void): void {
    this.deleteListeners.push(listener);
  }

  onCommit(listener: (digest: string, size: number) => void): void {
    this.commitListeners.push(listener);
  }

  pathOf(digest: string): string {
    const hex = digestHex(digest);
    return join(this.blobsDir, hex.slice(0, 2), hex);
  }

  async size(digest: string): Promise<number | undefined> {
    try {
      return (await stat(this.pathOf(digest))).size;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Opens committed content for reading. The open handle stays valid even if the file is later unlinked
   * (eviction), so a response that has started always completes.
   */
  async open(digest: string, opts: { touch?: boolean } = {}): Promise<StoredContent | undefined> {
    let handle: FileHandle;
    try {
      handle = await open(this.pathOf(digest), "r");
    } catch (err) {
      if (isNotFound(err)) {
        this.index.remove(digest); // deleted behind our back (or never indexed): keep the accounting true
        return undefined;
      }
      throw err;
    }
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    // FileHandle is an EventEmitter at run time ('close' since Node 15.4), though the typings do not say so.
    (handle as unknown as EventEmitter).once("close", () => {
      const n = (this.readers.get(digest) ?? 1) - 1;
      if (n <= 0) this.readers.delete(digest);
      else this.readers.set(digest, n);
    });
    try {
      // A committed file never changes, so the size the index holds for it (from its commit or the start-up
      // scan) is its size: no fstat on every hit. A file shorter than that (damaged behind our back) ends the
      // response early ("file ended at ..."), never a complete answer with other bytes.
      const known = this.index.sizeOf(digest);
      const size = known ?? (await handle.stat()).size;
      if (known === undefined) this.index.add(digest, size);
      if (opts.touch !== false) this.index.touch(digest);
      return new StoredFile(handle, size, this.buffers);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** A temp file for `digest`, opened read-write so that readers following the write can read it through the handle. */
  createWriter(digest: string, opts: WriterOptions = {}): Promise<ContentWriter> {
    return openTempFile(this.tempDir, this.hasher, digest, opts, (file) => new FileWriter(this, file));
  }

  /**
   * @internal FileWriter.commit: the file is in place. The index counts it first, then the write's reservation
   * is released (released before, its room could be handed out twice), then the listeners learn of it.
   */
  committed(digest: string, size: number, reservation: WriteReservation | undefined): void {
    this.index.add(digest, size);
    reservation?.release();
    for (const listener of this.commitListeners) listener(digest, size);
  }

  async tempFiles(): Promise<string[]> {
    return readdir(this.tempDir);
  }
}

/** A committed file held open: streamed by range with pooled buffers, or read whole. */
class StoredFile implements StoredContent {
  readonly size: number;
  private readonly handle: FileHandle;
  private readonly buffers: BufferPool;

  constructor(handle: FileHandle, size: number, buffers: BufferPool) {
    this.handle = handle;
    this.size = size;
    this.buffers = buffers;
  }

  read(range?: { start: number; end: number }): Readable {
    return new FileHandleRangeStream(this.buffers, this.handle, range?.start ?? 0, range?.end ?? this.size - 1);
  }

  async bytes(): Promise<Buffer> {
    try {
      return await this.handle.readFile();
    } finally {
      await this.handle.close();
    }
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

/**
 * A write into a temp file: appended with positional writes, hashed as it goes, flushed to disk in steps, read
 * back through the same handle by whoever follows it, verified and renamed into place by `commit`.
 */
class FileWriter extends TempFileWriter {
  private readonly store: BlobStore;
  /** Bytes known to be on disk (fdatasync'ed), and the background flush running now. */
  private syncedTo = 0;
  private syncing: Promise<void> | undefined;

  constructor(store: BlobStore, file: TempFile) {
    super(file);
    this.store = store;
  }

  async write(chunks: readonly Uint8Array[]): Promise<void> {
    await this.append(chunks);
    this.flushInBackground();
  }

  /** The last background flush finishes while the hash catches up. */
  protected override settled(): Promise<void> | undefined {
    return this.syncing;
  }

  /**
   * Renames the verified, fsynced temp file to the digest's path: atomic within one filesystem, which is why temp
   * files live under the same root. The file must hold exactly the bytes that were verified: one that does not
   * (a write that stored less than it reported) is deleted, and the commit fails.
   */
  async commit(): Promise<void> {
    await this.verify();
    if (this.outcome !== "writing") throw new Error(`the write of ${this.digest} was ${this.outcome}`);
    try {
      await this.handle.sync();
      const onDisk = (await this.handle.stat()).size;
      if (onDisk !== this.bytes)
        throw new Error(
          `temp file for ${this.digest} holds ${onDisk} bytes, not the ${this.bytes} that were verified: not committed`,
        );
      const finalPath = this.store.pathOf(this.digest);
      await mkdir(join(finalPath, ".."), { recursive: true });
      await rename(this.path, finalPath);
    } catch (err) {
      await this.abort();
      throw err;
    }
    this.outcome = "committed";
    this.store.committed(this.digest, this.bytes, this.reservation);
  }

  async abort(): Promise<void> {
    if (this.outcome !== "writing") return;
    this.outcome = "discarded";
    this.hash.abort();
    try {
      await rm(this.path, { force: true });
    } finally {
      this.reservation?.release();
    }
  }

  /**
   * Starts an fdatasync once SYNC_STEP more bytes have been written, one at a time, not awaited by the write
   * path: the disk writes back while the write goes on, and the fsync before commit has little left to do.
   * Its errors are not lost: the final fsync reports the same failure.
   */
  private flushInBackground(): void {
    if (this.syncing !== undefined || this.bytes - this.syncedTo < SYNC_STEP) return;
    const upTo = this.bytes;
    this.syncing = this.handle
      .datasync()
      .then(
        () => {
          this.syncedTo = upTo;
        },
        () => undefined,
      )
      .finally(() => {
        this.syncing = undefined;
      });
  }
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}
