/**
 * One upstream download per digest at a time, shared by every reader.
 *
 * A `Fill` owns the upstream response. It writes it into a writer of the content store (content-store.ts), and
 * wakes its readers after every write. Each reader reads what the writer holds (positional reads of its temp
 * file, on the filesystem), from its start offset up to what has been written, then waits for more: a late
 * joiner gets what is already on disk at disk speed, then follows the download.
 *
 * When the upstream ends, the writer's commit checks size and sha256 and makes the content visible under its
 * digest; readers keep reading through the writer until they are done. (How the store hashes and flushes a
 * large download so that the commit follows the last byte closely is the store's business: blob-store.ts.) On
 * any mismatch or upstream error, readers are destroyed (clients see a broken transfer and retry) and the
 * writer discards what it held: nothing is committed. Content that verified but that the store could not keep
 * (its commit failed: the object store full or unreachable) is served to its readers all the same, and kept
 * nowhere (`passed`).
 *
 * No reader completes before the content is verified: every reader holds back its own last byte (the end of its
 * range, not only the blob's last byte) until the fill has verified and committed the content (or verified it
 * and spent COMMIT_HOLD_MS committing it), and a reader with nothing to read (the empty blob) ends only then. A
 * client therefore never receives a complete-looking response, 200 or 206, of content that failed verification.
 * (A 0-byte response is complete the moment its headers leave: the blob cache answers one only once the fill
 * has verified.) Content announced for the empty blob is refused before it is downloaded.
 *
 * A client that goes away ends only its own reader. The fill runs under its own timeout, independent of any
 * client, so the next pull is a hit.
 *
 * A download is cached only in room the janitor reserved for it (FillAdmission), held until it is committed or
 * fails. One of unknown size that outgrows what can be reserved goes on for its readers, verified as ever, but
 * is not committed (`reserve`). Every failure after the upstream answered releases its body at once.
 */
import { type Readable, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Logger } from "pino";
import { timerDelay } from "../config/timer-delay.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { ReceivePacer } from "./receive-pacer.ts";
import { discardBody } from "../upstream/response-body.ts";
import { EMPTY_DIGEST } from "../oci/digest.ts";
import {
  ContentMismatchError,
  type ContentStore,
  type ContentWriter,
  type SharedWrite,
  type WriteReservation,
} from "../storage/content-store.ts";
import { FileRangeStream, MAX_IN_FLIGHT, READ_CHUNK, type BufferPool } from "../storage/file-range-stream.ts";
import { toError } from "../caught-errors.ts";

export interface UpstreamBlob {
  /** Content-Length announced by the upstream, when it sent one. */
  size: number | undefined;
  body: Readable;
  /**
   * The body is another replica's download, which that replica commits to the store this one shares: the
   * fill's writer follows it (WriterOptions.sharedWith) instead of uploading the same bytes again.
   */
  shared?: SharedWrite;
}

/** Opens the upstream response; must reject with a RegistryError (e.g. BLOB_UNKNOWN) when there is no blob. */
export type OpenUpstreamBlob = (signal: AbortSignal) => Promise<UpstreamBlob>;

/**
 * `uncached`: there was no room to cache; the upstream body goes to one client, verified, and is not stored.
 * `passing`: a download of unknown size outgrew the room the budget could reserve; it goes on for its readers,
 * through its writer as before, but will not be committed. `passed`: such a download verified, or a verified
 * download the store failed to commit; the writer has discarded it, and its readers finish reading through the
 * writer.
 */
export type FillState = "connecting" | "streaming" | "passing" | "committed" | "passed" | "failed" | "uncached";

/**
 * Room held for a download being cached (the janitor's Reservation). The fill's writer is told what is written
 * and releases it once the download is committed (its bytes are counted as cached by then) or discarded.
 */
export interface FillReservation extends WriteReservation {
  /** Bytes held now. */
  readonly bytes: number;
  /** Holds room for `total` bytes in all; false (nothing changed) when there is none. */
  grow(total: number): Promise<boolean>;
  /** The download will not be committed: its room stops counting against the budget (the disk only). */
  stopCaching(): void;
}

/** Room in the cache budget for downloads (the janitor). */
export interface FillAdmission {
  /** Room to cache a download of this size (undefined: unknown), or undefined: no room, do not cache it. */
  admit(size: number | undefined): Promise<FillReservation | undefined>;
  /** A write failed for lack of space. */
  noSpace(err: Error): void;
}

