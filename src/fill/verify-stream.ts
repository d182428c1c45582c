/**
 * Verifies content that is streamed to a client without being cached (the disk is full, or the budget cannot
 * take it): sha256 and length are checked as the bytes pass, and the last chunk is held back until they match,
 * so a client never receives a complete-looking copy of wrong content.
 *
 * Such a stream holds an upstream connection for as long as its reader takes. undici's body timeout cannot end
 * that when the reader stops: it only runs while the body flows, and backpressure pauses it. So this stream
 * keeps its own watchdog: when its output is full and the reader has taken nothing for `stallTimeoutMs` (the
 * upstream's body-idle timeout), it fails, which (through the pipeline it is in) destroys the upstream body,
 * releasing that connection, and breaks the client's transfer.
 */
import { createHash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { timerDelay } from "../config/timer-delay.ts";
import { RegistryError } from "../oci/errors.ts";
import type { ReceivePacer } from "./receive-pacer.ts";

/** The default stall timeout: the default of `upstreams.<name>.timeouts.bodyIdle`. */
const DEFAULT_STALL_TIMEOUT_MS = 60_000;

export class VerifyStream extends Transform {
  private readonly digest: string;
  private readonly expectedSize: number | undefined;
  private readonly stallTimeoutMs: number;
  private readonly pacer: ReceivePacer | undefined;
  private readonly hash = createHash("sha256");
  private held: Buffer | undefined;
  bytesRead = 0;
  private seen = 0;
  /** Bytes received from the upstream so far (bytesRead: those handed on to the reader). */
  get received(): number {
    return this.seen;
  }
  /** Running while the output is full and waiting for the reader. */
  private stallTimer: NodeJS.Timeout | undefined;

  constructor(
    digest: string,
    expectedSize: number | undefined,
    opts: { stallTimeoutMs?: number; pacer?: ReceivePacer } = {},
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.digest = digest;
    this.expectedSize = expectedSize;
    this.stallTimeoutMs = opts.stallTimeoutMs ?? DEFAULT_STALL_TIMEOUT_MS;
    this.pacer = opts.pacer;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.seen += chunk.length;
    this.pacer?.received(chunk.length); // upstream bytes passing through, garbage once sent: receive-pacer.ts
    if (this.expectedSize !== undefined && this.seen > this.expectedSize) {
      cb(
        new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent more than the announced ${this.expectedSize} bytes for ${this.digest}`,
        ),
      );
      return;
    }
    const out = this.held;
    this.held = chunk;
    if (out) this.bytesRead += out.length;
    cb(null, out);
    // Full output: the upstream side now waits for the reader (Transform calls _read when it takes more).
    if (this.readableLength >= this.readableHighWaterMark) this.armStallTimer();
  }

  override _read(size: number): void {
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    super._read(size);
  }

  override _flush(cb: TransformCallback): void {
    const actual = `sha256:${this.hash.digest("hex")}`;
    if (this.expectedSize !== undefined && this.seen !== this.expectedSize) {
      cb(
        new RegistryError(
          "UPSTREAM_ERROR",
          `upstream sent ${this.seen} of ${this.expectedSize} bytes for ${this.digest}`,
        ),
      );
      return;
    }
    if (actual !== this.digest) {
      cb(new RegistryError("UPSTREAM_ERROR", `upstream content for ${this.digest} hashes to ${actual}`));
      return;
    }
    if (this.held) this.bytesRead += this.held.length;
    cb(null, this.held);
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    clearTimeout(this.stallTimer);
    super._destroy(err, cb);
  }

  private armStallTimer(): void {
    if (this.stallTimer !== undefined || this.destroyed) return;
    this.stallTimer = setTimeout(() => {
      this.stallTimer = undefined;
      this.destroy(
        new Error(
          `the client read nothing for ${this.stallTimeoutMs} ms: uncached transfer of ${this.digest} abandoned, upstream connection released`,
        ),
      );
    }, timerDelay(this.stallTimeoutMs));
    this.stallTimer.unref();
  }
}
