/**
 * Reads a bundle (an OCI image layout in a tar, from a file, stdin or an HTTP request body) into the cache.
 *
 * Nothing enters the cache unverified. Manifests are hashed before the manifest store takes them; every other
 * blob is streamed into a writer of the content store, which verifies its digest and size (its file name, and
 * the tar entry's size) before committing it; it is committed only when its size also matches the descriptor
 * that references it. Content referenced by nothing in the bundle is refused too: an import adds images, not
 * loose bytes. Every entry is hashed, streamed, also one whose content the cache already holds or the bundle
 * carries twice (nothing is written then): a damaged bundle is reported whatever the cache holds.
 *
 * Bundles written by `mirror export` put index.json and the manifests first, so each blob is checked and
 * committed as it arrives. Other tools (skopeo's oci-archive) write blobs before index.json; those wait,
 * verified, in their open writers until the metadata shows what they are, then are committed or refused in the
 * same way. Each blob's room in the cache budget is held from its admission until its writer commits or is
 * closed, so blobs waiting for their metadata count against the budget too.
 *
 * Then, per reference in index.json: if every manifest and blob of the image is now in the cache (from this
 * bundle or already held, as with a delta bundle), its tag pointer is set, its repository is linked to all of
 * it (so the mirror serves it with no upstream), and, with `pin`, it is pinned. An image that is not complete
 * gets no tag pointer and is reported with what it lacks; the tag keeps pointing at what it pointed at before.
 * Every refused entry is reported by name with the reason.
 *
 * Referrers (OCI 1.1 signatures, SBOMs) are ordinary references in the bundle, by digest. Who refers to what is
 * recomputed from the `subject` field of every imported manifest (verified by its digest), not taken from an
 * annotation: each subject's referrers list (referrers-cache.ts) gains them, so the mirror answers
 * `GET /v2/<name>/referrers/<digest>` with them, upstream or not. When index.json says referrers were included
 * (REFERRERS_ANNOTATION), an imported image without any gets an empty list: the exporter looked, and found none.
 */
import { createHash } from "node:crypto";
import type { Logger } from "pino";
import {
  ContentMismatchError,
  type ContentStore,
  type ContentWriter,
  type WriteReservation,
} from "../storage/content-store.ts";
import { UpstreamResolver, type ImageReference, type RoutedUpstream } from "../config/upstream-resolver.ts";
import { walkManifests } from "../cache/image-walker.ts";
import type { ManifestStore } from "../storage/manifest-store.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import type { ReferrersCache } from "../cache/referrers-cache.ts";
import { referrerOf, type ReferrerDescriptor } from "../oci/referrers.ts";
import type { PinEntry, PinList } from "../storage/pin-list.ts";
import { imageBlobs, indexEntries, parseManifest, type Descriptor } from "../oci/manifest.ts";
import { MediaType } from "../oci/media-types.ts";
import { digestOf, isSha256Digest } from "../oci/digest.ts";
import {
  blobDigestOf,
  CONTAINERD_NAME_ANNOTATION,
  entryName,
  INDEX_FILE,
  LAYOUT_FILE,
  REF_NAME_ANNOTATION,
  REFERENCE_ANNOTATION,
  REFERRER_OF_ANNOTATION,
  REFERRERS_ANNOTATION,
} from "./bundle-layout.ts";
import { TarReader, type TarEntry } from "./tar-reader.ts";
import { errorMessage } from "../caught-errors.ts";

export interface ImportedImage {
  reference: string;
  digest: string;
  /** imported: complete, tagged (for a tag reference), linked; incomplete: something is missing; refused: unusable. */
  status: "imported" | "incomplete" | "refused";
  pinned: boolean;
  /** Digests of manifests or blobs the image needs that are not in the cache. */
  missing?: string[];
  /** Child manifests of an index neither in the bundle nor in the cache (platforms not exported). */
  platformsLeftOut?: number;
  /** For a referrer (OCI 1.1), the digest of the manifest it refers to, as its index.json entry says. */
  referrerOf?: string;
  reason?: string;
}