/** What every fill works with: built once by the composition root, shared by all the coordinator's fills. */
export interface FillContext {
  /** Where downloads are written, verified and committed. */
  store: ContentStore;
  /** Read buffers of the readers following downloads (file-range-stream.ts). */
  buffers: BufferPool;
  /** Asks for young-generation collections as upstream bytes arrive (receive-pacer.ts). */
  pacer: ReceivePacer;
  /** Room in the cache budget; without it every download is cached. */
  admission?: FillAdmission;
  /** How long one download may take, whoever reads it. */
  timeoutMs: number;
  /** Clients reading one download at a time before 429; unbounded when absent. */
  maxReaders?: number;
  log: Logger;
  metrics?: Metrics;
}

/** Who started a fill: readers from the same upstream repository may join it without a further check. */
export interface FillOrigin {
  upstream: string;
  repo: string;
}

/**
 * One download. Its state is read-only to everyone else: a caller asks it a question (`state`, `verified`,
 * `createReader`) at one instant and acts on the answer before its next await.
 */
export class Fill {
  readonly digest: string;
  readonly origin: FillOrigin;
  /** Resolves when the upstream has answered 200 and the writer exists; rejects with the upstream's error. */
  readonly ready: Promise<void>;
  /** Resolves once committed, rejects when the fill failed. */
  readonly done: Promise<void>;

  private readonly context: FillContext;
  private phase: FillState = "connecting";
  private announcedSize: number | undefined;
  private failure: Error | undefined;
  /** The download's write into the store, from `ready` on; readers read it through `readAt`. */
  private writer: ContentWriter | undefined;
  /** The fill itself holds one reference until it ends; each reader holds one while open. */
  private refs = 1;
  private readerCount = 0;
  /**
   * The batch of chunks being written to the temp file now, from offset `at` (exclusive `end`): readers that have
   * read everything written are sent these bytes from memory meanwhile. Held only while the write holds them.
   */
  private batch: { chunks: readonly Buffer[]; at: number; end: number } | undefined;
  private waiters: Array<() => void> = [];
  private resolveReady!: () => void;
  /** In `uncached` state: the upstream response, for the one request that takes it. */
  private uncachedResponse: UpstreamBlob | undefined;
  private rejectReady!: (err: Error) => void;
  /** Room held for the download while it is cached (or passing through); none without admission. */
  private reservation: FillReservation | undefined;
  /** Ends the download: its timeout, or (passing) the last reader going away. */
  private readonly abort = new AbortController();
  private hadReaders = false;
  /** Verified, and its commit has taken longer than COMMIT_HOLD_MS: readers may finish before it ends. */
  private releasedBeforeCommit = false;
  /** In `passed` state: why the verified content was not kept. */
  private passReason = "";

  constructor(digest: string, origin: FillOrigin, context: FillContext) {
    this.digest = digest;
    this.origin = origin;
    this.context = context;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.done = this.ready.then(() => new Promise<void>((resolve, reject) => this.waitUntilEnded(resolve, reject)));
    // Failures are delivered to whoever awaits; these keep an unobserved rejection from crashing the process.
    this.ready.catch(() => undefined);
    this.done.catch(() => undefined);
  }

  get state(): FillState {
    return this.phase;
  }

  /** Size announced by the upstream (the size committed, once it is); undefined until `ready`, or when none was. */
  get size(): number | undefined {
    return this.announcedSize;
  }

  /** Why the fill failed, once it has. */
  get error(): Error | undefined {
    return this.failure;
  }

  /** Bytes written so far: what readers may read. */
  get written(): number {
    return this.writer?.written ?? 0;
  }

  /** Readers attached now (for metrics). */
  get readers(): number {
    return this.readerCount;
  }

  /** A getter rather than a state comparison, so callers re-read it after an await. */
  get committed(): boolean {
    return this.state === "committed";
  }

