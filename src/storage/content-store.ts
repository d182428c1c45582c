/**
 * What the caches, the fills and the importer need of a place that keeps content by digest: blobs and manifests
 * alike, whatever holds them (the local filesystem: blob-store.ts; an S3-compatible object store would be a
 * second implementation of the same interface).
 *
 * Content enters only through a writer, and becomes visible only in the writer's `commit()`, which verifies
 * the length and the sha256 of what was written before anything can read it under its digest. No caller can
 * make content visible whatever it checked itself, and no reader of committed content needs to check again.
 *
 * Committed content is kept in step with an index (cache-index.ts: digest → size, in recency order), which the
 * store fills at start-up from a scan and updates on every commit, read and delete.
 */
import type { Readable } from "node:stream";
import type { CacheIndex, IndexSource } from "./cache-index.ts";

export interface ContentStore extends IndexSource {
  /** Every committed object with its size, in recency order: kept in step by commits, reads and deletes. */
  readonly index: CacheIndex;
  /**
   * Prepares the store: removes the writes a previous process left unfinished (never verified, so nothing
   * partial can ever become visible) and fills the index from a scan of what is committed.
   */
  init(): Promise<{
    removedTempFiles: number;
    objects: number;
    bytes: number;
    scanMs: number;
    /** What a saved index gave the scan (the filesystem store: index-snapshot.ts). */
    snapshot?: { objects: number; shardsScanned: number } | { ignored: string };
    /**
     * A scan still running when init returned (the filesystem store, a large store after a crash: store-scan.ts);
     * settles with what it found once the index is complete.
     */
    background?: Promise<{ objects: number; bytes: number; scanMs: number }>;
  }>;
  /**
   * At a clean shutdown, once nothing is committed, deleted or read any more: saves what the next start's scan
   * needs, where that saves time (the filesystem store: index-snapshot.ts).
   */
  saveIndex?(): Promise<{ objects: number }>;
  /** The size of committed content, or undefined when there is none under `digest`. */
  size(digest: string): Promise<number | undefined>;
  /** Committed content, held open for reading (a delete meanwhile does not disturb it); undefined when absent. */
  /** `touch: false`: a read that is no use of the content (the janitor walking what pins reach), not recorded. */
  open(digest: string, opts?: { touch?: boolean }): Promise<StoredContent | undefined>;
  /** Whether a reader holds this content open now (content being served is never evicted). */
  inUse(digest: string): boolean;
  /** A writer for content that must hash to `digest` (and be `expectedSize` bytes long, when given). */
  createWriter(digest: string, opts?: WriterOptions): Promise<ContentWriter>;
  /** Deletes committed content (eviction, purge): whole or not at all. Readers that opened it keep reading. */
  delete(digest: string): Promise<void>;
  /** Called after every commit (the janitor checks its watermarks). */
  onCommit(listener: (digest: string, size: number) => void): void;
  /** Called after content is deleted (the fill coordinator forgets a just-committed fill of it). */
  onDelete(listener: (digest: string) => void): void;
  /** Writes neither committed nor discarded yet, by name (tests assert that none are left behind). */
  tempFiles(): Promise<string[]>;
}

/** Committed content, open for reading. Read it once (`read` or `bytes`), or `close` it. */
export interface StoredContent {
  readonly size: number;
  /**
   * Bytes `[start, end]` (inclusive; the whole content without a range) as a stream that owns the content: it
   * releases it when it ends or is destroyed.
   */
  read(range?: { start: number; end: number }): Readable;
  /** The whole content in memory, then released (small objects only: manifests). */
  bytes(): Promise<Buffer>;
  /** Releases the content without reading it. */
  close(): Promise<void>;
  /**
   * Only where the store is set to send clients to the content itself (`storage.s3.redirect`): a short-lived URL a
   * client may GET the content from directly (an object store's presigned GET). The content stays open: `close` it
   * once the client is sent there, or `read` it after all.
   */
  directUrl?(): Promise<string>;
  /**
   * Only where a read can fail before its first byte (an object store's GET): `read`, resolving once the store
   * has answered, so that a caller can still answer otherwise. Rejects (StoreUnavailableError when the store
   * cannot be reached) with the content released, before any byte was read.
   */
  readWhenAnswered?(range?: { start: number; end: number }): Promise<Readable>;
}

