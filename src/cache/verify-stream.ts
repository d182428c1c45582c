/**
 * Verifies content that is streamed to a client without being cached (the disk is full, or the budget cannot
 * take it): sha256 and length are checked as the bytes pass, and the last chunk is held back until they match,
 * so a client never receives a complete-looking copy of wrong content.
 */
import { createHash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { RegistryError } from "../oci/errors.ts";
import { receivePacer } from "../upstream/receive-pacer.ts";

export class VerifyStream extends Transform {
  private readonly digest: string;
  private readonly expectedSize: number | undefined;
  private readonly hash = createHash("sha256");
  private held: Buffer | undefined;
  bytesRead = 0;
  private seen = 0;

  constructor(digest: string, expectedSize: number | undefined) {
    super({ highWaterMark: 1024 * 1024 });
    this.digest = digest;
    this.expectedSize = expectedSize;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.seen += chunk.length;
    receivePacer().received(chunk.length); // upstream bytes passing through, garbage once sent: receive-pacer.ts
    if (this.expectedSize !== undefined && this.seen > this.expectedSize) {
      cb(new RegistryError("UPSTREAM_ERROR", `upstream sent more than the announced ${this.expectedSize} bytes for ${this.digest}`));
      return;
    }
    const out = this.held;
    this.held = chunk;
    if (out) this.bytesRead += out.length;
    cb(null, out);
  }

  override _flush(cb: TransformCallback): void {
    const actual = `sha256:${this.hash.digest("hex")}`;
    if (this.expectedSize !== undefined && this.seen !== this.expectedSize) {
      cb(new RegistryError("UPSTREAM_ERROR", `upstream sent ${this.seen} of ${this.expectedSize} bytes for ${this.digest}`));
      return;
    }
    if (actual !== this.digest) {
      cb(new RegistryError("UPSTREAM_ERROR", `upstream content for ${this.digest} hashes to ${actual}`));
      return;
    }
    if (this.held) this.bytesRead += this.held.length;
    cb(null, this.held);
  }
}