  /**
   * What a new reader of this ready fill gets, decided at one instant (act on it before the next await): the
   * download in progress (streaming into the store, or passing through to its readers), the committed content, or
   * nothing of this fill's ("uncached": no room to cache, so its body went to one request, or it passed its
   * download through and kept nothing). A fill that failed since it was ready throws its error, as its readers get.
   */
  readableAs(): "download" | "committed" | "uncached" {
    if (this.state === "failed") throw this.failure ?? new Error(`blob fill of ${this.digest} failed`);
    if (this.committed) return "committed";
    return this.state === "uncached" || this.state === "passed" ? "uncached" : "download";
  }

  /** Streaming into the store (not passing through, not ended). A getter, re-read after every await (see `committed`). */
  private get caching(): boolean {
    return this.state === "streaming";
  }

  /** Still receiving from the upstream. */
  get downloading(): boolean {
    return this.state === "connecting" || this.state === "streaming" || this.state === "passing";
  }

  /** The content is complete and verified: readers may have its last byte. */
  get verified(): boolean {
    return this.state === "committed" || this.state === "passed" || this.releasedBeforeCommit;
  }

  private get ended(): boolean {
    return (
      this.state === "committed" || this.state === "passed" || this.state === "failed" || this.state === "uncached"
    );
  }

  /**
   * A stream of bytes `[start, end]` (inclusive; `end` undefined = to the end of the blob). Only valid after
   * `ready` and before the fill has committed (after that, read the committed content instead). Throws
   * TOOMANYREQUESTS when `maxReaders` clients are reading it already.
   */
  createReader(start: number, end: number | undefined): Readable {
    if (this.writer === undefined || this.ended) throw new Error(`fill ${this.digest} is ${this.state}, not readable`);
    const maxReaders = this.context.maxReaders ?? Infinity;
    if (this.readerCount >= maxReaders) {
      throw new RegistryError("TOOMANYREQUESTS", `too many clients are reading this download (${maxReaders})`, {
        headers: { "Retry-After": "5" },
      });
    }
    this.refs++;
    this.readerCount++;
    this.hadReaders = true;
    return new FillReader(this, this.context.buffers, start, end);
  }

  /** @internal the reader's view: reads up to `length` written bytes at `position` into `buffer`. */
  readInto(buffer: Buffer, length: number, position: number): Promise<number> {
    return this.writer!.readAt(buffer, length, position);
  }

  /**
   * @internal the received bytes `[from, to)` as views of the chunks being written now, or undefined when they
   * are not all in that batch.
   */
  received(from: number, to: number): Buffer[] | undefined {
    const batch = this.batch;
    if (batch === undefined || from < batch.at || to > batch.end || from >= to) return undefined;
    const views: Buffer[] = [];
    let offset = batch.at;
    for (const chunk of batch.chunks) {
      const chunkEnd = offset + chunk.length;
      if (chunkEnd > from && offset < to)
        views.push(
          offset >= from && chunkEnd <= to
            ? chunk
            : chunk.subarray(Math.max(from - offset, 0), Math.min(to, chunkEnd) - offset),
        );
      offset = chunkEnd;
      if (offset >= to) break;
    }
    return views;
  }

  /** @internal where the batch being written ends (exclusive), or undefined while none is. */
  get receivedTo(): number | undefined {
    return this.batch?.end;
  }

