/**
 * The content store on S3-compatible object storage (AWS S3, Ceph RADOS Gateway, MinIO…), through AWS's own SDK.
 * Blobs and manifests alike are objects named by their digest; nothing is ever visible under a digest before
 * its length and sha256 were verified, and nothing is copied on commit:
 *
 * - A write goes to a local temp file under the data directory (so readers following a fill read it at disk
 *   speed through `readAt`, exactly as with the filesystem store) AND, as the bytes arrive, to a multipart
 *   upload on the object's FINAL key: fixed-size parts read back from the temp file once written (into buffers
 *   the store reuses, PartBuffers), a few in flight at a time, the others only queued as offsets, so memory
 *   stays flat whatever the size of the blob and the download is never slowed by the object store. Each part
 *   is signed with its sha256, computed by the hash worker (signedWithPayloadSha256). A multipart upload is
 *   invisible until it is completed: `commit()` verifies (length, then sha256), and only then completes the
 *   upload. A mismatch, an abort or a close before the commit aborts the upload instead. Content smaller than
 *   one part is sent with one PutObject, after it verified.
 * - Uploads a crashed process left behind are aborted by `init()` (and, whatever happens to a process, by the
 *   bucket lifecycle rule the guide documents: abort incomplete multipart uploads after a day).
 * - Content is found and read with one GetObject (a read of a range: one more, by Range). A delete of content
 *   that a reader holds open here is deferred until that reader is done (the content reads as absent at once):
 *   a response that started always completes.
 * - With `health` (object-store-health.ts), failures to reach the store mark it down: reads and new writes then
 *   fail at once with StoreUnavailableError, and the cache streams misses and hits from the upstreams instead.
 *   `readWhenAnswered` lets a hit whose GET fails before any byte be answered from the upstream too. A read the
 *   store does not answer within `readTimeoutMs` fails the same way (DEFAULT_READ_TIMEOUT_MS says why).
 * - Recency survives a restart only as the objects' upload times (an object's metadata cannot be touched
 *   without copying it): `recordAccess` records nothing.
 *
 * Layout in the bucket:
 *   <prefix>blobs/sha256/<hex>               committed content (blobs and manifests), and uploads in progress
 *   <prefix>manifests/sha256/<hex>.json      a manifest's media type (S3MediaTypes, for manifest-store.ts)
 * and on the local disk:
 *   <path>/tmp/<hex>.<random>                writes in progress (read only through their writer)
 */
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { Transform, type Readable, type TransformCallback } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import { toError } from "../caught-errors.ts";
import { digestHex } from "../oci/digest.ts";
import { openTempFile, TempFileWriter, type TempFile } from "./temp-file-write.ts";
import { timerDelay } from "../config/timer-delay.ts";
import { CacheIndex } from "./cache-index.ts";
import {
  type ContentStore,
  type ContentWriter,
  type SharedWrite,
  type StoredContent,
  type WriteReservation,
  type WriterOptions,
  StoreUnavailableError,
} from "./content-store.ts";
import { FileHasher } from "./hash-worker.ts";
import type { MediaTypeRecords } from "./manifest-store.ts";
import type { ObjectStoreHealth } from "./object-store-health.ts";

export { ObjectStoreHealth } from "./object-store-health.ts";

const MiB = 1024 * 1024;
/** S3's smallest part (all but the last). */
export const MIN_PART_SIZE = 5 * MiB;
/** 8 MiB parts: 10,000 parts (S3's maximum) hold 78 GiB, more than any layer. */
const DEFAULT_PART_SIZE = 8 * MiB;
/** S3's most parts in one upload: with 8 MiB parts, 78 GiB; a longer announced length gets larger parts. */
const MAX_PARTS = 10_000;
/** Parts uploaded at once per write: memory per write ≈ this × the part size. */
const DEFAULT_PARTS_IN_FLIGHT = 3;
/**
 * The longest one request of a write may take (creating the upload, a part, the PutObject, completing or aborting
 * it). A full Ceph cluster does not refuse writes, it holds them: without a bound, the write, its temp file, its
 * reservation and its fill would wait forever. An 8 MiB part in 5 minutes is ~28 KB/s.
 */
const DEFAULT_WRITE_TIMEOUT_MS = 5 * 60_000;
/**
 * The longest a read waits for the object store's answer: a HeadObject, or a GetObject's status and headers (its
 * body is paced by the client reading it, and not bounded here). A Ceph placement group that is stuck holds the
 * reads of its objects while the gateway answers everything else, the health probe's HeadBucket included: without
 * a bound, each such request waited as long as its client did. Past the bound the read fails as
 * StoreUnavailableError, and the cache serves the request from the upstream instead.
 */
const DEFAULT_READ_TIMEOUT_MS = 10_000;
/** How often a write following another's (WriterOptions.sharedWith) looks for the other's object while it waits. */
const SHARED_POLL_MS = 200;
/** Listing pages followed at most (1,000 keys each): a bound on every listing loop. */
const MAX_LIST_PAGES = 100_000;

