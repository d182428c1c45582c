/**
 * Manifests, stored byte-exact by digest together with the media type the upstream served them with.
 * The bytes live in the blob store (so `HEAD /v2/<name>/blobs/<manifest digest>`, which containerd sends when a
 * manifest HEAD fails, finds them too); the media type lives in a small sidecar written after the bytes, so a
 * manifest is only servable once both exist. Hot manifests are kept in memory: the tag-hit path touches no disk.
 *
 * A sidecar is replaced crash-safely (durable-replace.ts: a temp file of its own, so concurrent puts of one
 * manifest never share one; fsynced, renamed into place, the directory fsynced). One that is damaged all the
 * same (empty, torn, not ours) reads as absent, never as an error: the manifest is then fetched again and its
 * next put rewrites the sidecar, and nothing that asks (a pull, an eviction sweep) is stuck on it meanwhile. A
 * walk that needs only what a manifest names (what a pin keeps) reads its bytes without the sidecar (`bytesOf`).
 *
 * The bytes go through the content store's interface; the media types through `MediaTypeRecords`, kept where
 * the store keeps its content: beside the filesystem store, sidecar files (`<root>/manifests`, `SidecarFiles`
 * here, the default for a BlobStore); in an object store, one small object per manifest beside the content
 * (s3-content-store.ts: `S3MediaTypes`), shared by every replica on the bucket like the bytes.
 */
import { mkdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { LRUCache } from "lru-cache";
import { digestHex, digestOf } from "../oci/digest.ts";
import { BlobStore, isNotFound } from "./blob-store.ts";
import { putContent, type ContentStore } from "./content-store.ts";
import { replaceFileDurably } from "./durable-replace.ts";

export interface StoredManifest {
  digest: string;
  mediaType: string;
  bytes: Buffer;
}

/** What a manifest's media-type record holds. */
export interface Sidecar {
  mediaType: string;
  size: number;
}

/**
 * Where a content store keeps its manifests' media types. A record is written after the bytes and replaced
 * whole; one that is damaged or absent reads as undefined (the manifest is then fetched again).
 */
export interface MediaTypeRecords {
  init(): Promise<void>;
  /** The record's text as stored, or undefined when there is none. */
  read(digest: string): Promise<string | undefined>;
  write(digest: string, text: string): Promise<void>;
  remove(digest: string): Promise<void>;
}

/** Sidecar files beside the filesystem store: `<root>/manifests/sha256/<hh>/<hex>.json`, replaced durably. */
export class SidecarFiles implements MediaTypeRecords {
  private readonly metaDir: string;
  private readonly tempDir: string;

  constructor(store: BlobStore) {
    this.metaDir = join(store.root, "manifests", "sha256");
    // Their temp files go where the store's do, so one a crash leaves behind is swept at the next start.
    this.tempDir = store.tempDir;
  }

  async init(): Promise<void> {
    await mkdir(this.metaDir, { recursive: true });
  }

  async read(digest: string): Promise<string | undefined> {
    try {
      return await readFile(this.pathOf(digest), "utf8");
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  write(digest: string, text: string): Promise<void> {
    return replaceFileDurably(this.pathOf(digest), text, { tempDir: this.tempDir });
  }

  remove(digest: string): Promise<void> {
    return rm(this.pathOf(digest), { force: true });
  }

  private pathOf(digest: string): string {
    const hex = digestHex(digest);
    return join(this.metaDir, hex.slice(0, 2), `${hex}.json`);
  }
}

export class ManifestStore {
  private readonly blobs: ContentStore;
  private readonly mediaTypes: MediaTypeRecords;
  private readonly memory: LRUCache<string, StoredManifest>;

  /** `mediaTypes` defaults to sidecar files for the filesystem store; any other store must say where they go. */
  constructor(blobs: ContentStore, opts: { memoryBytes?: number; mediaTypes?: MediaTypeRecords } = {}) {
    this.blobs = blobs;
    const mediaTypes = opts.mediaTypes ?? (blobs instanceof BlobStore ? new SidecarFiles(blobs) : undefined);
    if (mediaTypes === undefined) throw new Error("a manifest store over this content store needs its mediaTypes");
    this.mediaTypes = mediaTypes;
    this.memory = new LRUCache({
      maxSize: opts.memoryBytes ?? 64 * 1024 * 1024,
      sizeCalculation: (m) => m.bytes.length + 256,
    });
  }

  async init(): Promise<void> {
    await this.mediaTypes.init();
  }

  /**
   * Stores a manifest; throws if `bytes` do not hash to `digest` (a programming error upstream of here). The
   * store's writer verifies what it commits; the check here is for the memory copy, which is served like the
   * stored bytes and is kept even when those were stored already.
   */
  async put(digest: string, mediaType: string, bytes: Buffer): Promise<void> {
    const actual = digestOf(bytes);
    if (actual !== digest) throw new Error(`manifest bytes hash to ${actual}, not ${digest}`);
    if ((await this.blobs.size(digest)) !== bytes.length) await putContent(this.blobs, digest, bytes);
    await this.mediaTypes.write(digest, JSON.stringify({ mediaType, size: bytes.length } satisfies Sidecar));
    this.memory.set(digest, { digest, mediaType, bytes });
  }

  /** Whether the content store holds these bytes, as a manifest or not (a blob has no sidecar). */
  async holdsBytes(digest: string): Promise<boolean> {
    return (await this.blobs.size(digest)) !== undefined;
  }

  /** `touch: false`: a read that is no use of the manifest (a walk of what pins reach), not recorded as one. */
  async get(digest: string, opts: { touch?: boolean } = {}): Promise<StoredManifest | undefined> {
    const hot = this.memory.get(digest);
    if (hot) {
      // Served from memory, but still used: the index must know, or eviction would see it as cold.
      if (this.blobs.index.has(digest)) {
        if (opts.touch !== false) this.blobs.index.touch(digest);
        return hot;
      }
      this.memory.delete(digest); // evicted from disk: not servable any more
      return undefined;
    }
    const text = await this.mediaTypes.read(digest);
    if (text === undefined) return undefined;
    const meta = parseSidecar(text);
    if (meta === undefined) return undefined; // damaged: absent until the next put rewrites it
    const stored = await this.blobs.open(digest, opts);
    if (!stored) return undefined;
    if (stored.size !== meta.size) {
      await stored.close();
      return undefined;
    }
    const manifest = { digest, mediaType: meta.mediaType, bytes: await stored.bytes() };
    this.memory.set(digest, manifest);
    return manifest;
  }

  /**
   * The bytes stored under `digest`, for a walk that needs what a manifest names, not how to serve it: read from
   * the blob store when the sidecar is absent or damaged (`get` answers undefined then). Undefined when the
   * bytes are not stored, or are larger than `maxBytes` (no manifest this mirror stored is; a walk does not
   * read a layer whole into memory).
   */
  async bytesOf(digest: string, maxBytes: number, opts: { touch?: boolean } = {}): Promise<Buffer | undefined> {
    const manifest = await this.get(digest, opts);
    if (manifest) return manifest.bytes;
    const stored = await this.blobs.open(digest, opts);
    if (!stored) return undefined;
    if (stored.size > maxBytes) {
      await stored.close();
      return undefined;
    }
    return stored.bytes();
  }

  /** Eviction or purge removed the bytes: drop the memory copy and the sidecar too. */
  async forget(digest: string): Promise<void> {
    this.memory.delete(digest);
    await this.mediaTypes.remove(digest);
  }
}

/** The sidecar's contents, or undefined when they are not a whole sidecar. */
function parseSidecar(text: string): Sidecar | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const { mediaType, size } = (value ?? {}) as Partial<Sidecar>;
  if (typeof mediaType !== "string" || mediaType === "" || typeof size !== "number") return undefined;
  return { mediaType, size };
}
