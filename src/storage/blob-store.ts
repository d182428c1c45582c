/**
 * Content-addressed files on disk: `blobs/sha256/<hh>/<hex>` for blobs and manifests alike, written only through
 * a temp file in `tmp/` that is verified, fsynced and renamed into place. A file at a final path is therefore
 * always complete and verified; a crash leaves at worst a temp file, which `init()` deletes.
 *
 * A write to a file may store fewer bytes than it was given (a nearly full disk, a file-size limit) without
 * failing, so temp files are written with `writeAt`, which writes the rest or throws the reason it cannot; and
 * `commit` refuses a temp file whose length is not the verified size.
 *
 * Layout:
 *   <root>/blobs/sha256/ab/abcdef…   committed content
 *   <root>/tmp/<hex>.<random>        in-progress writes (never served except through their Fill)
 */
import { randomBytes } from "node:crypto";
import type { EventEmitter } from "node:events";
import { mkdir, open, readdir, rename, rm, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { digestHex } from "../oci/digest.ts";
import { CacheIndex } from "./cache-index.ts";

export interface OpenedBlob {
  handle: FileHandle;
  size: number;
}

export class BlobStore {
  readonly root: string;
  /** Every committed object with its size, in recency order: kept in step by commit, open and delete. */
  readonly index: CacheIndex;
  /** Where writes in progress live: emptied by `init()`, on the same filesystem as the content. */
  readonly tempDir: string;
  private readonly blobsDir: string;
  /** Open read handles per digest: content being served is never evicted. */
  private readonly readers = new Map<string, number>();
  private readonly commitListeners: Array<(digest: string, size: number) => void> = [];
  private readonly deleteListeners: Array<(digest: string) => void> = [];

  constructor(root: string, opts: { touchIntervalMs?: number } = {}) {
    this.root = root;
    this.blobsDir = join(root, "blobs", "sha256");
    this.tempDir = join(root, "tmp");
    this.index = new CacheIndex(this, opts);
  }

  /**
   * Creates the layout, deletes temp files left by a previous process (they were never verified, so nothing
   * partial can ever become servable), and rebuilds the index by scanning what is committed.
   */
  async init(): Promise<{ removedTempFiles: number; objects: number; bytes: number; scanMs: number }> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tempDir, { recursive: true });
    const leftovers = await readdir(this.tempDir);
    await Promise.all(leftovers.map((name) => rm(join(this.tempDir, name), { force: true, recursive: true })));
    const scan = await this.index.rebuild();
    return { removedTempFiles: leftovers.length, objects: scan.objects, bytes: scan.bytes, scanMs: scan.ms };
  }

  /** Whether a response is reading this content now. */
  inUse(digest: string): boolean {
    return (this.readers.get(digest) ?? 0) > 0;
  }

  /**
   * Deletes committed content (eviction, purge). Unlinking is atomic: a crash leaves the file whole or gone.
   * Readers that already opened it keep reading their handle.
   */
  async delete(digest: string): Promise<void> {
    await rm(this.pathOf(digest), { force: true });
    this.index.remove(digest);
    for (const listener of this.deleteListeners) listener(digest);
  }

  /** Called after content is deleted (the fill coordinator forgets a just-committed fill of it). */
  onDelete(listener: (digest: string) => void): void {
    this.deleteListeners.push(listener);
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
  async open(digest: string): Promise<OpenedBlob | undefined> {
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
      const size = (await handle.stat()).size;
      if (!this.index.has(digest)) this.index.add(digest, size);
      this.index.touch(digest);
      return { handle, size };
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** A new temp file for writing `digest`, opened read-write so in-flight readers can read it through the handle. */
  async createTemp(digest: string): Promise<{ path: string; handle: FileHandle }> {
    const path = join(this.tempDir, `${digestHex(digest)}.${randomBytes(6).toString("hex")}`);
    const handle = await open(path, "wx+");
    return { path, handle };
  }

  /**
   * Makes verified content visible. The caller has checked digest and size and fsynced the handle; rename is
   * atomic within one filesystem, which is why temp files live under the same root. The file on disk must hold
   * exactly the `size` bytes that were verified: one that does not is deleted, and commit throws.
   */
  async commit(tempPath: string, digest: string, size: number): Promise<void> {
    const onDisk = (await stat(tempPath)).size;
    if (onDisk !== size) {
      await this.discard(tempPath);
      throw new Error(`temp file for ${digest} holds ${onDisk} bytes, not the ${size} that were verified: not committed`);
    }
    const finalPath = this.pathOf(digest);
    await mkdir(join(finalPath, ".."), { recursive: true });
    await rename(tempPath, finalPath);
    this.index.add(digest, size);
    for (const listener of this.commitListeners) listener(digest, size);
  }

  /** Called after every commit (the janitor checks its watermarks). */
  onCommit(listener: (digest: string, size: number) => void): void {
    this.commitListeners.push(listener);
  }

  async discard(tempPath: string): Promise<void> {
    await rm(tempPath, { force: true });
  }

  /** Writes small verified content (manifests) in one go, through the same temp-then-rename path. */
  async putVerified(digest: string, bytes: Uint8Array): Promise<void> {
    const { path, handle } = await this.createTemp(digest);
    try {
      await writeAt(handle, [bytes], 0);
      await handle.sync();
    } catch (err) {
      await handle.close();
      await this.discard(path);
      throw err;
    }
    await handle.close();
    await this.commit(path, digest, bytes.length);
  }

  /** Names of temp files present now (tests assert none are left behind). */
  async tempFiles(): Promise<string[]> {
    return readdir(this.tempDir);
  }
}

/**
 * Writes every byte of `chunks`, in order, at `position`. A write that stores only part of what it was given is
 * continued from where it stopped: it completes, or the next write fails with the reason (ENOSPC, EFBIG).
 */
export async function writeAt(handle: FileHandle, chunks: readonly Uint8Array[], position: number): Promise<void> {
  let done = (await handle.writev(chunks, position)).bytesWritten;
  let skip = done;
  for (const chunk of chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    for (let offset = skip; offset < chunk.length; ) {
      const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset, position + done);
      if (bytesWritten === 0) throw new Error(`no byte could be written at offset ${position + done}`);
      offset += bytesWritten;
      done += bytesWritten;
    }
    skip = 0;
  }
}

export function isNotFound(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === "ENOENT";
}