/** Room held for a write (the janitor's Reservation): told what is written, released when the write ends. */
export interface WriteReservation {
  /** The write holds this many bytes now. */
  wrote(written: number): void;
  /** The write was committed (its bytes are in the index by now) or discarded. */
  release(): void;
}

export interface WriterOptions {
  /** The length the content must have; unknown (a download with no Content-Length) when absent. */
  expectedSize?: number;
  /** Room held for this write; the writer releases it once it has committed or discarded the content. */
  reservation?: WriteReservation;
  /**
   * Another writer is writing the same content into the same place, and this write follows its bytes (a replica
   * of a fleet on one object store, streaming the download another replica holds). A store whose places are
   * not shared ignores it. One that is (s3-content-store.ts) keeps this write's bytes local, verifies them as
   * ever, and its `commit` then takes the other's content as committed once it is there with this length,
   * or, when it does not appear, makes this write's own verified bytes visible.
   */
  sharedWith?: SharedWrite;
}

/** The other writer of the same content (WriterOptions.sharedWith). */
export interface SharedWrite {
  /** Whether the other writer may still commit (it has not ended): a commit waits for its content meanwhile. */
  pending(): Promise<boolean>;
  /** The longest a commit waits for the other's content before making its own visible. */
  waitMs: number;
}

/**
 * One object being written. Bytes are appended with `write` (one call at a time), and may be read back while
 * the write goes on (`readAt`: readers following a download). Then either `commit` (verified, then visible),
 * or `verify` alone and `abort` (content passing through, checked but not kept), or `abort`. `close` releases
 * what the writer holds; a writer closed before it committed discards its content.
 */
export interface ContentWriter {
  readonly digest: string;
  /** Bytes written so far: what `readAt` may read. */
  readonly written: number;
  /** Appends all of `chunks`, or rejects with the reason it cannot (ENOSPC, EFBIG). */
  write(chunks: readonly Uint8Array[]): Promise<void>;
  /** Reads up to `length` written bytes at `position` into `buffer`; resolves with the count read. */
  readAt(buffer: Buffer, length: number, position: number): Promise<number>;
  /**
   * Checks that what was written is `expectedSize` bytes (when given) hashing to the digest; rejects with
   * ContentMismatchError otherwise, and the content is discarded. Resolves once per writer (later calls share it).
   */
  verify(): Promise<void>;
  /**
   * Verifies (if not done yet), then makes the content visible under its digest, durably. The only way content
   * becomes visible. On any failure, nothing is visible and the content is discarded.
   */
  commit(): Promise<void>;
  /** Discards the content (nothing becomes visible); `readAt` still works until `close`. After a commit: nothing. */
  abort(): Promise<void>;
  /** Releases what the writer holds; discards the content when it was not committed. */
  close(): Promise<void>;
}

/** What was written is not the content its digest names: a wrong length, or (with the right length) other bytes. */
export class ContentMismatchError extends Error {
  readonly digest: string;
  /** Bytes written. */
  readonly size: number;
  readonly expectedSize: number | undefined;
  /** What the bytes hash to, when they had the expected length. */
  readonly actualDigest: string | undefined;

  constructor(digest: string, found: { size: number; expectedSize?: number; actualDigest?: string }) {
    super(
      found.actualDigest !== undefined
        ? `content for ${digest} hashes to ${found.actualDigest}`
        : `content for ${digest} is ${found.size} bytes, not the expected ${found.expectedSize}`,
    );
    this.name = "ContentMismatchError";
    this.digest = digest;
    this.size = found.size;
    this.expectedSize = found.expectedSize;
    this.actualDigest = found.actualDigest;
  }
}

/** Writes small content held in memory (manifests) through a writer: verified and committed, or not at all. */
export async function putContent(store: ContentStore, digest: string, bytes: Uint8Array): Promise<void> {
  const writer = await store.createWriter(digest, { expectedSize: bytes.length });
  try {
    await writer.write([bytes]);
    await writer.commit();
  } finally {
    await writer.close();
  }
}

/**
 * The store cannot be reached now (an object store refusing connections, timing out, answering 5xx): not an
 * answer about the content. Callers that can do without the store (a miss passed through from the upstream,
 * verified) catch it; absent content is `undefined`, never this.
 */
export class StoreUnavailableError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "StoreUnavailableError";
  }
}