export interface ImportReport {
  /** True when every entry was accepted, every image is complete, and the bundle was read to its end. */
  ok: boolean;
  images: ImportedImage[];
  manifests: { added: number; present: number };
  blobs: { added: number; present: number; bytes: number };
  refused: Array<{ entry: string; reason: string }>;
  /** Referrers lists set or extended: one per subject (and repository) that has referrers, or had none. */
  referrers: { lists: number };
  /** Why the bundle could not be read to its end (truncated, not a tar, …). */
  error?: string;
}

export interface ImportProgress {
  /** Bytes of the bundle read so far. */
  bytesRead: number;
  entries: number;
  /** Blob and manifest bytes added to the cache. */
  bytesAdded: number;
}

interface Declared {
  kind: "manifest" | "blob";
  size: number;
  mediaType: string | undefined;
}

interface Top {
  descriptor: Descriptor;
  reference: ImageReference | undefined;
  /** Why the reference could not be used (no annotation, unknown upstream, digest mismatch). */
  problem: string | undefined;
}

/** What an image in the bundle reaches: digests the cache holds, digests it lacks, child manifests left out at export. */
interface ImageContents {
  /** The manifests: the top, then every child reached. */
  manifests: string[];
  stored: string[];
  missing: string[];
  leftOut: number;
}

/** The most index.json may hold: thousands of references fit in a fraction of it. */
const MAX_INDEX_BYTES = 16 * 1024 * 1024;

export interface ImporterOptions {
  store: ContentStore;
  manifests: ManifestStore;
  metadata: MetadataStore;
  /**
   * Room for a blob of this size (evicting unpinned content if need be), held until its write is committed or
   * discarded; undefined when there is none. Absent: no budget.
   */
  admit?: (size: number) => Promise<WriteReservation | undefined>;
  pins: PinList;
  /** Where the referrers of imported manifests are recorded; absent: they are imported as content only. */
  referrers?: Pick<ReferrersCache, "record">;
  upstreams: readonly RoutedUpstream[];
  manifestMaxBytes: number;
  log: Logger;
}

export class Importer {
  private readonly opts: ImporterOptions;
  /** Names the references in a bundle's index.json: each must start with a configured upstream. */
  private readonly resolver: UpstreamResolver;

  constructor(opts: ImporterOptions) {
    this.opts = opts;
    this.resolver = new UpstreamResolver(opts.upstreams);
  }

  async import(
    source: AsyncIterable<Buffer | Uint8Array | string>,
    opts: { pin?: boolean; onProgress?: (p: ImportProgress) => void } = {},
  ): Promise<ImportReport> {
    const run = new ImportRun(this.opts, this.resolver, opts.pin === true, opts.onProgress);
    const report = await run.execute(source);
    this.opts.log.info(
      {
        images: report.images.length,
        imported: report.images.filter((i) => i.status === "imported").length,
        refused: report.refused.length,
        blobsAdded: report.blobs.added,
        bytes: report.blobs.bytes,
        error: report.error,
      },
      "bundle imported",
    );
    return report;
  }
}

/** The state of one import. */
class ImportRun {
  private readonly o: ImporterOptions;
  private readonly resolver: UpstreamResolver;
  private readonly pin: boolean;
  private readonly onProgress: ((p: ImportProgress) => void) | undefined;
  private readonly declared = new Map<string, Declared>();
  /** Entries of this bundle by digest: accepted (stored or already present) or refused. */
  private readonly seen = new Map<string, "accepted" | "refused">();
  /** Verified blobs that arrived before anything referenced them, in their writers (open, not committed). */
  private readonly pending = new Map<string, ContentWriter>();
  private tops: Top[] = [];
  private sawIndex = false;
  private pinsBefore: Map<string, PinEntry | undefined> | undefined;
  private readonly report: ImportReport = {
    ok: false,
    images: [],
    manifests: { added: 0, present: 0 },
    blobs: { added: 0, present: 0, bytes: 0 },
    refused: [],
    referrers: { lists: 0 },
  };
  /** index.json says the exporter included referrers (REFERRERS_ANNOTATION). */
  private referrersIncluded = false;
  /** Per imported reference: where, its manifests, and whether it is a referrer (for recordReferrers). */
  private readonly importedManifests: Array<{
    upstream: string;
    repository: string;
    digests: string[];
    referrer: boolean;
  }> = [];
  private readonly progress: ImportProgress = { bytesRead: 0, entries: 0, bytesAdded: 0 };