  /** @internal resolves at the next batch received, write, commit or failure. */
  changed(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** @internal a reader is done with the temp file. */
  releaseReader(): void {
    this.readerCount--;
    if (this.unread) this.abort.abort(this.unreadError());
    this.release();
  }

  /** A download passing through uncached exists for its readers only: once they have all gone, it stops. */
  private get unread(): boolean {
    return this.state === "passing" && this.hadReaders && this.readerCount === 0;
  }

  private unreadError(): Error {
    return new RegistryError("UNAVAILABLE", `every client reading the uncached download of ${this.digest} has gone`);
  }

  private release(): void {
    this.refs--;
    if (this.refs === 0 && this.writer !== undefined) this.writer.close().catch(() => undefined);
  }

  /** @internal */
  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** In `uncached` state, hands the upstream response to the first caller; later callers get undefined. */
  takeUncached(): UpstreamBlob | undefined {
    const response = this.uncachedResponse;
    this.uncachedResponse = undefined;
    return response;
  }

  /** @internal called by the coordinator; the whole download → verify → commit lifecycle. */
  async run(open: OpenUpstreamBlob, slots: Slots | undefined): Promise<void> {
    const { store, admission, timeoutMs, log, metrics } = this.context;
    const abort = this.abort;
    const timer = setTimeout(
      () => abort.abort(new RegistryError("UNAVAILABLE", `blob download exceeded the fill timeout (${timeoutMs} ms)`)),
      timerDelay(timeoutMs),
    );
    timer.unref();
    let slot: (() => void) | undefined;
    /** The upstream response while this fill owns it: every failure must release its body (and connection). */
    let upstream: UpstreamBlob | undefined;
    try {
      slot = await slots?.acquire();
      upstream = await open(abort.signal);
      // Content announced for the empty blob cannot verify: refused before anything is downloaded. (The other
      // impossible announcement, 0 bytes for any other digest, costs nothing to download and fails verification
      // at once; its readers hold their end until then, as every reader does.)
      if (this.digest === EMPTY_DIGEST && upstream.size !== undefined && upstream.size > 0) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream announced ${upstream.size} bytes for the empty blob ${this.digest}`,
        );
      }
      this.announcedSize = upstream.size;
      this.reservation = await admission?.admit(upstream.size);
      if (admission && !this.reservation) {
        // No room: the response goes to one client uncached. The overall fill timeout no longer applies (the
        // client's own connection paces it); a client that stops reading is cut off by the pass-through's stall
        // watchdog (verify-stream.ts), since undici's body-idle timeout does not run while the body is paused.
        clearTimeout(timer);
        this.uncachedResponse = upstream;
        upstream = undefined;
        this.phase = "uncached";
        this.resolveReady();
        return;
      }
      // The store verifies length and digest in the writer's commit; the reservation is the writer's to release.
      this.writer = await store.createWriter(this.digest, {
        expectedSize: upstream.size,
        reservation: this.reservation,
        ...(upstream.shared !== undefined ? { sharedWith: upstream.shared } : {}),
      });
      this.phase = "streaming";
      this.resolveReady();

      await pipeline(upstream.body, this.sink(this.writer), { signal: abort.signal });
      if (!this.caching) {
        // Verified: its readers may now have the last byte, through the writer. Never stored.
        await upstreamVerified(this.writer.verify(), this.digest);
        await this.writer.abort();
        this.passReason = "its download outgrew the cache budget";
        this.phase = "passed";
        log.info(
          { digest: this.digest, bytes: this.written },
          "blob served uncached: its download outgrew the cache budget",
        );
        return;
      }
      await upstreamVerified(this.writer.verify(), this.digest);
      // Readers' last bytes wait for the commit, so that a pull that completed finds the content cached on its
      // next request; but only for COMMIT_HOLD_MS: a slower commit (completing a large multipart upload on a slow
      // object store) must not leave clients idle until their connections time out. The content is verified.
      const hold = setTimeout(() => {
        this.releasedBeforeCommit = true;
        this.notify();
      }, COMMIT_HOLD_MS);
      try {
        await this.writer.commit();
      } catch (err) {
        // The content is verified; only keeping it failed (the object store full or unreachable, the disk gone
        // read-only). Its readers still get every byte, through the writer, as a download passed through does:
        // failing them would send every client back to the upstream for the same bytes, to fail again at the end.
        if ((err as NodeJS.ErrnoException).code === "ENOSPC") admission?.noSpace(err as Error);
        await this.writer.abort().catch(() => undefined);
        this.passReason = `it could not be stored: ${toError(err).message}`;
        this.phase = "passed";
        log.warn(
          { digest: this.digest, bytes: this.written, err: toError(err).message },
          "blob served uncached: it was verified but could not be stored",
        );
        return;
      } finally {
        clearTimeout(hold);
      }
      this.announcedSize = this.written;
      this.phase = "committed";
      log.debug({ digest: this.digest, bytes: this.written }, "blob committed");
    } catch (err) {
      // Whatever failed (admission, the temp file, the download, verification), the upstream body is released
      // now, not at undici's body-idle timeout. One that was read to its end or already destroyed is unaffected.
      if (upstream) discardBody(upstream.body);
      if ((err as NodeJS.ErrnoException).code === "ENOSPC") admission?.noSpace(err as Error);
      // Clean up first: once `failed` is visible, nothing of this fill may remain in the store.
      await this.writer?.abort().catch(() => undefined);
      // Aborted (timeout, readers gone): the reason says why; pipeline only reports "The operation was aborted".
      this.failure = toError(abort.signal.aborted ? abort.signal.reason : err);
      this.phase = "failed";
      this.rejectReady(this.failure);
      log.warn(
        { digest: this.digest, err: this.failure.message, bytes: this.written },
        "blob fill failed; nothing committed",
      );
    } finally {
      // A writer has released the reservation by now (committed or discarded); without one, it is released here.
      if (this.writer === undefined) this.reservation?.release();
      slot?.();
      clearTimeout(timer);
      if (this.state !== "uncached")
        metrics?.fills.inc({
          upstream: this.origin.upstream,
          result: this.state === "passed" ? "uncached" : this.state === "committed" ? "committed" : "failed",
        });
      this.notify();
      this.release();
    }
  }

  private waitUntilEnded(resolve: () => void, reject: (err: Error) => void): void {
    if (this.state === "committed") resolve();
    else if (this.state === "failed") reject(this.failure!);
    else if (this.state === "passed")
      reject(new Error(`blob ${this.digest} was served but not cached: ${this.passReason}`));
    else void this.changed().then(() => this.waitUntilEnded(resolve, reject));
  }

  /**
   * Holds room for `total` bytes of a download of unknown size, as they arrive. Past what the budget can hold
   * it stops being cached ("passing") but goes on for its readers, who still get every byte, verified, through
   * the temp file; the file is deleted instead of committed. Past what the disk can hold as well, it fails.
   *
   * Why not switch to a plain pass-through with no temp file: every reader follows the download through that
   * file at its own pace (a late joiner, a Range, the hash worker), so dropping it mid-download would break
   * them all; the file is bounded by the disk's headroom instead of the budget, and lives only as long as the
   * download and its readers.
   */
  private async reserve(reservation: FillReservation, total: number): Promise<void> {
    if (await reservation.grow(total)) return;
    if (this.state === "streaming") {
      reservation.stopCaching();
      this.phase = "passing";
      this.context.metrics?.uncachedServed.inc({ upstream: this.origin.upstream });
      this.context.log.info(
        { digest: this.digest, bytes: total },
        "download of unknown size outgrew the cache budget: passing it through uncached",
      );
      if (this.unread) throw this.unreadError();
      if (await reservation.grow(total)) return;
    }
    throw new RegistryError(
      "UNAVAILABLE",
      `no room on the disk for the download of ${this.digest} (${total} bytes so far)`,
    );
  }

  /** Writes each batch of chunks into the store (which hashes them as it writes), then wakes readers. */
  private sink(writer: ContentWriter): Writable {
    const { pacer, metrics } = this.context;
    const write = async (chunks: Buffer[]): Promise<void> => {
      let total = 0;
      for (const chunk of chunks) total += chunk.length;
      if (this.size !== undefined && writer.written + total > this.size) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent more than the announced ${this.size} bytes for ${this.digest}`,
        );
      }
      // Only a download of unknown size outgrows its reservation (the check above stops any other).
      if (this.reservation && writer.written + total > this.reservation.bytes)
        await this.reserve(this.reservation, writer.written + total);
      // Readers that have read everything written are sent these bytes from memory while the file write runs.
      this.batch = { chunks, at: writer.written, end: writer.written + total };
      this.notify();
      try {
        await writer.write(chunks);
      } finally {
        this.batch = undefined;
      }
      pacer.received(total); // these chunks are garbage now: see receive-pacer.ts
      metrics?.upstreamFetchedBytes.inc({ upstream: this.origin.upstream, kind: "blob" }, total);
      this.notify();
    };
    return new Writable({
      highWaterMark: 4 * 1024 * 1024,
      write: (chunk: Buffer, _enc, cb) => void write([chunk]).then(() => cb(), cb),
      writev: (chunks, cb) => void write(chunks.map((c) => c.chunk as Buffer)).then(() => cb(), cb),
    });
  }
}