/** Where the store keeps what: the bucket and key prefix in the object store, the temp files on the disk. */
export interface S3ContentStoreOptions {
  client: S3Client;
  bucket: string;
  /** Key prefix inside the bucket ("" or ending in "/" usually; used as given). */
  prefix?: string;
  /** The local directory (`storage.path`) whose `tmp/` holds writes in progress. */
  root: string;
  partSize?: number;
  partsInFlight?: number;
  /** The longest one request of a write may take (default 5 minutes): see DEFAULT_WRITE_TIMEOUT_MS. */
  writeTimeoutMs?: number;
  /** The longest a read waits for the store's answer (default 10 s): see DEFAULT_READ_TIMEOUT_MS. */
  readTimeoutMs?: number;
  touchIntervalMs?: number;
  hasher?: FileHasher;
  /**
   * `init()` aborts the uploads under the prefix started at least this long ago (default 0: every one, right for
   * a single mirror on its prefix). Replicas sharing a prefix set it above the fill timeout, so that a replica
   * starting never aborts another's upload in progress; younger leftovers go by the bucket's lifecycle rule.
   */
  leftoverUploadAfterMs?: number;
  /** Readers may send clients to the object itself: a presigned GET valid this many seconds (`directUrl`). */
  redirectSeconds?: number;
  /** The client that signs those URLs, whose endpoint they name (`storage.s3.redirectEndpoint`); default `client`. */
  presignClient?: S3Client;
  /**
   * The object store's health, watching `client`: while it is down, reads and new writes fail at once with
   * StoreUnavailableError instead of waiting on the network (the cache passes misses and hits through).
   */
  health?: ObjectStoreHealth;
  /**
   * Told the bytes of every GET body received (the fill coordinator's ReceivePacer): each socket read is a fresh
   * off-heap buffer, garbage once passed on, that V8 would otherwise only notice through its external-memory
   * limit, with a full mark-compact every few dozen MiB of a warm read.
   */
  pacer?: { received(bytes: number): void };
}

/** The settings of `storage.s3` an S3 client is made from. */
export interface S3ClientSettings {
  endpoint?: string | undefined;
  region: string;
  forcePathStyle: boolean;
  accessKeyId?: string | undefined;
  accessKeyIdFile?: string | undefined;
  secretAccessKey?: string | undefined;
  secretAccessKeyFile?: string | undefined;
}

/**
 * An S3 client for `storage.s3`: explicit keys (or keys read from files), else the SDK's default chain
 * (environment, profile, instance role). Checksums only WHEN_REQUIRED: since 3.729 the SDK adds CRC32 trailers
 * to every upload and checks them on every read, which not every S3-compatible server accepts.
 */
export async function createS3Client(settings: S3ClientSettings): Promise<S3Client> {
  const keyId =
    settings.accessKeyId ??
    (settings.accessKeyIdFile ? (await readFile(settings.accessKeyIdFile, "utf8")).trim() : undefined);
  const secret =
    settings.secretAccessKey ??
    (settings.secretAccessKeyFile ? (await readFile(settings.secretAccessKeyFile, "utf8")).trim() : undefined);
  return new S3Client({
    ...(settings.endpoint !== undefined ? { endpoint: settings.endpoint } : {}),
    region: settings.region,
    forcePathStyle: settings.forcePathStyle,
    ...(keyId !== undefined && secret !== undefined
      ? { credentials: { accessKeyId: keyId, secretAccessKey: secret } }
      : {}),
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
  });
}

/**
 * The buffers a store's upload bodies are read back into, kept for the next part: up to `keep` of them (the parts
 * one write has in flight), each at least as large as asked. A fresh buffer per part (8 MiB) left that much garbage
 * per part outside V8's heap, which V8 collects only once enough of it has piled up: a cold 256 MiB pull through a
 * mirror on S3 peaked ~90 MiB above the same pull on the filesystem store. A buffer is given back only once its
 * request settled; should a cancelled request's socket still read it while it is reused, the bytes on that socket
 * no longer match the sha256 the request was signed with, and the object store refuses them.
 */
export class PartBuffers {
  private readonly idle: Buffer[] = [];
  private readonly keep: number;
  private readonly partSize: number;

  constructor(keep: number, partSize: number) {
    this.keep = keep;
    this.partSize = partSize;
  }

  /** A buffer of at least `size` bytes: a kept one, or a new one of that size. */
  take(size: number): Buffer {
    const at = this.idle.findIndex((b) => b.length >= size);
    return at >= 0 ? this.idle.splice(at, 1)[0]! : Buffer.allocUnsafeSlow(size);
  }

  /** Keeps `buffer` for the next part, if it is one of a part's size and fewer than `keep` are kept. */
  give(buffer: Buffer): void {
    if (buffer.length >= this.partSize && this.idle.length < this.keep) this.idle.push(buffer);
  }
}

/**
 * `command`, sent with `sha256` (hex) as its body's sha256. SigV4 signs a body by its sha256
 * (`x-amz-content-sha256`) and S3 refuses a body that does not match it: that is what guards an upload's bytes on
 * their way over plain HTTP, so it stays. But the SDK computes it itself, synchronously on the calling thread:
 * ~0.7 s of the main thread per GiB uploaded, each 8 MiB part holding the event loop ~5 ms. The signer takes a
 * body's sha256 from that header when the request has it, so the writer hands it one computed elsewhere: a part's
 * by the hash worker (`FileHasher.hashRange`), a single PutObject's is the verified digest itself.
 */