  constructor(
    o: ImporterOptions,
    resolver: UpstreamResolver,
    pin: boolean,
    onProgress: ((p: ImportProgress) => void) | undefined,
  ) {
    this.o = o;
    this.resolver = resolver;
    this.pin = pin;
    this.onProgress = onProgress;
  }

  async execute(source: AsyncIterable<Buffer | Uint8Array | string>): Promise<ImportReport> {
    const tar = new TarReader(source);
    let current: string | undefined;
    try {
      for await (const entry of tar.entries()) {
        current = entryName(entry.name);
        await this.entry(entry);
        current = undefined;
        this.progress.entries++;
        this.progress.bytesRead = tar.position;
        this.onProgress?.(this.progress);
      }
    } catch (err) {
      this.report.error = errorMessage(err);
      // The entry being read when the bundle broke off (or could not be stored) is refused, by name.
      if (current !== undefined && !this.report.refused.some((r) => r.entry === current))
        this.refuse(current, blobDigestOf(current), this.report.error);
    }
    try {
      if (!this.sawIndex && this.report.error === undefined)
        this.report.error = `the bundle has no ${INDEX_FILE}: it is not an OCI image layout`;
      await this.resolvePending();
      for (const [digest, writer] of this.pending) {
        await writer.close();
        this.refuse(
          `blobs/${digest.replace(":", "/")}`,
          digest,
          "not referenced by index.json or by any verified manifest in the bundle",
        );
      }
      this.pending.clear();
      for (const top of this.tops) this.report.images.push(await this.finish(top));
      await this.recordReferrers();
    } finally {
      for (const writer of this.pending.values()) await writer.close();
    }
    const r = this.report;
    r.ok = r.error === undefined && r.refused.length === 0 && r.images.every((i) => i.status === "imported");
    return r;
  }

  private async entry(entry: TarEntry): Promise<void> {
    const name = entryName(entry.name);
    if (entry.type === "directory") return;
    if (name === LAYOUT_FILE) return this.layoutFile(entry);
    if (name === INDEX_FILE) return this.indexFile(entry);
    const digest = blobDigestOf(name);
    if (entry.type !== "file" || digest === undefined) {
      this.refuse(name, undefined, entry.type !== "file" ? "not a regular file" : "not part of an OCI image layout");
      return;
    }
    if (!isSha256Digest(digest)) {
      this.refuse(name, undefined, "only sha256 content can be verified, so only sha256 content is imported");
      return;
    }
    // A second copy of an entry already accepted: nothing to store, but its bytes are checked all the same.
    if (this.seen.get(digest) === "accepted" || this.pending.has(digest)) {
      await this.checkCopy(name, digest, entry);
      return;
    }
    const declared = this.declared.get(digest);
    if (declared !== undefined && declared.size !== entry.size) {
      this.refuse(name, digest, `${entry.size} bytes, but the descriptor that references it says ${declared.size}`);
      return;
    }
    if (declared?.kind === "manifest") return this.manifestEntry(name, digest, entry, declared);
    return this.blobEntry(name, digest, entry, declared);
  }