/**
 * Streams `[start, end]` of a download, following it (file-range-stream.ts does the I/O).
 *
 * Two ways to the same bytes, under the same rule. A reader that has read everything written is sent the batch
 * of chunks the fill is writing to its temp file now, from those chunks, while the write runs: no copy, no read
 * back, and nothing held that the write does not hold anyway. One that is behind (it joined late, or its client
 * has not taken what it was sent) reads the temp file up to what has been written, and is sent from memory again
 * once it has caught up. Either way its last byte is only sent once the fill has verified the content.
 */
class FillReader extends FileRangeStream {
  private readonly fill: Fill;
  private readonly end: number | undefined;
  private released = false;

  constructor(fill: Fill, buffers: BufferPool, start: number, end: number | undefined) {
    super(buffers, start);
    this.fill = fill;
    this.end = end;
    this.flushHeadersOnPipe = true;
  }

  /**
   * Bytes readable at `position` now, or 0 at the end; waits while nothing new is readable.
   * Bytes up to `written` are readable, except that this reader's last byte is held back until the fill has
   * verified the content (committed it, or passed it through), and the end (0) is only reported once it has. That
   * single rule is what makes a response that completes, whatever its range, imply verified content.
   *
   * Bytes received but not written yet are sent from memory here (`sendNow`, which moves the position), so the
   * position is read afresh on every turn.
   */
  protected override async available(): Promise<number> {
    for (;;) {
      const fill = this.fill;
      const position = this.position;
      if (fill.state === "failed") throw fill.error ?? new Error("blob fill failed");
      const verified = fill.verified;
      const total = verified ? fill.written : fill.size; // blob size, when known
      const requested = this.end === undefined ? Infinity : this.end + 1;
      const stop = Math.min(requested, total ?? Infinity); // exclusive end of this reader
      if (verified) {
        if (position >= stop) return 0;
        return Math.min(fill.written, stop) - position;
      }
      // Unverified: up to this reader's last byte, exclusive; with no known end, any written byte may be the last.
      const limit = stop === Infinity ? fill.written - 1 : Math.min(fill.written, stop - 1);
      if (position < limit) return limit - position;
      // Everything written is read: the bytes being written now are sent from memory, short of the last byte,
      // while the client has taken what it was sent. (With no known end, any byte may be the last: none is.)
      const to = stop === Infinity ? 0 : Math.min(fill.receivedTo ?? 0, stop - 1);
      const views = position < to && this.canSendNow(MEMORY_BACKLOG) ? fill.received(position, to) : undefined;
      if (views !== undefined) {
        this.sendNow(views, to - position);
        continue;
      }
      await fill.changed();
      if (this.destroyed) return 0;
    }
  }