function signedWithPayloadSha256<C extends UploadPartCommand | PutObjectCommand>(command: C, sha256: string): C {
  (command as UploadPartCommand).middlewareStack.add(
    (next) => (args) => {
      (args.request as { headers: Record<string, string> }).headers["x-amz-content-sha256"] = sha256;
      return next(args);
    },
    { step: "build", name: "payloadSha256" },
  );
  return command;
}

/**
 * The part size for a write of `expectedSize` bytes: `base`, or, when that would take more than S3's 10,000 parts,
 * the smallest whole number of MiB that fits in 10,000. A write of unknown length uses `base` (8 MiB: 78 GiB).
 */
export function partSizeFor(expectedSize: number | undefined, base: number): number {
  return Math.max(base, Math.ceil((expectedSize ?? 0) / MAX_PARTS / MiB) * MiB);
}

/** Whether an S3 error means "no such object" (HEAD answers a bare 404). */
export function isMissing(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  return e?.name === "NotFound" || e?.name === "NoSuchKey" || e?.$metadata?.httpStatusCode === 404;
}

export class S3ContentStore implements ContentStore {
  readonly index: CacheIndex;
  /** The local directory (`storage.path`): the janitor watches its disk, which holds the temp files only. */
  readonly root: string;
  readonly tempDir: string;
  readonly client: S3Client;
  readonly bucket: string;
  readonly prefix: string;
  /** @internal read by the writers */
  readonly partSize: number;
  /** @internal read by the writers */
  readonly partsInFlight: number;
  /** @internal read by the writers */
  readonly writeTimeoutMs: number;
  private readonly readTimeoutMs: number;
  private readonly leftoverAfterMs: number;
  readonly health: ObjectStoreHealth | undefined;
  /** @internal read by StoredObject */
  readonly pacer: { received(bytes: number): void } | undefined;
  /** @internal read by StoredObject: presigned GETs for clients, valid this long (seconds); none when undefined. */
  readonly redirectSeconds: number | undefined;
  /** @internal read by StoredObject: signs those GETs. */
  readonly presignClient: S3Client;
  readonly hasher: FileHasher;
  /** The buffers upload bodies are read back into, reused (see PartBuffers). */
  readonly partBuffers: PartBuffers;
  private readonly readers = new Map<string, number>();
  /** Deleted content still held open by a reader here: reads as absent, removed from S3 when the reader is done. */
  private readonly pendingDeletes = new Set<string>();
  /** DeleteObject requests under way, by digest: a commit of the same digest waits for them. */
  private readonly deleting = new Map<string, Promise<void>>();
  private readonly commitListeners: Array<(digest: string, size: number) => void> = [];
  private readonly deleteListeners: Array<(digest: string) => void> = [];

  constructor(opts: S3ContentStoreOptions) {
    this.client = opts.client;
    this.bucket = opts.bucket;
    this.prefix = opts.prefix ?? "";
    this.root = opts.root;
    this.tempDir = join(opts.root, "tmp");
    this.partSize = opts.partSize ?? DEFAULT_PART_SIZE;
    if (this.partSize < MIN_PART_SIZE) throw new Error(`S3 parts are at least ${MIN_PART_SIZE} bytes`);
    this.partsInFlight = Math.max(1, opts.partsInFlight ?? DEFAULT_PARTS_IN_FLIGHT);
    this.writeTimeoutMs = opts.writeTimeoutMs ?? DEFAULT_WRITE_TIMEOUT_MS;
    this.readTimeoutMs = opts.readTimeoutMs ?? DEFAULT_READ_TIMEOUT_MS;
    this.hasher = opts.hasher ?? new FileHasher();
    this.partBuffers = new PartBuffers(this.partsInFlight, this.partSize);
    this.redirectSeconds = opts.redirectSeconds;
    this.presignClient = opts.presignClient ?? opts.client;
    this.leftoverAfterMs = opts.leftoverUploadAfterMs ?? 0;
    this.health = opts.health;
    this.pacer = opts.pacer;
    this.index = new CacheIndex(this, opts);
  }

  /** The key of committed content (and of its upload in progress). */
  keyOf(digest: string): string {
    return `${this.blobsPrefix()}${digestHex(digest)}`;
  }

  private blobsPrefix(): string {
    return `${this.prefix}blobs/sha256/`;
  }

