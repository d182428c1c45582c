/**
 * Read-through referrers (OCI 1.1 `GET /v2/<name>/referrers/<digest>`), cached like a tag. The list of a
 * (upstream, repository, subject) is rendered as an image index (oci/referrers.ts), stored in the manifest store
 * by its digest, and pointed at by a tag pointer under a reserved key, `referrers:<digest>`: a key that no real
 * tag can be (`:` is outside the tag grammar), so it never collides with one, and every place that lists tags
 * leaves it out by the same rule (`isValidTag`). The pointer is trusted for the upstream's `tagTtl`, then asked
 * again; when the upstream is unwell or slower than `revalidateTimeout`, the last known list is served and marked
 * stale, as a tag is.
 *
 * Where the list comes from: the upstream's referrers API; when that answers 404 (a registry without the API,
 * such as distribution 2.8, answers 404 to any unknown route), the fallback tag `sha256-<hex>` of the spec's
 * "Unavailable Referrers API", read through the manifest cache (so that tag is cached like any tag); no such
 * tag means no referrers, an empty list. The list is kept unfiltered, one per subject: every `artifactType`
 * filter is applied to it by the caller, so one upstream request answers every filter, online or not.
 *
 * A repository whose cache rule (cache-rules.ts) says `cache: false` has its lists asked of the upstream at every
 * request and never stored, like its manifests and blobs.
 */
import { RegistryError } from "../oci/errors.ts";
import { digestOf } from "../oci/digest.ts";
import { MediaType } from "../oci/media-types.ts";
import {
  parseReferrersIndex,
  referrersFallbackTag,
  renderReferrersIndex,
  type ReferrerDescriptor,
} from "../oci/referrers.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { MetadataStore, TagPointer } from "../metadata/metadata-store.ts";
import type { ManifestStore } from "../storage/manifest-store.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { isUpstreamUnwell } from "../upstream/upstream-errors.ts";
import { LATE, settleWithin, SharedExchanges } from "./answer-deadline.ts";
import type { ManifestCache, ManifestSource } from "./manifest-cache.ts";
import type { CacheRules } from "../config/cache-rules.ts";

/** The metadata key under which the referrers list of `subject` is pointed at, beside the repository's tags. */
export function referrersKey(subject: string): string {
  return `referrers:${subject}`;
}

export interface ReferrersResult {
  referrers: ReferrerDescriptor[];
  source: ManifestSource;
}

export class ReferrersCache {
  private readonly manifestCache: ManifestCache;
  private readonly manifests: ManifestStore;
  private readonly metadata: MetadataStore;
  private readonly maxBytes: number;
  private readonly now: () => number;
  private readonly metrics: Metrics | undefined;
  private readonly onNoSpace: ((err: Error) => void) | undefined;
  /** Requests to the upstream in flight, one per list, with when each started (for the shared deadline). */
  private readonly inflight = new SharedExchanges<ReferrersResult>();
  private readonly rules: CacheRules | undefined;

  constructor(opts: {
    manifestCache: ManifestCache;
    manifests: ManifestStore;
    metadata: MetadataStore;
    maxBytes: number;
    now?: () => number;
    metrics?: Metrics;
    onNoSpace?: (err: Error) => void;
    /** Per-repository rules (`rules:`): `cache: false` lists are passed through, never stored. */
    rules?: CacheRules;
  }) {
    this.rules = opts.rules;
    this.manifestCache = opts.manifestCache;
    this.manifests = opts.manifests;
    this.metadata = opts.metadata;
    this.maxBytes = opts.maxBytes;
    this.now = opts.now ?? Date.now;
    this.metrics = opts.metrics;
    this.onNoSpace = opts.onNoSpace;
  }

  /**
   * The referrers of `subject` (a sha256 digest) in `repo`, unfiltered. Past the TTL, a known list waits on the
   * upstream at most `revalidateTimeout` (not at all with `staleWhileRevalidate`) and is then served stale, as a
   * tag is (answer-deadline.ts); the request goes on and records its answer when it comes.
   */
  async get(upstream: UpstreamClient, repo: string, subject: string): Promise<ReferrersResult> {
    if (this.rules?.match(upstream.name, repo, undefined)?.cache === false)
      return this.passThrough(upstream, repo, subject);
    const pointer = await this.metadata.getTag(upstream.name, repo, referrersKey(subject));
    const cached = pointer ? await this.read(pointer) : undefined;
    if (pointer && cached && this.now() - pointer.checkedAt < upstream.config.tagTtl)
      return { referrers: cached, source: "hit" };
    const key = `${upstream.name}\u0000${repo}\u0000${subject}`;
    const refreshing = this.inflight.join(key, () => this.refresh(upstream, repo, subject, pointer));
    if (!cached) return refreshing.result;
    if (upstream.config.staleWhileRevalidate) {
      refreshing.result.catch(() => undefined); // the next request sees its outcome
      return this.servedStale(upstream, cached, "BACKGROUND");
    }
    const outcome = await settleWithin(refreshing.result, upstream.config.revalidateTimeout, refreshing.since);
    return outcome === LATE ? this.servedStale(upstream, cached, "DEADLINE") : outcome;
  }