  protected override readInto(buffer: Buffer, length: number, position: number): Promise<number> {
    return this.fill.readInto(buffer, length, position);
  }

  protected override release(): void {
    if (this.released) return;
    this.released = true;
    this.fill.releaseReader();
  }
}

/**
 * A reader is sent received bytes from memory only while its client holds at most this many bytes it was sent and
 * has not taken: a client slower than the download reads the temp file instead, and the fill's chunks do not
 * pile up in its socket. (The same bound as a reader of the file has in flight: MAX_IN_FLIGHT × READ_CHUNK.)
 */
const MEMORY_BACKLOG = MAX_IN_FLIGHT * READ_CHUNK;

/**
 * How long readers' last bytes wait for the commit of verified content. A filesystem commit takes milliseconds;
 * completing a multipart upload of a large blob on a slow object store can take minutes, longer than a client's
 * idle timeout.
 */
const COMMIT_HOLD_MS = 1_000;

export class FillCoordinator {
  private readonly context: FillContext;
  /** In-flight fills, and committed ones for a short grace period (see `start`). */
  private readonly fills = new Map<string, Fill>();
  private readonly graceMs: number;
  private readonly slots = new Map<string, Slots>();
  private readonly limits: { maxFills: (upstream: string) => number; maxQueued: number } | undefined;

  constructor(
    context: FillContext,
    opts: {
      committedGraceMs?: number;
      /** Concurrent downloads per upstream, and how many may wait for a slot before 429. */
      limits?: { maxFills: (upstream: string) => number; maxQueued: number };
    } = {},
  ) {
    this.context = context;
    this.limits = opts.limits;
    this.graceMs = opts.committedGraceMs ?? 5_000;
    // A committed fill kept for its grace period must not point requests at content that was just evicted.
    context.store.onDelete((digest) => {
      if (this.fills.get(digest)?.committed) this.fills.delete(digest);
    });
  }

  /** The fill for `digest` if one is running (or committed moments ago); failed fills are never returned. */
  current(digest: string): Fill | undefined {
    const fill = this.fills.get(digest);
    return fill && fill.state !== "failed" && fill.state !== "uncached" && fill.state !== "passed" ? fill : undefined;
  }