  async init(): Promise<{ removedTempFiles: number; objects: number; bytes: number; scanMs: number }> {
    await mkdir(this.tempDir, { recursive: true });
    const leftovers = await readdir(this.tempDir);
    await Promise.all(leftovers.map((name) => rm(join(this.tempDir, name), { force: true, recursive: true })));
    const before = Date.now() - this.leftoverAfterMs;
    const uploads = (await this.listUploads()).filter((u) => u.initiated <= before);
    for (const u of uploads)
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.key, UploadId: u.id }));
    const scan = await this.index.rebuild();
    return {
      removedTempFiles: leftovers.length + uploads.length,
      objects: scan.objects,
      bytes: scan.bytes,
      scanMs: scan.ms,
    };
  }

  /** Every committed object under the prefix, its upload time standing for its last access. */
  async scan(): Promise<Array<{ digest: string; size: number; lastAccess: number }>> {
    const found: Array<{ digest: string; size: number; lastAccess: number }> = [];
    const prefix = this.blobsPrefix();
    let token: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const res = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of res.Contents ?? []) {
        const hex = o.Key?.slice(prefix.length) ?? "";
        if (!/^[0-9a-f]{64}$/.test(hex) || o.Size === undefined) continue;
        found.push({ digest: `sha256:${hex}`, size: o.Size, lastAccess: o.LastModified?.getTime() ?? 0 });
      }
      if (!res.IsTruncated || !res.NextContinuationToken) return found;
      token = res.NextContinuationToken;
    }
    throw new Error(`listing s3://${this.bucket}/${prefix} did not end after ${MAX_LIST_PAGES} pages`);
  }

  /** Multipart uploads in progress under the prefix (this process's and any other's). */
  private async listUploads(): Promise<Array<{ key: string; id: string; initiated: number }>> {
    const found: Array<{ key: string; id: string; initiated: number }> = [];
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    for (let page = 0; page < MAX_LIST_PAGES; page++) {
      const res = await this.client.send(
        new ListMultipartUploadsCommand({
          Bucket: this.bucket,
          Prefix: this.blobsPrefix(),
          KeyMarker: keyMarker,
          UploadIdMarker: idMarker,
        }),
      );
      for (const u of res.Uploads ?? [])
        if (u.Key && u.UploadId) found.push({ key: u.Key, id: u.UploadId, initiated: u.Initiated?.getTime() ?? 0 });
      if (!res.IsTruncated) return found;
      keyMarker = res.NextKeyMarker;
      idMarker = res.NextUploadIdMarker;
    }
    throw new Error(`listing uploads in s3://${this.bucket}/${this.blobsPrefix()} did not end`);
  }

  /** Nothing: an object's metadata cannot change without a copy. After a restart, recency is upload order. */
  recordAccess(): void {}

  inUse(digest: string): boolean {
    return (this.readers.get(digest) ?? 0) > 0;
  }

  async size(digest: string): Promise<number | undefined> {
    if (this.pendingDeletes.has(digest) || this.deleting.has(digest)) return undefined;
    const known = this.index.sizeOf(digest);
    if (known !== undefined) return known;
    return (await this.head(digest))?.size;
  }

  /** @internal The object's size in the bucket now (a HEAD), or undefined when there is none. */
  async head(digest: string): Promise<{ size: number } | undefined> {
    try {
      const res = await this.answered(`HeadObject of ${digest}`, (abortSignal) =>
        this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }), { abortSignal }),
      );
      return { size: res.ContentLength ?? 0 };
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
  }

  /**
   * The reader is counted before the object is looked up, so that a delete meanwhile waits for it (and is then
   * seen here: the content reads as absent) instead of removing the object under a reader about to start.
   *
   * The look is the GET of the whole object itself (one request, not a HEAD and then a GET): its answer gives
   * the size, and its body, unread until then, is what a read of the whole content streams. A read of a range
   * drops it and asks for the range instead. With `redirectSeconds` the client reads the object elsewhere: a
   * HEAD.
   */
  async open(digest: string): Promise<StoredContent | undefined> {
    if (this.pendingDeletes.has(digest) || this.deleting.has(digest)) return undefined;
    this.health?.assertUp();
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    let found: { size: number; body?: Readable } | undefined;
    try {
      found = this.redirectSeconds !== undefined ? await this.head(digest) : await this.getWhole(digest);
    } catch (err) {
      this.released(digest);
      throw err;
    }
    if (found === undefined || this.pendingDeletes.has(digest)) {
      found?.body?.destroy(); // never leave a body unread: it holds a socket
      this.released(digest);
      if (found === undefined) this.index.remove(digest); // deleted behind our back: keep the accounting true
      return undefined;
    }
    if (!this.index.has(digest)) this.index.add(digest, found.size);
    this.index.touch(digest);
    return new StoredObject(this, digest, found.size, () => this.released(digest), found.body);
  }

  /** GetObject of the whole object: its size and its body (not read yet), or undefined when there is none. */
  private async getWhole(digest: string): Promise<{ size: number; body: Readable } | undefined> {
    let res;
    try {
      res = await this.answered(`GetObject of ${digest}`, (abortSignal) =>
        this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }), { abortSignal }),
      );
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
    const body = res.Body as Readable;
    if (res.ContentLength === undefined) {
      body.destroy();
      throw new Error(`GET of object ${digest} answered without a Content-Length`);
    }
    return { size: res.ContentLength, body };
  }

  /**
   * @internal One read request, given up as StoreUnavailableError when the store has not answered within
   * readTimeoutMs; the bound ends with the answer, so the body it streams is not cut by it. `outer` aborts it too
   * (an abort that is not the bound's is rethrown as it is).
   */
  async answered<T>(what: string, send: (abortSignal: AbortSignal) => Promise<T>, outer?: AbortSignal): Promise<T> {
    const ms = this.readTimeoutMs;
    return withinMs(
      ms,
      send,
      (cause) => new StoreUnavailableError(`object store did not answer ${what} within ${ms} ms`, { cause }),
      outer,
    );
  }

  /** A reader is done with `digest`: a delete that waited for the last one happens now. */
  private released(digest: string): void {
    const n = (this.readers.get(digest) ?? 1) - 1;
    if (n > 0) {
      this.readers.set(digest, n);
      return;
    }
    this.readers.delete(digest);
    if (this.pendingDeletes.delete(digest)) void this.deleteObject(digest).catch(() => undefined);
  }

  /** Deletes the object now; `size`/`open` read it as absent until S3 confirmed. */
  private deleteObject(digest: string): Promise<void> {
    const running = this.deleting.get(digest);
    if (running) return running;
    const done = this.client
      .send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.keyOf(digest) }))
      .then(() => undefined)
      .finally(() => this.deleting.delete(digest));
    this.deleting.set(digest, done);
    return done;
  }

  /** DeleteObject is atomic. Content a reader here holds open goes once that reader is done with it. */
  async delete(digest: string): Promise<void> {
    this.index.remove(digest);
    if (this.inUse(digest)) this.pendingDeletes.add(digest);
    else await this.deleteObject(digest);
    for (const listener of this.deleteListeners) listener(digest);
  }

  /** @internal A writer is about to make `digest` visible: a delete of the same key must not undo it. */
  async beforeCommit(digest: string): Promise<void> {
    this.pendingDeletes.delete(digest); // the same bytes again: the object stays for the reader and the commit
    await this.deleting.get(digest)?.catch(() => undefined);
  }

  onDelete(listener: (digest: string) => void): void {
    this.deleteListeners.push(listener);
  }

  onCommit(listener: (digest: string, size: number) => void): void {
    this.commitListeners.push(listener);
  }

  async createWriter(digest: string, opts: WriterOptions = {}): Promise<ContentWriter> {
    this.health?.assertUp();
    return openTempFile(this.tempDir, this.hasher, digest, opts, (file) => new S3Writer(this, file, opts.sharedWith));
  }

  /** @internal S3Writer.commit: the object is visible. Indexed first, then the reservation released, then told. */
  committed(digest: string, size: number, reservation: WriteReservation | undefined): void {
    this.index.add(digest, size);
    reservation?.release();
    for (const listener of this.commitListeners) listener(digest, size);
  }

  /** Local temp files, and the multipart uploads the object store holds under the prefix (asked, not assumed). */
  async tempFiles(): Promise<string[]> {
    const local = await readdir(this.tempDir);
    const uploads = await this.listUploads();
    return [...local, ...uploads.map((u) => `s3://${this.bucket}/${u.key} (upload ${u.id})`)];
  }
}

