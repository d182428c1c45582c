/**
 * Writes bundles (bundle-layout.ts): resolves each reference through the read-through manifest cache, then
 * streams manifests, configs and layers into a tar, fetching blobs through the blob cache exactly as a client
 * pull does (a cached blob is read from disk; a missing one is downloaded into the cache first, joining a
 * download already running). A few blobs are prepared ahead of the one being written, so downloads overlap
 * with writing; each blob's bytes pass through once, checked against its digest and size on the way out, so a
 * bundle never carries content the cache has let rot.
 *
 * The bundle's bytes depend only on what it carries: entries in plan order with a fixed modification time, so the
 * same references and content give the same file whoever writes it (the CLI from a data directory, or a running
 * mirror's `/admin/v1/export`), and its length is known before the first byte (`size`).
 */
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import type { BlobCache } from "../cache/blob-cache.ts";
import { UpstreamResolver, type ImageReference } from "../config/upstream-resolver.ts";
import { walkImage } from "../cache/image-walker.ts";
import type { ManifestCache } from "../cache/manifest-cache.ts";
import type { ReferrersCache } from "../cache/referrers-cache.ts";
import type { StoredManifest } from "../storage/manifest-store.ts";
import type { Descriptor } from "../oci/manifest.ts";
import { MediaType } from "../oci/media-types.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import {
  blobPath,
  CONTAINERD_NAME_ANNOTATION,
  INDEX_FILE,
  LAYOUT_FILE,
  LAYOUT_VERSION,
  PLATFORMS_ANNOTATION,
  REF_NAME_ANNOTATION,
  REFERENCE_ANNOTATION,
  REFERRER_OF_ANNOTATION,
  REFERRERS_ANNOTATION,
} from "./bundle-layout.ts";
import { directoryHeader, endOfArchive, fileHeader, padding } from "./tar-writer.ts";
import { errorMessage } from "../caught-errors.ts";

export interface ExportedImage {
  reference: ImageReference<UpstreamClient>;
  top: StoredManifest;
  /** Child manifests included: nested indexes and the selected platforms' image manifests. */
  children: StoredManifest[];
  /** The image manifests included (the top itself for a single image). */
  images: StoredManifest[];
  /** Config and layer descriptors of the included images. */
  blobs: Map<string, Descriptor>;
  /** For a referrer (OCI 1.1), the digest of the manifest it refers to; undefined for the references asked for. */
  referrerOf?: string;
}

interface PlannedBlob {
  digest: string;
  size: number;
  /** Where to fetch it from: the first image that references it. */
  upstream: UpstreamClient;
  repository: string;
}

export interface ExportPlan {
  /** The references asked for, then the referrers found for them (`referrerOf` set). */
  images: ExportedImage[];
  platforms: readonly string[];
  /** Whether the referrers of the exported manifests were looked up and included. */
  referrers: boolean;
  /** Referrers that could not be included (a manifest that is no image, e.g. the old artifact manifest type). */
  skippedReferrers: Array<{ reference: string; reason: string }>;
  /** Every manifest, each once, tops first in reference order. */
  manifests: StoredManifest[];
  /** Configs and layers to write, each once. */
  blobs: PlannedBlob[];
  /** Configs and layers left out because the destination holds them. */
  excluded: Array<{ digest: string; size: number }>;
}

export interface ExportProgress {
  items: { done: number; total: number };
  bytes: { done: number; total: number };
}

/**
 * The modification time of every entry: fixed (the epoch), so a bundle is a function of its content. The dates an
 * importer cares about are in the content itself (image configs); a tar date would only make equal bundles differ.
 */
const ENTRY_MTIME = 0;

/** Tar blocks: an entry's header and padded content. */
const BLOCK = 512;

/** Blobs prepared (opened, or downloading) ahead of the one being written. */
const LOOKAHEAD = 3;

/**
 * How many levels of referrers are followed below an exported image: its signatures and SBOMs (1), their own
 * signatures (2), and so on. Bounded, so a chain of artifacts referring to each other cannot make an endless walk.
 */
