/**
 * Streams a byte range of a file with positional reads, for blob responses (committed files and downloads in
 * progress alike).
 *
 * Why not `fs.createReadStream`: it reads every chunk into a freshly allocated buffer, and for large chunks that
 * means fresh pages from the kernel (page faults, zeroing) for every MiB sent; measured here, that doubles the
 * system CPU time of serving a cached blob. Node has no sendfile for sockets, so the next best thing is to read
 * into a few buffers and reuse them. A buffer can only be reused once the bytes in it have left for the kernel,
 * which a consumer of a plain Readable cannot say; a write callback can. So when this stream is piped into a
 * socket or an HTTP response (which is what Koa does with a body stream), it writes to it directly and returns
 * each buffer to a shared pool from that chunk's write callback. Any other consumer (async iteration, `data`
 * events, a pipe into a Transform, which keeps chunks after its callback) gets ordinary freshly allocated chunks.
 *
 * Memory per response: a write whose bytes the kernel has not all taken keeps its buffer until the client reads
 * them, and a client may stop reading at any moment. At most MAX_IN_FLIGHT writes are outstanding, so a response
 * stalled on a client that stopped reading holds at most MAX_IN_FLIGHT × READ_CHUNK (1 MiB) and its file handle,
 * however long it waits. Two in flight is what keeps a fast client's socket fed: reading the next chunk only once
 * the last one was fully taken cut warm 1 GiB throughput to 0.46–0.90× nginx here, against 1.1–1.9× with two
 * in flight (npm run bench -- --only S2,S5, alternating); 512 KiB chunks served 1 MiB blobs (S5) a little faster
 * than 256 KiB, at the same CPU per byte as 1 MiB.
 */
import type { FileHandle } from "node:fs/promises";
import { Socket } from "node:net";
import { Readable } from "node:stream";
import { toError } from "../caught-errors.ts";

// Not an `import` of node:http: that would load Node's bundled undici at start-up (src/http/server.ts says why).
const { ServerResponse } = process.getBuiltinModule("node:http");
type ServerResponse = InstanceType<typeof ServerResponse>;

/** Size of each read, and of each pooled buffer. */
export const READ_CHUNK = 512 * 1024;
/** Writes outstanding per response: with READ_CHUNK, what a response stalled on its client holds at most. */
export const MAX_IN_FLIGHT = 2;

/**
 * Buffers of READ_CHUNK bytes, reused across responses. Only buffers whose last write has completed are given
 * back; at most `maxIdle` are kept (16 MiB by default), so idle memory is bounded. Buffers lent out are at most
 * MAX_IN_FLIGHT per response.
 */
export class BufferPool {
  private readonly idle: Buffer[] = [];
  private readonly maxIdle: number;
  private lent = 0;

  constructor(maxIdle = 32) {
    this.maxIdle = maxIdle;
  }

  take(): Buffer {
    this.lent++;
    return this.idle.pop() ?? Buffer.allocUnsafeSlow(READ_CHUNK);
  }

  /** Takes `buffer` back for reuse. */
  give(buffer: Buffer): void {
    this.lent--;
    if (this.idle.length < this.maxIdle) this.idle.push(buffer);
  }

  /** A lent buffer that must not be reused (a failed write may not be done with it): left to the GC. */
  discard(): void {
    this.lent--;
  }

  /** Buffers waiting for reuse now. */
  get idleCount(): number {
    return this.idle.length;
  }

  /** Buffers taken and neither given back nor discarded yet: what responses hold now. */
  get lentCount(): number {
    return this.lent;
  }
}

/** A destination the stream writes into itself: one that is done with a chunk when its write callback runs. */
type CallbackDestination = ServerResponse | Socket;

/**
 * Sockets and HTTP responses have sent a chunk's bytes to the kernel when its write callback runs. (A
 * ServerResponse is not a stream.Writable subclass, so this cannot be an instanceof Writable check.)
 */
function consumesOnCallback(dest: unknown): dest is CallbackDestination {
  return dest instanceof ServerResponse || dest instanceof Socket;
}

export abstract class FileRangeStream extends Readable {
  /** Bytes handed to the consumer so far (for the access log and metrics when a client leaves early). */
  bytesRead = 0;
  /** Next file offset to read. */
  protected position: number;
  private readonly pool: BufferPool;
  /** Writing straight into a piped destination (see the file comment). */
  private pumping = false;
  /**
   * Send an HTTP response's headers as soon as it is piped, before the first chunk is read. For content that
   * is still downloading, the first chunk may be a while; a client should not wait for the status meanwhile.
   */
  protected flushHeadersOnPipe = false;
  /** Writes not yet called back, each with what settles it (a destroyed destination may never call back). */
  private readonly pendingWrites = new Map<Promise<void>, () => void>();
  /** The destination this stream writes into itself, while it does (see `pipe`). */
  private destination: CallbackDestination | undefined;

  constructor(pool: BufferPool, start: number) {
    super({ highWaterMark: READ_CHUNK });
    this.pool = pool;
    this.position = start;
  }

  /**
   * How many bytes may be read at `position` now (more than 0), or 0 at the end of the range. Waits while
   * nothing new is readable; rejects when the content has failed.
   */
  protected abstract available(position: number): Promise<number>;

  /** Reads up to `length` bytes at `position` into `buffer`; resolves with the count read. */
  protected abstract readInto(buffer: Buffer, length: number, position: number): Promise<number>;