/**
 * Manifests' media types in the bucket beside the content (`<prefix>manifests/sha256/<hex>.json`), one small
 * object each, written after the bytes (manifest-store.ts): every replica on the bucket sees the same.
 */
export class S3MediaTypes implements MediaTypeRecords {
  private readonly store: S3ContentStore;

  constructor(store: S3ContentStore) {
    this.store = store;
  }

  async init(): Promise<void> {}

  private keyOf(digest: string): string {
    return `${this.store.prefix}manifests/sha256/${digestHex(digest)}.json`;
  }

  async read(digest: string): Promise<string | undefined> {
    this.store.health?.assertUp();
    try {
      // A manifest is small: the bound covers its body too.
      return await this.store.answered(`GetObject of manifest ${digest}`, async (abortSignal) => {
        const res = await this.store.client.send(
          new GetObjectCommand({ Bucket: this.store.bucket, Key: this.keyOf(digest) }),
          { abortSignal },
        );
        return await res.Body!.transformToString("utf8");
      });
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw err;
    }
  }

  async write(digest: string, text: string): Promise<void> {
    await this.store.client.send(
      new PutObjectCommand({
        Bucket: this.store.bucket,
        Key: this.keyOf(digest),
        Body: text,
        ContentType: "application/json",
      }),
    );
  }

  async remove(digest: string): Promise<void> {
    await this.store.client.send(new DeleteObjectCommand({ Bucket: this.store.bucket, Key: this.keyOf(digest) }));
  }
}

/**
 * Committed content held for reading: the body of the GET that found it (the whole object, for a read of all
 * of it), or a GetObject by range, streamed.
 */
class StoredObject implements StoredContent {
  readonly size: number;
  private readonly store: S3ContentStore;
  private readonly digest: string;
  private readonly release: () => void;
  private released = false;
  /** The whole object's GET body, answered and unread: taken by the first read of all of it, else destroyed. */
  private whole: Readable | undefined;

  constructor(store: S3ContentStore, digest: string, size: number, release: () => void, whole?: Readable) {
    this.store = store;
    this.digest = digest;
    this.size = size;
    this.release = release;
    this.whole = whole;
    if (store.redirectSeconds !== undefined) this.directUrl = () => this.presign(store.redirectSeconds!);
  }