export const MAX_REFERRER_DEPTH = 4;

interface ReadySource {
  chunks(): AsyncIterable<Buffer>;
  close(): Promise<void>;
}

export class Exporter {
  private readonly manifests: ManifestCache;
  private readonly blobs: BlobCache;
  private readonly referrers: ReferrersCache | undefined;
  private readonly resolver: UpstreamResolver<UpstreamClient>;

  /** Without `referrers`, no referrers are ever included. */
  constructor(opts: {
    manifests: ManifestCache;
    blobs: BlobCache;
    referrers?: ReferrersCache;
    upstreams: readonly UpstreamClient[];
  }) {
    this.manifests = opts.manifests;
    this.blobs = opts.blobs;
    this.referrers = opts.referrers;
    this.resolver = new UpstreamResolver(opts.upstreams);
  }

  /**
   * Resolves every reference (fetching manifests through the cache) and decides what the bundle holds.
   * `exclude`: digest → size of blobs the destination already has (from its inventory). `referrers` (default
   * true): also carry the referrers of every exported manifest, and theirs, MAX_REFERRER_DEPTH levels down.
   */
  async plan(
    references: readonly string[],
    opts: {
      platforms?: readonly string[];
      exclude?: ReadonlyMap<string, number>;
      referrers?: boolean;
      onManifest?: () => void;
    } = {},
  ): Promise<ExportPlan> {
    const platforms = opts.platforms ?? [];
    const images: ExportedImage[] = [];
    const seen = new Set<string>();
    for (const text of references) {
      const reference = this.resolver.reference(text);
      if (seen.has(reference.canonical)) continue;
      seen.add(reference.canonical);
      let walked;
      try {
        walked = await walkImage(
          this.manifests,
          reference.upstream,
          reference.repository,
          reference.reference,
          platforms,
          opts.onManifest,
        );
      } catch (err) {
        throw new Error(`${reference.canonical}: ${errorMessage(err)}`, { cause: err });
      }
      // walkImage has reached every selected image manifest, at any depth of nested indexes, or thrown.
      const { top, children, images: included, blobs } = walked;
      if (top.mediaType === MediaType.dockerSchema1 || top.mediaType === MediaType.dockerSchema1Signed) {
        throw new Error(`${reference.canonical}: Docker schema 1 manifests cannot be carried in an OCI layout`);
      }
      images.push({ reference, top, children, images: included, blobs });
    }
    const withReferrers = opts.referrers !== false && this.referrers !== undefined;
    const skippedReferrers = withReferrers ? await this.addReferrers(images, opts.onManifest) : [];
    const manifests = new Map<string, StoredManifest>();
    for (const image of images)
      for (const m of [image.top, ...image.children]) if (!manifests.has(m.digest)) manifests.set(m.digest, m);
    const blobs = new Map<string, PlannedBlob>();
    const excluded = new Map<string, number>();
    for (const image of images) {
      for (const [digest, d] of image.blobs) {
        if (blobs.has(digest) || excluded.has(digest)) continue;
        if (typeof d.size !== "number" || !Number.isSafeInteger(d.size) || d.size < 0)
          throw new Error(`${image.reference.canonical}: descriptor of ${digest} has no valid size`);
        if (opts.exclude?.get(digest) === d.size) excluded.set(digest, d.size);
        else
          blobs.set(digest, {
            digest,
            size: d.size,
            upstream: image.reference.upstream,
            repository: image.reference.repository,
          });
      }
    }
    return {
      images,
      platforms,
      referrers: withReferrers,
      skippedReferrers,
      manifests: [...manifests.values()],
      blobs: [...blobs.values()],
      excluded: [...excluded].map(([digest, size]) => ({ digest, size })),
    };
  }