  /**
   * Starts the one download of `digest`. Callers check `current()` first; the synchronous check-then-set here
   * makes a second call for the same digest return the running fill instead of starting another.
   */
  start(digest: string, origin: FillOrigin, open: OpenUpstreamBlob): Fill {
    const existing = this.current(digest);
    if (existing) return existing;
    const fill = new Fill(digest, origin, this.context);
    this.fills.set(digest, fill);
    void fill.run(open, this.slotsFor(origin.upstream)).finally(() => {
      if (fill.state !== "committed") {
        if (this.fills.get(digest) === fill) this.fills.delete(digest);
        return;
      }
      // A committed fill stays visible briefly: a request that missed the store just before the rename finds it
      // here, sees `committed` and reads the final file, instead of starting a second download.
      const timer = setTimeout(() => {
        if (this.fills.get(digest) === fill) this.fills.delete(digest);
      }, this.graceMs);
      timer.unref();
    });
    return fill;
  }

  private slotsFor(upstream: string): Slots | undefined {
    if (!this.limits) return undefined;
    let slots = this.slots.get(upstream);
    if (!slots) this.slots.set(upstream, (slots = new Slots(this.limits.maxFills(upstream), this.limits.maxQueued)));
    return slots;
  }

  /** Client responses reading from fills now. */
  get readers(): number {
    let n = 0;
    for (const fill of this.fills.values()) n += fill.readers;
    return n;
  }

  /** Fills still downloading. */
  get inFlight(): number {
    let n = 0;
    for (const fill of this.fills.values()) if (fill.downloading) n++;
    return n;
  }

  /** The downloads running now, with their progress (for the console's overview). */
  downloading(): Array<{
    digest: string;
    upstream: string;
    repository: string;
    written: number;
    size: number | undefined;
    readers: number;
  }> {
    const out = [];
    for (const fill of this.fills.values())
      if (fill.downloading)
        out.push({
          digest: fill.digest,
          upstream: fill.origin.upstream,
          repository: fill.origin.repo,
          written: fill.written,
          size: fill.size,
          readers: fill.readers,
        });
    return out;
  }

  /** Waits (bounded) for running fills to end, for a graceful shutdown. */
  async drain(timeoutMs: number): Promise<void> {
    const running = [...this.fills.values()].filter((f) => f.downloading);
    if (running.length === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled(running.map((f) => f.done)),
      new Promise((resolve) => (timer = setTimeout(resolve, timerDelay(timeoutMs)))),
    ]);
    clearTimeout(timer);
  }
}

/**
 * A counting semaphore with a bounded wait queue: at most `max` downloads per upstream run at once, at most
 * `maxQueued` wait, and beyond that a request is refused with 429 rather than piling up without bound.
 */
export class Slots {
  private readonly max: number;
  private readonly maxQueued: number;
  private running = 0;
  private readonly queue: Array<() => void> = [];

  constructor(max: number, maxQueued: number) {
    this.max = max;
    this.maxQueued = maxQueued;
  }

  /** Resolves with a release function once a slot is free. */
  async acquire(): Promise<() => void> {
    if (this.running >= this.max) {
      if (this.queue.length >= this.maxQueued) {
        throw new RegistryError(
          "TOOMANYREQUESTS",
          `too many downloads are waiting for this upstream (${this.maxQueued})`,
          { headers: { "Retry-After": "5" } },
        );
      }
      await new Promise<void>((resolve) => this.queue.push(resolve));
    } else {
      this.running++;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      if (next)
        next(); // the slot passes straight to the next waiter
      else this.running--;
    };
  }
}

/** The store found the content is not what its digest names: the upstream sent it, so the error is the upstream's. */
async function upstreamVerified(verification: Promise<void>, digest: string): Promise<void> {
  try {
    await verification;
  } catch (err) {
    if (!(err instanceof ContentMismatchError)) throw err;
    throw new RegistryError(
      "UPSTREAM_ERROR",
      err.actualDigest !== undefined
        ? `upstream content for ${digest} hashes to ${err.actualDigest}`
        : `upstream sent ${err.size} of ${err.expectedSize} bytes for ${digest}`,
    );
  }
}