  /** The unread whole-object body, handed to the caller (no longer this object's to destroy). */
  private takeWhole(): Readable | undefined {
    const body = this.whole;
    this.whole = undefined;
    return body;
  }

  readonly directUrl?: () => Promise<string>;

  /** A presigned GET of the object, valid `seconds`; the content stays open until closed or read. */
  private presign(seconds: number): Promise<string> {
    return getSignedUrl(
      this.store.presignClient,
      new GetObjectCommand({ Bucket: this.store.bucket, Key: this.store.keyOf(this.digest) }),
      { expiresIn: seconds },
    );
  }

  private done(): void {
    this.takeWhole()?.destroy(); // never leave a body unread: it holds a socket
    if (this.released) return;
    this.released = true;
    this.release();
  }

  read(range?: { start: number; end: number }): Readable {
    const { out, answered } = this.start(range);
    answered.catch(() => undefined); // the stream carries the error
    return out;
  }

  async readWhenAnswered(range?: { start: number; end: number }): Promise<Readable> {
    const { out, answered } = this.start(range);
    // Until it is handed over, nobody listens to `out`: a failed GET destroys it with its error (and releases
    // the content), which this call reports by rejecting instead.
    const unheard = () => undefined;
    out.on("error", unheard);
    await answered;
    out.off("error", unheard);
    return out;
  }

  /** The GetObject for `range`, streamed into `out`; `answered` settles with the object store's answer. */
  private start(range: { start: number; end: number } | undefined): { out: Readable; answered: Promise<void> } {
    const start = range?.start ?? 0;
    const end = range?.end ?? this.size - 1;
    const expected = Math.max(0, end - start + 1);
    const out = new ExactLength(expected, this.digest, this.store.pacer);
    out.once("close", () => this.done());
    const whole = start === 0 && end === this.size - 1 ? this.takeWhole() : undefined;
    if (expected === 0) {
      whole?.destroy();
      out.end();
      return { out, answered: Promise.resolve() };
    }
    if (whole !== undefined) {
      this.pipeBody(whole, out);
      return { out, answered: Promise.resolve() };
    }
    this.takeWhole()?.destroy(); // a range: the whole object's body is not what is asked for
    const abort = new AbortController();
    out.once("close", () => abort.abort());
    const answered = this.store
      .answered(
        `GetObject of ${this.digest}, bytes ${start}-${end}`,
        (abortSignal) =>
          this.store.client.send(
            new GetObjectCommand({
              Bucket: this.store.bucket,
              Key: this.store.keyOf(this.digest),
              Range: `bytes=${start}-${end}`,
            }),
            { abortSignal },
          ),
        abort.signal,
      )
      .then(
        (res) => {
          this.pipeBody(res.Body as Readable, out);
        },
        (err: unknown) => {
          out.destroy(toError(err));
          throw err;
        },
      );
    return { out, answered };
  }

  /** A GET's body into `out`: an error of either ends both. */
  private pipeBody(body: Readable, out: ExactLength): void {
    if (out.destroyed) {
      body.destroy(); // never leave a body unread: it holds a socket
      return;
    }
    body.once("error", (err) => out.destroy(err));
    out.once("close", () => body.destroy());
    body.pipe(out);
  }

  async bytes(): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of this.read()) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  }

  async close(): Promise<void> {
    this.done();
  }
}

/** Passes exactly `expected` bytes through; a body that ends short (a cut connection) is an error, not an end. */
class ExactLength extends Transform {
  private seen = 0;
  private readonly expected: number;
  private readonly digest: string;
  private readonly pacer: { received(bytes: number): void } | undefined;

  constructor(expected: number, digest: string, pacer: { received(bytes: number): void } | undefined) {
    super();
    this.expected = expected;
    this.digest = digest;
    this.pacer = pacer;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    this.pacer?.received(chunk.length);
    if (this.seen > this.expected) cb(new Error(`object ${this.digest} sent more bytes than asked for`));
    else cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    cb(
      this.seen === this.expected
        ? null
        : new Error(`object ${this.digest} ended after ${this.seen} of ${this.expected} bytes`),
    );
  }
}

/** One part queued or being uploaded: bytes [start, end) of the temp file. */
interface Part {
  number: number;
  start: number;
  end: number;
}

/**
 * A write into a temp file, mirrored part by part into a multipart upload on the final key as the bytes
 * arrive; completed (or sent whole, when smaller than a part) only once verified, aborted otherwise.
 *
 * A write following another writer's download of the same content (`sharedWith`: a replica of the fleet
 * streaming the holder's bytes) uploads nothing as the bytes arrive: the holder is uploading them to the same
 * key. Once this write's own bytes verified, its commit takes the holder's object as committed when it is there
 * with this length (the holder's last byte reaches a follower only after the holder committed, so normally at
 * the first look); while the holder may still commit, it looks again, up to `waitMs`. When no such object
 * appears (the holder passed its download through uncached, or its content was evicted at once), the temp
 * file's verified bytes are uploaded as any write's are: the digest never stays uncommitted for want of an
 * upload, and nothing but verified bytes is ever sent.
 */