  /**
   * Appends to `images` the referrers of every manifest they hold (the top and every child: a signature may be
   * of one platform's manifest), looked up through the referrers cache in the same repository, then the
   * referrers of those, MAX_REFERRER_DEPTH levels down; each referrer once. A referrer that cannot be walked as
   * an image (no config, no layers) is left out and reported; a lookup that fails fails the export.
   */
  private async addReferrers(
    images: ExportedImage[],
    onManifest: (() => void) | undefined,
  ): Promise<Array<{ reference: string; reason: string }>> {
    const referrers = this.referrers!;
    const skipped: Array<{ reference: string; reason: string }> = [];
    // Each manifest once per repository: `<upstream>/<repository>@<digest>`.
    const where = (image: ExportedImage, digest: string) =>
      `${image.reference.upstream.name}/${image.reference.repository}@${digest}`;
    const included = new Set(images.flatMap((i) => [i.top, ...i.children].map((m) => where(i, m.digest))));
    let level = images.slice();
    for (let depth = 1; depth <= MAX_REFERRER_DEPTH && level.length > 0; depth++) {
      const next: ExportedImage[] = [];
      for (const image of level) {
        const { upstream, repository } = image.reference;
        for (const subject of [image.top, ...image.children]) {
          let found;
          try {
            found = await referrers.get(upstream, repository, subject.digest);
          } catch (err) {
            throw new Error(
              `${image.reference.canonical}: cannot list the referrers of ${subject.digest}: ${errorMessage(err)} (--no-referrers leaves them out)`,
              { cause: err },
            );
          }
          for (const d of found.referrers) {
            const reference = this.resolver.reference(`${upstream.name}/${repository}@${d.digest}`);
            if (included.has(reference.canonical)) continue;
            included.add(reference.canonical);
            let walked;
            try {
              walked = await walkImage(this.manifests, upstream, repository, reference.reference, [], onManifest);
            } catch (err) {
              skipped.push({ reference: reference.canonical, reason: errorMessage(err) });
              continue;
            }
            const referrer: ExportedImage = {
              reference,
              top: walked.top,
              children: walked.children,
              images: walked.images,
              blobs: walked.blobs,
              referrerOf: subject.digest,
            };
            images.push(referrer);
            next.push(referrer);
          }
        }
      }
      level = next;
    }
    return skipped;
  }

  /** What writing the plan will put in the bundle (items and bytes), for progress. */
  totals(plan: ExportPlan): ExportProgress {
    const bytes = plan.manifests.reduce((n, m) => n + m.bytes.length, 0) + plan.blobs.reduce((n, b) => n + b.size, 0);
    return { items: { done: 0, total: plan.manifests.length + plan.blobs.length }, bytes: { done: 0, total: bytes } };
  }

  /** The exact length of the bundle `write` produces for `plan` (a Content-Length before the first byte). */
  size(plan: ExportPlan): number {
    const entry = (n: number) => BLOCK + Math.ceil(n / BLOCK) * BLOCK;
    let total = entry(layoutJson().length) + entry(this.indexJson(plan).length) + 2 * BLOCK; // + blobs/, blobs/sha256/
    for (const m of plan.manifests) total += entry(m.bytes.length);
    for (const b of plan.blobs) total += entry(b.size);
    return total + 2 * BLOCK; // the end-of-archive marker
  }

