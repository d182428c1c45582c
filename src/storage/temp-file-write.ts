/**
 * The half of a content write that every store does alike: the bytes go to a temp file of the store's own (so
 * readers following the write read them back at disk speed, through the same handle), hashed as they arrive,
 * inline for small writes or by the hash worker for large ones, and `verify` checks length and sha256 before
 * anything may become visible. What `commit` makes visible, and how `abort` discards it, is each store's: a rename
 * into place (blob-store.ts), or completing a multipart upload (s3-content-store.ts).
 */
import { createHash, randomBytes } from "node:crypto";
import { open, rm, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { digestHex } from "../oci/digest.ts";
import {
  ContentMismatchError,
  type ContentWriter,
  type WriteReservation,
  type WriterOptions,
} from "./content-store.ts";
import type { FileHasher } from "./hash-worker.ts";

/** Writes of at least this many bytes (or of unknown length) are hashed by the worker; smaller ones inline. */
export const WORKER_HASH_FROM = 8 * 1024 * 1024;

/** The sha256 of a write in progress, inline or in the worker. */
export interface WriteHash {
  /** Chunks about to be written (inline hashing). */
  update(chunks: readonly Uint8Array[]): void;
  /** The temp file is written up to here (worker hashing). */
  extend(written: number): void;
  finish(size: number): Promise<string>;
  abort(): void;
}

export function inlineHash(): WriteHash {
  const hash = createHash("sha256");
  return {
    update: (chunks) => {
      for (const chunk of chunks) hash.update(chunk);
    },
    extend: () => undefined,
    finish: async () => `sha256:${hash.digest("hex")}`,
    abort: () => undefined,
  };
}

export function workerHash(hasher: FileHasher, path: string): WriteHash {
  const hash = hasher.open(path);
  return {
    update: () => undefined,
    extend: (written) => hash.extend(written),
    finish: (size) => hash.finish(size),
    abort: () => hash.abort(),
  };
}

/** What a temp-file writer starts with: its file, open read-write, and the hash of what will be written. */
export interface TempFile {
  digest: string;
  path: string;
  handle: FileHandle;
  hash: WriteHash;
  expectedSize: number | undefined;
  reservation: WriteReservation | undefined;
}

/**
 * Opens a new temp file for `digest` in `tempDir` (a random suffix: concurrent writes of one digest never share
 * one) and hands it to `make`; if `make` throws, the file is closed and removed.
 */
export async function openTempFile<W>(
  tempDir: string,
  hasher: FileHasher,
  digest: string,
  opts: WriterOptions,
  make: (file: TempFile) => W,
): Promise<W> {
  const path = join(tempDir, `${digestHex(digest)}.${randomBytes(6).toString("hex")}`);
  const handle = await open(path, "wx+");
  try {
    const hash =
      opts.expectedSize !== undefined && opts.expectedSize < WORKER_HASH_FROM ? inlineHash() : workerHash(hasher, path);
    return make({ digest, path, handle, hash, expectedSize: opts.expectedSize, reservation: opts.reservation });
  } catch (err) {
    await handle.close();
    await rm(path, { force: true });
    throw err;
  }
}

/**
 * A write into a temp file, up to its verification. Subclasses append with `append` (then do their own work with
 * the bytes), and implement `commit` and `abort`; `verify` discards the content (through `abort`) when it fails.
 */
export abstract class TempFileWriter implements ContentWriter {
  readonly digest: string;
  protected readonly path: string;
  protected readonly handle: FileHandle;
  protected readonly hash: WriteHash;
  protected readonly expectedSize: number | undefined;
  protected readonly reservation: WriteReservation | undefined;
  protected bytes = 0;
  protected outcome: "writing" | "committed" | "discarded" = "writing";
  private verification: Promise<void> | undefined;
  private closed = false;

  constructor(file: TempFile) {
    this.digest = file.digest;
    this.path = file.path;
    this.handle = file.handle;
    this.hash = file.hash;
    this.expectedSize = file.expectedSize;
    this.reservation = file.reservation;
  }

  get written(): number {
    return this.bytes;
  }

  abstract write(chunks: readonly Uint8Array[]): Promise<void>;
  abstract commit(): Promise<void>;
  abstract abort(): Promise<void>;

  /** Appends `chunks` to the temp file, hashing them; the reservation is told. Refused once verification began. */
  protected async append(chunks: readonly Uint8Array[]): Promise<void> {
    if (this.outcome !== "writing" || this.verification !== undefined)
      throw new Error(`the write of ${this.digest} is finished: nothing more can be written`);
    let total = 0;
    for (const chunk of chunks) total += chunk.length;
    this.hash.update(chunks);
    await writeAt(this.handle, chunks, this.bytes);
    this.bytes += total;
    this.reservation?.wrote(this.bytes);
    this.hash.extend(this.bytes);
  }

  async readAt(buffer: Buffer, length: number, position: number): Promise<number> {
    return (await this.handle.read(buffer, 0, length, position)).bytesRead;
  }

  verify(): Promise<void> {
    this.verification ??= this.check();
    return this.verification;
  }

  /** What must have finished besides the hash before the verification ends (the filesystem's background flush). */
  protected settled(): Promise<void> | undefined {
    return undefined;
  }

  private async check(): Promise<void> {
    if (this.outcome !== "writing") throw new Error(`the write of ${this.digest} was ${this.outcome}`);
    try {
      if (this.expectedSize !== undefined && this.bytes !== this.expectedSize)
        throw new ContentMismatchError(this.digest, { size: this.bytes, expectedSize: this.expectedSize });
      // The hash catches up (worker) while whatever the store still has running finishes.
      const [actual] = await Promise.all([this.hash.finish(this.bytes), this.settled()]);
      if (actual !== this.digest)
        throw new ContentMismatchError(this.digest, {
          size: this.bytes,
          expectedSize: this.expectedSize,
          actualDigest: actual,
        });
    } catch (err) {
      await this.abort();
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.abort();
    } finally {
      await this.handle.close();
    }
  }
}

/**
 * Writes every byte of `chunks`, in order, at `position`. A write that stores only part of what it was given is
 * continued from where it stopped: it completes, or the next write fails with the reason (ENOSPC, EFBIG).
 */
export async function writeAt(handle: FileHandle, chunks: readonly Uint8Array[], position: number): Promise<void> {
  await writeRest(handle, chunks, position, (await handle.writev(chunks as Uint8Array[], position)).bytesWritten);
}

/** Continues a write of `chunks` at `position` of which the first `done` bytes are stored. */
async function writeRest(
  handle: FileHandle,
  chunks: readonly Uint8Array[],
  position: number,
  done: number,
): Promise<void> {
  let skip = done;
  for (const chunk of chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    for (let offset = skip; offset < chunk.length;) {
      const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset, position + done);
      if (bytesWritten === 0) throw new Error(`no byte could be written at offset ${position + done}`);
      offset += bytesWritten;
      done += bytesWritten;
    }
    skip = 0;
  }
}