class S3Writer extends TempFileWriter {
  private readonly store: S3ContentStore;
  /** This write's part size: the store's, or larger when the announced length needs more than MAX_PARTS of those. */
  private readonly partSize: number;
  /** The multipart upload, once the first whole part was written. */
  private upload: Promise<string> | undefined;
  /** Bytes already handed to a part (queued or sent). */
  private queuedTo = 0;
  private readonly queue: Part[] = [];
  private readonly running = new Set<Promise<void>>();
  private readonly etags = new Map<number, string>();
  /** The first upload failure: the write cannot be committed any more. */
  private failure: Error | undefined;
  private discarding: Promise<void> | undefined;
  /** The other writer of the same content, whose upload this write leaves alone (see the class comment). */
  private readonly shared: SharedWrite | undefined;

  constructor(store: S3ContentStore, file: TempFile, shared: SharedWrite | undefined) {
    super(file);
    this.store = store;
    this.partSize = partSizeFor(file.expectedSize, store.partSize);
    this.shared = shared;
  }

  async write(chunks: readonly Uint8Array[]): Promise<void> {
    await this.append(chunks);
    if (this.shared === undefined) this.queueWholeParts();
  }

  /** Queues every whole part written and not queued yet, and starts what may start. */
  private queueWholeParts(): void {
    const size = this.partSize;
    while (this.bytes - this.queuedTo >= size) {
      this.queue.push({ number: this.partNumber(this.queuedTo), start: this.queuedTo, end: this.queuedTo + size });
      this.queuedTo += size;
    }
    this.pump();
  }

  /** Part numbers follow the byte ranges: part n covers [(n-1)·size, n·size). */
  private partNumber(start: number): number {
    return start / this.partSize + 1;
  }

  /** Starts queued parts while fewer than `partsInFlight` run. */
  private pump(): void {
    while (this.outcome === "writing" && this.failure === undefined && this.running.size < this.store.partsInFlight) {
      const part = this.queue.shift();
      if (!part) return;
      const sent: Promise<void> = this.sendPart(part)
        .catch((err: unknown) => {
          this.failure ??= toError(err);
        })
        .finally(() => {
          this.running.delete(sent);
          this.pump();
        });
      this.running.add(sent);
    }
  }

  /** One request of this write, bounded by the store's writeTimeoutMs. */
  private bounded<T>(what: string, send: (abortSignal: AbortSignal) => Promise<T>): Promise<T> {
    const ms = this.store.writeTimeoutMs;
    return withinMs(
      ms,
      send,
      (cause) => new Error(`${what} of ${this.digest} not answered within ${ms} ms`, { cause }),
    );
  }

  private startUpload(): Promise<string> {
    this.upload ??= this.bounded("CreateMultipartUpload", (abortSignal) =>
      this.store.client.send(
        new CreateMultipartUploadCommand({ Bucket: this.store.bucket, Key: this.store.keyOf(this.digest) }),
        { abortSignal },
      ),
    ).then((res) => {
      if (!res.UploadId) throw new Error(`no upload id for ${this.digest}`);
      return res.UploadId;
    });
    return this.upload;
  }

  private async sendPart(part: Part): Promise<void> {
    const uploadId = await this.startUpload();
    if (this.outcome !== "writing") return;
    const buffer = this.store.partBuffers.take(part.end - part.start);
    try {
      const [body, sha256] = await Promise.all([
        this.readBack(buffer, part.start, part.end),
        this.store.hasher.hashRange(this.path, part.start, part.end),
      ]);
      const res = await this.bounded(`UploadPart ${part.number}`, (abortSignal) =>
        this.store.client.send(
          signedWithPayloadSha256(
            new UploadPartCommand({
              Bucket: this.store.bucket,
              Key: this.store.keyOf(this.digest),
              UploadId: uploadId,
              PartNumber: part.number,
              Body: body,
              ContentLength: body.length,
            }),
            digestHex(sha256),
          ),
          { abortSignal },
        ),
      );
      if (!res.ETag) throw new Error(`no ETag for part ${part.number} of ${this.digest}`);
      this.etags.set(part.number, res.ETag);
    } finally {
      this.store.partBuffers.give(buffer);
    }
  }

  /** Every queued part sent (or the first failure). */
  private async drained(): Promise<void> {
    for (let i = 0; i < 1_000_000 && (this.running.size > 0 || this.queue.length > 0); i++) {
      if (this.failure) return;
      await Promise.race(this.running);
    }
  }