  /**
   * The bundle as a stream of chunks, for `pipeline(Readable.from(…), output)`. Throws (ending the stream with
   * an error) on anything that would make the bundle wrong: a blob that cannot be fetched, or content that does
   * not match its digest or size. Stopping the iteration early releases every blob prepared ahead.
   */
  async *write(
    plan: ExportPlan,
    opts: { progress?: ExportProgress; onProgress?: (p: ExportProgress) => void } = {},
  ): AsyncGenerator<Buffer> {
    const progress = opts.progress ?? this.totals(plan);
    const report = () => opts.onProgress?.(progress);
    const mtime = ENTRY_MTIME;
    const small = function* (name: string, bytes: Buffer): Generator<Buffer> {
      yield fileHeader({ name, size: bytes.length, mtime });
      yield bytes;
      yield padding(bytes.length);
    };
    yield* small(LAYOUT_FILE, layoutJson());
    yield* small(INDEX_FILE, this.indexJson(plan));
    yield directoryHeader("blobs", mtime);
    yield directoryHeader("blobs/sha256", mtime);
    for (const m of plan.manifests) {
      yield* small(blobPath(m.digest), m.bytes);
      progress.items.done++;
      progress.bytes.done += m.bytes.length;
      report();
    }

    const prepared: Array<Promise<ReadySource>> = [];
    const prepareUpTo = (i: number) => {
      while (prepared.length <= Math.min(i, plan.blobs.length - 1)) {
        const p = this.prepare(plan.blobs[prepared.length]!);
        p.catch(() => undefined); // awaited in turn below; a failure ahead of its turn is not unhandled
        prepared.push(p);
      }
    };
    let next = 0;
    try {
      for (; next < plan.blobs.length; next++) {
        prepareUpTo(next + LOOKAHEAD - 1);
        const blob = plan.blobs[next]!;
        const source = await prepared[next]!;
        try {
          yield fileHeader({ name: blobPath(blob.digest), size: blob.size, mtime });
          const hash = createHash("sha256");
          let written = 0;
          for await (const chunk of source.chunks()) {
            written += chunk.length;
            if (written > blob.size)
              throw new Error(`${blob.digest} is larger than its descriptor says (${blob.size} bytes)`);
            hash.update(chunk);
            yield chunk;
            progress.bytes.done += chunk.length;
            report();
          }
          const actual = `sha256:${hash.digest("hex")}`;
          if (written !== blob.size)
            throw new Error(`${blob.digest}: ${written} bytes, but its descriptor says ${blob.size}`);
          if (actual !== blob.digest)
            throw new Error(
              `${blob.digest}: the cached content hashes to ${actual} (damaged on disk? delete it with DELETE /admin/v1/blobs/${blob.digest})`,
            );
          yield padding(blob.size);
          progress.items.done++;
          report();
        } finally {
          await source.close();
        }
      }
      yield endOfArchive();
    } finally {
      // Sources prepared beyond the point reached (an error, or the consumer stopped) still hold handles or bodies.
      for (const p of prepared.slice(next + 1))
        void p.then(
          (s) => s.close(),
          () => undefined,
        );
    }
  }

  private indexJson(plan: ExportPlan): Buffer {
    const index = {
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: plan.images.map((image) => ({
        mediaType: image.top.mediaType,
        digest: image.top.digest,
        size: image.top.bytes.length,
        annotations:
          image.referrerOf !== undefined
            ? { [REFERENCE_ANNOTATION]: image.reference.canonical, [REFERRER_OF_ANNOTATION]: image.referrerOf }
            : {
                [REF_NAME_ANNOTATION]: image.reference.canonical,
                [REFERENCE_ANNOTATION]: image.reference.canonical,
                [CONTAINERD_NAME_ANNOTATION]: image.reference.canonical,
              },
      })),
    };
    const annotations = {
      ...(plan.platforms.length > 0 ? { [PLATFORMS_ANNOTATION]: plan.platforms.join(",") } : {}),
      ...(plan.referrers ? { [REFERRERS_ANNOTATION]: "included" } : {}),
    };
    if (Object.keys(annotations).length > 0) Object.assign(index, { annotations });
    return Buffer.from(`${JSON.stringify(index, null, 2)}\n`);
  }

  /**
   * The blob's bytes as the blob cache answers a GET: committed content, a download followed as it arrives, or
   * (no room to cache it, or cached but not yet proved by this upstream) the upstream body, verified as it streams
   * (VerifyStream), straight into the bundle.
   */
  private async prepare(blob: PlannedBlob): Promise<ReadySource> {
    const { body } = await this.blobs.get(blob.upstream, blob.repository, blob.digest);
    return Buffer.isBuffer(body) ? fromStream(Readable.from([body])) : fromStream(body);
  }
}

function layoutJson(): Buffer {
  return Buffer.from(`${JSON.stringify({ imageLayoutVersion: LAYOUT_VERSION })}\n`);
}

function fromStream(body: Readable): ReadySource {
  return {
    chunks: () => body as AsyncIterable<Buffer>,
    close: async () => {
      body.destroy();
    },
  };
}