  private async layoutFile(entry: TarEntry): Promise<void> {
    const text = (await readAll(entry, 64 * 1024, LAYOUT_FILE)).toString("utf8");
    let version: unknown;
    try {
      version = (JSON.parse(text) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      version = undefined;
    }
    if (typeof version !== "string" || !version.startsWith("1."))
      throw new Error(`${LAYOUT_FILE} names layout version ${JSON.stringify(version)}; only 1.x is understood`);
  }

  private async indexFile(entry: TarEntry): Promise<void> {
    if (this.sawIndex) throw new Error(`the bundle holds ${INDEX_FILE} twice`);
    this.sawIndex = true;
    const bytes = await readAll(entry, MAX_INDEX_BYTES, INDEX_FILE);
    const entries = indexEntries(bytes);
    if (entries === undefined) throw new Error(`${INDEX_FILE} is not an image index`);
    this.referrersIncluded = annotationOf(bytes, REFERRERS_ANNOTATION) === "included";
    for (const d of entries) {
      if (d === undefined || !isSha256Digest(d.digest) || d.size === undefined) {
        this.tops.push({
          descriptor: { digest: String(d?.digest) },
          reference: undefined,
          problem: "descriptor without a sha256 digest and a size",
        });
        continue;
      }
      const top: Top = { descriptor: d, reference: undefined, problem: undefined };
      try {
        top.reference = this.referenceOf(d);
      } catch (err) {
        top.problem = errorMessage(err);
      }
      this.tops.push(top);
      if (top.reference) this.expectContent(d.digest, "manifest", d.size, d.mediaType);
    }
    if (this.pin) {
      // Pinned before any content arrives: a budget sweep during a long import must not evict its first images.
      const entries = this.tops
        .filter((t) => t.reference !== undefined)
        .map((t) => ({ reference: t.reference!.canonical, digest: t.descriptor.digest }));
      if (entries.length > 0) this.pinsBefore = await this.o.pins.set(entries);
    }
    await this.resolvePending();
  }

  /**
   * The reference an index.json descriptor stands for: our annotation, else containerd's, else the layout's
   * ref.name when it is a full reference (a bare tag from another tool names no repository).
   */
  private referenceOf(d: Descriptor): ImageReference {
    const a = d.annotations ?? {};
    const text = a[REFERENCE_ANNOTATION] ?? a[CONTAINERD_NAME_ANNOTATION] ?? a[REF_NAME_ANNOTATION];
    if (text === undefined)
      throw new Error(
        `no ${REFERENCE_ANNOTATION} or ${REF_NAME_ANNOTATION} annotation: the image has no name to import it under`,
      );
    const ref = this.resolver.reference(text, { requireUpstream: true });
    if (ref.reference.kind === "digest" && ref.reference.digest !== d.digest)
      throw new Error(`${ref.canonical} names another digest than its descriptor (${d.digest})`);
    return ref;
  }

  private async manifestEntry(name: string, digest: string, entry: TarEntry, declared: Declared): Promise<void> {
    if (entry.size > this.o.manifestMaxBytes) {
      this.refuse(
        name,
        digest,
        `a manifest of ${entry.size} bytes, over limits.manifestMaxBytes (${this.o.manifestMaxBytes})`,
      );
      return;
    }
    const bytes = await readAll(entry, this.o.manifestMaxBytes, name);
    const actual = digestOf(bytes);
    if (actual !== digest) {
      this.refuse(name, digest, `content hashes to ${actual}`);
      return;
    }
    await this.storeManifest(digest, bytes, declared);
  }

  private async storeManifest(digest: string, bytes: Buffer, declared: Declared): Promise<void> {
    const doc = parseManifest(bytes);
    const mediaType =
      declared.mediaType ?? doc.mediaType ?? (doc.manifests !== undefined ? MediaType.ociIndex : MediaType.ociManifest);
    const had = await this.o.manifests.get(digest);
    if (had && had.mediaType === mediaType) this.report.manifests.present++;
    else {
      await this.o.manifests.put(digest, mediaType, bytes);
      this.report.manifests.added++;
      this.progress.bytesAdded += bytes.length;
    }
    this.seen.set(digest, "accepted");
    for (const child of doc.manifests ?? [])
      if (child.size !== undefined) this.expectContent(child.digest, "manifest", child.size, child.mediaType);
    for (const blob of imageBlobs(doc))
      if (blob.size !== undefined) this.expectContent(blob.digest, "blob", blob.size, blob.mediaType);
    await this.resolvePending();
  }

  private async blobEntry(
    name: string,
    digest: string,
    entry: TarEntry,
    declared: Declared | undefined,
  ): Promise<void> {
    if ((await this.o.store.size(digest)) === entry.size) {
      // Already cached (verified when it was committed): nothing is written, but the bundle's copy is hashed too,
      // so a damaged bundle is reported whatever the cache already holds.
      if (!(await this.checkCopy(name, digest, entry))) return;
      this.seen.set(digest, "accepted");
      this.report.blobs.present++;
      return;
    }
    const reservation = this.o.admit ? await this.o.admit(entry.size) : undefined;
    if (this.o.admit && reservation === undefined) {
      this.refuse(name, digest, `no room in the cache for ${entry.size} bytes (storage.maxSize, or the disk is full)`);
      return;
    }
    let writer: ContentWriter;
    try {
      writer = await this.o.store.createWriter(digest, { expectedSize: entry.size, reservation });
    } catch (err) {
      reservation?.release();
      throw err;
    }
    // From here the reservation is the writer's: released when it commits or is closed.
    let kept = false;
    try {
      try {
        for await (const chunk of entry.body()) await writer.write([chunk]);
      } catch (err) {
        this.refuse(name, digest, errorMessage(err));
        throw err; // the bundle cannot be read past this point (or, on a write error, stored)
      }
      try {
        await writer.verify();
      } catch (err) {
        if (!(err instanceof ContentMismatchError)) throw err;
        this.refuse(
          name,
          digest,
          err.actualDigest !== undefined
            ? `content hashes to ${err.actualDigest}`
            : `${err.size} bytes, but its tar entry says ${entry.size}`,
        );
        return;
      }
      if (declared) {
        await writer.commit();
        this.accepted(digest, entry.size);
      } else {
        this.pending.set(digest, writer);
        kept = true;
      }
    } finally {
      if (!kept) await writer.close();
    }
  }

  /**
   * Hashes an entry whose content needs no writing (the cache or this bundle already holds it), streamed: a
   * damaged copy is refused by name and changes nothing. A copy cut short by the end of the bundle is refused
   * too, and the bundle's error ends the import. True when the copy hashes to its digest.
   */
  private async checkCopy(name: string, digest: string, entry: TarEntry): Promise<boolean> {
    const hash = createHash("sha256");
    try {
      for await (const chunk of entry.body()) hash.update(chunk);
    } catch (err) {
      this.refuseCopy(name, digest, errorMessage(err));
      throw err; // the bundle cannot be read past this point
    }
    const actual = `sha256:${hash.digest("hex")}`;
    if (actual === digest) return true;
    this.refuseCopy(name, digest, `content hashes to ${actual}`);
    return false;
  }

  /** A damaged copy of content that is (or may be) accepted from elsewhere: reported without undoing that. */
  private refuseCopy(name: string, digest: string, reason: string): void {
    if (this.seen.get(digest) === "accepted" || this.pending.has(digest))
      this.report.refused.push({ entry: name, reason });
    else this.refuse(name, digest, reason);
  }

  /** Commits (or stores as manifests) the waiting blobs that something now references, until none changes. */
  private async resolvePending(): Promise<void> {
    for (let changed = true; changed;) {
      changed = false;
      for (const [digest, writer] of this.pending) {
        const declared = this.declared.get(digest);
        if (declared === undefined) continue;
        this.pending.delete(digest);
        changed = true;
        const name = `blobs/sha256/${digest.slice(7)}`;
        const size = writer.written;
        if (declared.size !== size) {
          await writer.close();
          this.refuse(name, digest, `${size} bytes, but the descriptor that references it says ${declared.size}`);
        } else if (declared.kind === "manifest") {
          if (size > this.o.manifestMaxBytes) {
            await writer.close();
            this.refuse(
              name,
              digest,
              `a manifest of ${size} bytes, over limits.manifestMaxBytes (${this.o.manifestMaxBytes})`,
            );
            continue;
          }
          let bytes: Buffer;
          try {
            bytes = await readWritten(writer);
          } finally {
            await writer.close();
          }
          await this.storeManifest(digest, bytes, declared);
        } else {
          try {
            await writer.commit();
          } finally {
            await writer.close();
          }
          this.accepted(digest, size);
        }
        break; // the map changed under the iterator
      }
    }
  }

  private accepted(digest: string, size: number): void {
    this.seen.set(digest, "accepted");
    this.report.blobs.added++;
    this.report.blobs.bytes += size;
    this.progress.bytesAdded += size;
  }

  private expectContent(digest: string, kind: Declared["kind"], size: number, mediaType: string | undefined): void {
    if (!isSha256Digest(digest)) return;
    const known = this.declared.get(digest);
    // A digest referenced both as a manifest and as a blob is stored as a manifest (it is one, to somebody).
    if (known && (known.kind === "manifest" || kind === "blob")) return;
    this.declared.set(digest, { kind, size, mediaType });
  }

  private refuse(entry: string, digest: string | undefined, reason: string): void {
    if (digest !== undefined) this.seen.set(digest, "refused");
    this.report.refused.push({ entry, reason });
  }

  /** Decides an index.json reference: tag, links and pin if complete; otherwise report what it lacks. */
  private async finish(top: Top): Promise<ImportedImage> {
    const digest = top.descriptor.digest;
    const ref = top.reference;
    if (ref === undefined) {
      return {
        reference: top.descriptor.annotations?.[REF_NAME_ANNOTATION] ?? digest,
        digest,
        status: "refused",
        pinned: false,
        reason: top.problem,
      };
    }
    let walk: ImageContents;
    try {
      walk = await this.contents(digest);
    } catch (err) {
      // Not walkable (indexes nested too deep, a manifest that is no image): nothing to tag.
      if (this.pin && this.pinsBefore !== undefined) await this.unpin(ref.canonical);
      return { reference: ref.canonical, digest, status: "refused", pinned: false, reason: errorMessage(err) };
    }
    const pinned = this.pin && this.pinsBefore !== undefined;
    if (walk.missing.length > 0) {
      if (pinned) await this.unpin(ref.canonical);
      return {
        reference: ref.canonical,
        digest,
        status: "incomplete",
        pinned: false,
        missing: walk.missing,
        platformsLeftOut: walk.leftOut || undefined,
      };
    }
    const { upstream, repository, reference } = ref;
    const manifest = await this.o.manifests.get(digest);
    await this.o.metadata.addLinks(upstream.name, repository, walk.stored);
    // What the bundle carried is this upstream's content by the operator's word; what was already held (a delta
    // bundle) keeps the provenance it had (access-proof.ts).
    await this.o.metadata.addProvenance(
      upstream.name,
      walk.stored.filter((d) => this.seen.get(d) === "accepted"),
    );
    await this.o.metadata.clearMissing(upstream.name, repository, digest);
    const referrerOfAnnotation = top.descriptor.annotations?.[REFERRER_OF_ANNOTATION];
    this.importedManifests.push({
      upstream: upstream.name,
      repository,
      digests: walk.manifests,
      referrer: referrerOfAnnotation !== undefined,
    });
    if (reference.kind === "tag") {
      await this.o.metadata.putTag(upstream.name, repository, reference.tag, {
        digest,
        mediaType: manifest!.mediaType,
        checkedAt: Date.now(),
      });
      await this.o.metadata.clearMissing(upstream.name, repository, reference.tag);
    }
    return {
      reference: ref.canonical,
      digest,
      status: "imported",
      pinned,
      platformsLeftOut: walk.leftOut || undefined,
      ...(referrerOfAnnotation !== undefined ? { referrerOf: referrerOfAnnotation } : {}),
    };
  }

  /**
   * Records the referrers among the imported manifests: each manifest whose `subject` names a sha256 digest is
   * added to that subject's list in its repository; and when the bundle says referrers were included, each
   * manifest of an imported image (not of a referrer: the exporter follows referrers only so deep) gets a list,
   * empty if the bundle carried none for it. With `pin`, each list is pinned under
   * `<upstream>/<repository>@<subject> (referrers)`, so a re-import moves that pin to the new list.
   */
  private async recordReferrers(): Promise<void> {
    const recorder = this.o.referrers;
    if (recorder === undefined) return;
    const lists = new Map<
      string,
      { upstream: string; repository: string; subject: string; referrers: ReferrerDescriptor[] }
    >();
    const listOf = (upstream: string, repository: string, subject: string) => {
      const key = `${upstream}\u0000${repository}\u0000${subject}`;
      let list = lists.get(key);
      if (list === undefined) lists.set(key, (list = { upstream, repository, subject, referrers: [] }));
      return list;
    };
    for (const imported of this.importedManifests) {
      for (const digest of imported.digests) {
        if (this.referrersIncluded && !imported.referrer) listOf(imported.upstream, imported.repository, digest);
        const manifest = await this.o.manifests.get(digest);
        const subject = manifest ? parseManifest(manifest.bytes).subject?.digest : undefined;
        if (manifest === undefined || subject === undefined || !isSha256Digest(subject)) continue;
        const descriptor = referrerOf(manifest, subject);
        if (descriptor !== undefined)
          listOf(imported.upstream, imported.repository, subject).referrers.push(descriptor);
      }
    }
    const checkedAt = Date.now();
    const pins: Array<{ reference: string; digest: string }> = [];
    for (const list of lists.values()) {
      const digest = await recorder.record(list.upstream, list.repository, list.subject, list.referrers, checkedAt);
      this.report.referrers.lists++;
      // Pinned with the images, or eviction could take the list and leave a pinned signature undiscoverable.
      pins.push({ reference: `${list.upstream}/${list.repository}@${list.subject} (referrers)`, digest });
    }
    if (this.pin && pins.length > 0) await this.o.pins.set(pins);
  }

  /**
   * What an image needs, walked (image-walker.ts, indexes at any depth) over what the cache now holds. A child
   * manifest of an index that is neither cached nor was in the bundle was left out at export (a platform not
   * selected): the image is complete without it, as long as the walk reaches at least one image manifest with
   * all its blobs. One that was in the bundle but refused makes the image incomplete.
   */
  private async contents(digest: string): Promise<ImageContents> {
    const top = await this.o.manifests.get(digest);
    if (!top) return { manifests: [], stored: [], missing: [digest], leftOut: 0 };
    const walked = await walkManifests(top, async (d) => await this.o.manifests.get(d.digest));
    const refused = walked.absent.filter((d) => this.seen.has(d.digest)).map((d) => d.digest);
    const leftOut = walked.absent.filter((d) => !this.seen.has(d.digest)).map((d) => d.digest);
    const manifests = [top.digest, ...walked.children.map((m) => m.digest)];
    const into: ImageContents = {
      manifests,
      stored: [...manifests],
      missing: refused,
      leftOut: leftOut.length,
    };
    // No image manifest here at all (every platform left out, at any depth): the image cannot be pulled.
    if (walked.images.length === 0) {
      if (walked.absent.length === 0) throw new Error(`the index ${digest} reaches no image manifest`);
      into.missing.push(...leftOut);
    }
    for (const blob of walked.blobs.keys()) {
      if (this.o.store.index.has(blob) || (await this.o.store.size(blob)) !== undefined) into.stored.push(blob);
      else into.missing.push(blob);
    }
    return into;
  }

  private async unpin(reference: string): Promise<void> {
    const before = this.pinsBefore?.get(reference);
    await this.o.pins.restore(new Map([[reference, before]]));
  }
}

/** A string annotation of index.json itself (entries were already read by indexEntries: the JSON parses). */
function annotationOf(bytes: Buffer, key: string): string | undefined {
  const annotations = (JSON.parse(bytes.toString("utf8")) as { annotations?: unknown }).annotations;
  if (annotations === null || typeof annotations !== "object") return undefined;
  const value = (annotations as Record<string, unknown>)[key];
  return typeof value === "string" ? value : undefined;
}

async function readAll(entry: TarEntry, max: number, what: string): Promise<Buffer> {
  if (entry.size > max) throw new Error(`${what} is ${entry.size} bytes, over the ${max} bytes it may have`);
  const parts: Buffer[] = [];
  for await (const chunk of entry.body()) parts.push(chunk);
  return Buffer.concat(parts);
}

/** What a writer holds so far, read back whole (a manifest that arrived before anything referenced it). */
async function readWritten(writer: ContentWriter): Promise<Buffer> {
  const bytes = Buffer.allocUnsafe(writer.written);
  for (let at = 0; at < bytes.length;) {
    const n = await writer.readAt(bytes.subarray(at), bytes.length - at, at);
    if (n === 0) throw new Error(`${writer.digest}: its temp file ended at ${at} of ${bytes.length} bytes`);
    at += n;
  }
  return bytes;
}