  private servedStale(upstream: UpstreamClient, cached: ReferrerDescriptor[], reason: string): ReferrersResult {
    this.metrics?.staleServed.inc({ upstream: upstream.name, reason });
    return { referrers: cached, source: "stale" };
  }

  /**
   * Adds `referrers` to what is known of the referrers of `subject`, confirmed at `checkedAt`: an import, whose
   * bundle carried these manifests with `subject` naming it. What was known before stays listed (a bundle may
   * carry fewer referrers than the mirror has seen); a digest listed in both takes the new descriptor. Returns
   * the digest of the list's index (what a pin of the list names).
   */
  async record(
    upstream: string,
    repo: string,
    subject: string,
    referrers: readonly ReferrerDescriptor[],
    checkedAt: number,
  ): Promise<string> {
    const pointer = await this.metadata.getTag(upstream, repo, referrersKey(subject));
    const known = pointer ? ((await this.read(pointer)) ?? []) : [];
    const merged = new Map(known.map((d) => [d.digest, d]));
    for (const d of referrers) merged.set(d.digest, d);
    const bytes = renderReferrersIndex([...merged.values()]);
    const digest = digestOf(bytes);
    await this.manifests.put(digest, MediaType.ociIndex, bytes);
    await this.metadata.putTag(upstream, repo, referrersKey(subject), {
      digest,
      mediaType: MediaType.ociIndex,
      checkedAt,
    });
    return digest;
  }

  /** The list a pointer names, when its index is still stored (and is one: it was rendered here). */
  private async read(pointer: TagPointer): Promise<ReferrerDescriptor[] | undefined> {
    const stored = await this.manifests.get(pointer.digest);
    return stored ? parseReferrersIndex(stored.bytes) : undefined;
  }

  private async refresh(
    upstream: UpstreamClient,
    repo: string,
    subject: string,
    pointer: TagPointer | undefined,
  ): Promise<ReferrersResult> {
    // The pointer is stamped with when the upstream was asked, as tag pointers are (metadata-store.ts).
    const askedAt = this.now();
    let answer: { referrers: ReferrerDescriptor[]; stale: boolean };
    try {
      answer = await this.ask(upstream, repo, subject);
    } catch (err) {
      if (pointer && isUpstreamUnwell(err)) {
        const cached = await this.read(pointer);
        if (cached) return this.servedStale(upstream, cached, err.code);
      }
      // Offline by configuration and nothing imported or cached: the mirror is all there is, and it knows of none.
      if (upstream.config.offline && err instanceof RegistryError && err.code === "UNAVAILABLE")
        return { referrers: [], source: "stale" };
      throw err;
    }
    // A fallback tag served stale by the manifest cache is not a confirmation: answered, but not recorded.
    if (answer.stale) return { referrers: answer.referrers, source: "stale" };
    const bytes = renderReferrersIndex(answer.referrers);
    const digest = digestOf(bytes);
    try {
      await this.manifests.put(digest, MediaType.ociIndex, bytes);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
      this.onNoSpace?.(err as Error);
      return { referrers: answer.referrers, source: "miss" };
    }
    await this.metadata.putTag(upstream.name, repo, referrersKey(subject), {
      digest,
      mediaType: MediaType.ociIndex,
      checkedAt: askedAt,
    });
    return { referrers: answer.referrers, source: pointer?.digest === digest ? "revalidated" : "miss" };
  }

  /** The list of a `cache: false` repository: asked of the upstream, neither stored nor pointed at. */
  private async passThrough(upstream: UpstreamClient, repo: string, subject: string): Promise<ReferrersResult> {
    try {
      const answer = await this.ask(upstream, repo, subject);
      return { referrers: answer.referrers, source: answer.stale ? "stale" : "miss" };
    } catch (err) {
      // Offline by configuration: the mirror is all there is, and it keeps nothing of this repository.
      if (upstream.config.offline && err instanceof RegistryError && err.code === "UNAVAILABLE")
        return { referrers: [], source: "stale" };
      throw err;
    }
  }

  /** Asks the upstream: its referrers API, else (404) the fallback tag, else no referrers. */
  private async ask(
    upstream: UpstreamClient,
    repo: string,
    subject: string,
  ): Promise<{ referrers: ReferrerDescriptor[]; stale: boolean }> {
    const answer = await upstream.getReferrers(repo, subject, this.maxBytes);
    if (answer.kind === "index") return { referrers: answer.referrers, stale: false };
    const tag = referrersFallbackTag(subject);
    let fallback;
    try {
      fallback = await this.manifestCache.get(upstream, repo, { kind: "tag", tag });
    } catch (err) {
      if (err instanceof RegistryError && (err.code === "MANIFEST_UNKNOWN" || err.code === "NAME_UNKNOWN"))
        return { referrers: [], stale: false };
      throw err;
    }
    const referrers = parseReferrersIndex(fallback.manifest.bytes);
    if (referrers === undefined)
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.name} has a fallback referrers tag ${tag} in ${repo} that is not an OCI image index of descriptors`,
        { detail: { upstream: upstream.name } },
      );
    return { referrers, stale: fallback.source === "stale" };
  }
}