  /**
   * Verifies, then makes the object visible: the last part sent and the multipart upload completed, or (less
   * than a part in all) the temp file's bytes sent with one PutObject. Nothing reaches the key before this.
   */
  async commit(): Promise<void> {
    await this.verify();
    if (this.outcome !== "writing") throw new Error(`the write of ${this.digest} was ${this.outcome}`);
    try {
      const { bucket, client } = this.store;
      const key = this.store.keyOf(this.digest);
      if (this.shared !== undefined) {
        if (await this.committedByOther(this.shared)) {
          this.outcome = "committed";
          await rm(this.path, { force: true });
          this.store.committed(this.digest, this.bytes, this.reservation);
          return;
        }
        this.queueWholeParts(); // its own verified copy, then, as any write sends it
      }
      if (this.upload === undefined && this.queue.length === 0 && this.running.size === 0) {
        const buffer = this.store.partBuffers.take(this.bytes);
        try {
          const body = await this.readBack(buffer, 0, this.bytes);
          await this.store.beforeCommit(this.digest);
          await this.bounded("PutObject", (abortSignal) =>
            client.send(
              signedWithPayloadSha256(
                new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length }),
                digestHex(this.digest), // verified above: the body's own sha256
              ),
              { abortSignal },
            ),
          );
        } finally {
          this.store.partBuffers.give(buffer);
        }
      } else {
        if (this.queuedTo < this.bytes) {
          this.queue.push({ number: this.partNumber(this.queuedTo), start: this.queuedTo, end: this.bytes });
          this.queuedTo = this.bytes;
          this.pump();
        }
        await this.drained();
        if (this.failure) throw this.failure;
        const parts = [...this.etags.entries()].sort(([a], [b]) => a - b);
        const count = Math.ceil(this.bytes / this.partSize);
        if (parts.length !== count || parts.some(([n], i) => n !== i + 1))
          throw new Error(`upload of ${this.digest} holds ${parts.length} parts, not ${count}: not committed`);
        const uploadId = await this.upload!;
        await this.store.beforeCommit(this.digest);
        await this.bounded("CompleteMultipartUpload", (abortSignal) =>
          client.send(
            new CompleteMultipartUploadCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              MultipartUpload: { Parts: parts.map(([PartNumber, ETag]) => ({ PartNumber, ETag })) },
            }),
            { abortSignal },
          ),
        );
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
    this.outcome = "committed";
    await rm(this.path, { force: true });
    this.store.committed(this.digest, this.bytes, this.reservation);
  }

  /**
   * Whether the other writer's object is in the bucket with this write's length: now, or within `waitMs` while
   * the other may still commit. Only verified content ever reaches a key, whoever wrote it.
   */
  private async committedByOther(shared: SharedWrite): Promise<boolean> {
    await this.store.beforeCommit(this.digest); // a delete of the key under way here ends first
    const deadline = Date.now() + shared.waitMs;
    for (let look = 0; look < 100_000; look++) {
      const found = await this.store.head(this.digest);
      if (found !== undefined) return found.size === this.bytes;
      if (Date.now() >= deadline) return false;
      // The other has ended without (yet) an object: one last look, for a commit just before it ended.
      if (!(await shared.pending())) return (await this.store.head(this.digest))?.size === this.bytes;
      await sleep(Math.min(SHARED_POLL_MS, Math.max(0, deadline - Date.now())));
    }
    return false;
  }

  /** Bytes `[start, end)` of the temp file, read into the start of `buffer`. */
  private async readBack(buffer: Buffer, start: number, end: number): Promise<Buffer> {
    const body = buffer.subarray(0, end - start);
    let got = 0;
    while (got < body.length) {
      const { bytesRead } = await this.handle.read(body, got, body.length - got, start + got);
      if (bytesRead === 0) throw new Error(`temp file for ${this.digest} ends at ${start + got}, not ${end}`);
      got += bytesRead;
    }
    return body;
  }

  /**
   * Discards the content: queued parts dropped, the parts in flight awaited (a part that lands after an abort
   * would start the upload again), then the upload aborted and the temp file removed. `readAt` still works.
   */
  abort(): Promise<void> {
    if (this.outcome === "committed") return Promise.resolve();
    this.discarding ??= this.discard();
    return this.discarding;
  }

  private async discard(): Promise<void> {
    this.outcome = "discarded";
    this.hash.abort();
    this.queue.length = 0;
    try {
      await Promise.allSettled([...this.running]);
      const uploadId = await this.upload?.catch(() => undefined);
      if (uploadId !== undefined)
        await this.bounded("AbortMultipartUpload", (abortSignal) =>
          this.store.client.send(
            new AbortMultipartUploadCommand({
              Bucket: this.store.bucket,
              Key: this.store.keyOf(this.digest),
              UploadId: uploadId,
            }),
            { abortSignal },
          ),
        ).catch((err: unknown) => {
          if (!isMissing(err)) throw err; // gone already (aborted by a restarted store): nothing left
        });
    } finally {
      await rm(this.path, { force: true });
      this.reservation?.release();
    }
  }
}

/**
 * One request to the object store, aborted when it has not settled within `ms` (or when `outer` aborts); a failure
 * the bound caused is thrown as `timedOut(cause)`, any other (an abort that is `outer`'s included) as it is. The
 * bound ends when `send` settles: for a GET, when the store answered, so the body it streams is not cut by it.
 */
async function withinMs<T>(
  ms: number,
  send: (abortSignal: AbortSignal) => Promise<T>,
  timedOut: (cause: unknown) => Error,
  outer?: AbortSignal,
): Promise<T> {
  const bound = new AbortController();
  const timer = setTimeout(() => bound.abort(), timerDelay(ms));
  try {
    return await send(outer === undefined ? bound.signal : AbortSignal.any([outer, bound.signal]));
  } catch (err) {
    if (bound.signal.aborted && !(outer?.aborted ?? false)) throw timedOut(err);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