  /** Releases what the stream holds (a file handle, a reference to a download). Called once. */
  protected abstract release(): void;

  override _read(): void {
    if (this.pumping) return;
    this.readChunk().then(
      (chunk) => this.push(chunk),
      (err: unknown) => this.destroy(toError(err)),
    );
  }

  private async readChunk(): Promise<Buffer | null> {
    const available = await this.available(this.position);
    if (available === 0 || this.destroyed) return null;
    const buffer = Buffer.allocUnsafe(Math.min(READ_CHUNK, available));
    const got = await this.readInto(buffer, buffer.length, this.position);
    if (got === 0) throw new Error(`file ended at ${this.position}, before the bytes recorded as written`);
    this.position += got;
    this.bytesRead += got;
    return got === buffer.length ? buffer : buffer.subarray(0, got);
  }

  override pipe<T extends NodeJS.WritableStream>(dest: T, options?: { end?: boolean }): T {
    // Only a fresh stream into a socket-like destination is pumped by the stream itself; everything else is a Readable.
    const fresh = !this.pumping && this.readableFlowing === null && this.readableLength === 0 && !this.destroyed;
    if (!fresh || !consumesOnCallback(dest)) return super.pipe(dest, options);
    this.pumping = true;
    this.destination = dest;
    dest.emit("pipe", this);
    if (this.flushHeadersOnPipe && dest instanceof ServerResponse && !dest.headersSent) dest.flushHeaders();
    void this.pump(dest, options?.end !== false);
    return dest;
  }

  private async pump(dest: CallbackDestination, end: boolean): Promise<void> {
    try {
      for (;;) {
        const available = await this.available(this.position);
        if (this.destroyed) return;
        if (available === 0) break;
        // The next chunk is read while earlier ones are still being sent, up to MAX_IN_FLIGHT of them (see
        // "Memory per response" in the file comment).
        if (this.pendingWrites.size >= MAX_IN_FLIGHT) await Promise.race(this.pendingWrites.keys());
        if (this.destroyed) return;
        const buffer = this.pool.take();
        let got: number;
        try {
          got = await this.readInto(buffer, Math.min(buffer.length, available), this.position);
        } catch (err) {
          this.pool.give(buffer); // never handed to anyone
          throw err;
        }
        if (this.destroyed || got === 0) {
          this.pool.give(buffer);
          if (this.destroyed) return;
          throw new Error(`file ended at ${this.position}, before the bytes recorded as written`);
        }
        this.position += got;
        this.bytesRead += got;
        void this.write(dest, got === buffer.length ? buffer : buffer.subarray(0, got), buffer);
      }
      await Promise.all(this.pendingWrites.keys());
      if (this.destroyed) return;
      // Ends the Readable side too, so whoever watches it (stream.pipeline in Koa) sees a normal end.
      this.push(null);
      this.resume();
      if (end) dest.end();
    } catch (err) {
      this.destroy(toError(err));
    }
  }

  /**
   * Whether `sendNow` may write now: this stream writes into its destination itself, and the destination is open
   * with at most `backlog` bytes queued that the kernel has not taken yet.
   */
  protected canSendNow(backlog: number): boolean {
    const dest = this.destination;
    return dest !== undefined && !this.destroyed && !dest.destroyed && dest.writableLength <= backlog;
  }

  /**
   * Writes `chunks`, `bytes` in all, the bytes at `position` (a subclass holding them in memory: no read), to the
   * destination at once, corked so that they leave in one system call, and moves `position` past them. Only
   * while `canSendNow` and while the subclass's `available` is waiting (no read of this stream is in progress).
   * The chunks are the caller's, never pooled; the destination holds them only until the kernel took them.
   */
  protected sendNow(chunks: readonly Uint8Array[], bytes: number): void {
    const dest = this.destination!;
    dest.cork();
    for (const chunk of chunks) dest.write(chunk);
    dest.uncork();
    this.position += bytes;
    this.bytesRead += bytes;
  }

  /** Resolves when `chunk` has been written (or the stream was destroyed); recycles `buffer` only after a successful write. */
  private write(dest: CallbackDestination, chunk: Buffer, buffer: Buffer): Promise<void> {
    let settle!: () => void;
    const written = new Promise<void>((resolve) => (settle = resolve));
    this.pendingWrites.set(written, settle);
    dest.write(chunk, (err) => {
      this.pendingWrites.delete(written);
      if (err === null || err === undefined) this.pool.give(buffer);
      else this.pool.discard();
      settle();
    });
    return written;
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // A destination that was destroyed may never call back: nothing may wait for it.
    for (const settle of this.pendingWrites.values()) settle();
    this.pendingWrites.clear();
    this.release();
    cb(err);
  }
}

/** Bytes `[start, end]` (inclusive) of a committed file; the stream owns the handle and closes it when done. */
export class FileHandleRangeStream extends FileRangeStream {
  private readonly handle: FileHandle;
  /** Exclusive end. */
  private readonly stop: number;

  constructor(pool: BufferPool, handle: FileHandle, start: number, end: number) {
    super(pool, start);
    this.handle = handle;
    this.stop = end + 1;
  }

  protected override available(position: number): Promise<number> {
    return Promise.resolve(Math.max(0, this.stop - position));
  }

  protected override async readInto(buffer: Buffer, length: number, position: number): Promise<number> {
    return (await this.handle.read(buffer, 0, length, position)).bytesRead;
  }

  protected override release(): void {
    this.handle.close().catch(() => undefined);
  }
}
