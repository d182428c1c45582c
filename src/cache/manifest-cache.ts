/**
 * Read-through manifests. A digest reference is served from the store forever (content never changes); a tag is
 * a pointer trusted for the upstream's `tagTtl`, then revalidated with a HEAD (which Docker Hub does not count
 * against its rate limit) and refetched only when the digest changed.
 *
 * When revalidation fails (upstream down, timing out, 5xx, 429, or offline by configuration) and a pointer is
 * known, the last known manifest is served and marked stale. A client never waits on the upstream longer than
 * `revalidateTimeout` for a manifest the cache holds (answer-deadline.ts): the revalidation goes on in the
 * background and its answer lands in the stores; with `staleWhileRevalidate` the client does not wait at all. An upstream 404 is remembered for `negativeTtl`, so
 * a storm of requests for a missing tag reaches the upstream once. Concurrent misses in this process share one
 * upstream request, and replicas sharing a metadata store take a short lock per tag so that one of them asks the
 * upstream per tag per TTL.
 *
 * A request's cache rule (cache-rules.ts, matched once per `get`) can change this for its repository and tag:
 * `immutable` serves a cached tag without ever revalidating it, `tagTtl` replaces the upstream's, `cache: false`
 * fetches every manifest from the upstream, verifies it and serves it without storing anything (as when the
 * disk is full), and `maxIdle` is handed to the janitor for the manifest served.
 */
import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { RegistryError } from "../oci/errors.ts";
import { type ManifestReference } from "../oci/reference.ts";
import { isSha256Digest } from "../oci/digest.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { isUpstreamUnwell } from "../upstream/upstream-errors.ts";
import { linkedWithoutRecord, servesUnrecordedLink, standingOf } from "./access-proof.ts";
import { confirmationLate, LATE, settleWithin, SharedExchanges } from "./answer-deadline.ts";
import { confirmedDigests } from "../oci/manifest.ts";
import type { ManifestStore, StoredManifest } from "../storage/manifest-store.ts";
import { StoreUnavailableError } from "../storage/content-store.ts";
import type { MetadataStore, TagPointer } from "../metadata/metadata-store.ts";
import type { CacheRule, CacheRules } from "../config/cache-rules.ts";

/** How a manifest was obtained, for logs, metrics and the `X-Mirror-Cache` header. */
export type ManifestSource = "hit" | "miss" | "revalidated" | "stale";

export interface ManifestResult {
  manifest: StoredManifest;
  source: ManifestSource;
}

/**
 * How long a replica holds the revalidation lock of a tag, and how long others wait for its result. The lock only
 * spares the upstream duplicate requests: a revalidation may outlast it (connect, headers and retries take
 * longer), and then another replica revalidates too. That is safe because a pointer is stamped with when its
 * request was sent and stores never let an earlier-stamped pointer replace a later one (`supersedes`): the slow
 * replica's older answer cannot overwrite the newer one, whenever it arrives.
 */
const REVALIDATION_LOCK_MS = 10_000;
const REVALIDATION_WAIT_MS = 2_000;
const REVALIDATION_POLL_MS = 50;

export class ManifestCache {
  private readonly manifests: ManifestStore;
  private readonly metadata: MetadataStore;
  private readonly maxBytes: number;
  private readonly now: () => number;
  /** One upstream exchange per tag or digest in this process (concurrent misses share it). */
  private readonly inflight = new SharedExchanges<ManifestResult>();
  private readonly metrics: Metrics | undefined;
  private readonly onNoSpace: ((err: Error) => void) | undefined;
  private readonly rules: CacheRules | undefined;
  private readonly noteIdleLimit: ((digest: string, ms: number) => void) | undefined;

  constructor(opts: {
    manifests: ManifestStore;
    metadata: MetadataStore;
    maxBytes: number;
    now?: () => number;
    metrics?: Metrics;
    onNoSpace?: (err: Error) => void;
    /** Per-repository rules (`rules:`); none: every request as its upstream's config says. */
    rules?: CacheRules;
    /** Told the digest of each manifest served under a rule with `maxIdle` (the janitor's noteIdleLimit). */
    noteIdleLimit?: (digest: string, ms: number) => void;
  }) {
    this.rules = opts.rules;
    this.noteIdleLimit = opts.noteIdleLimit;
    this.metrics = opts.metrics;
    this.onNoSpace = opts.onNoSpace;
    this.manifests = opts.manifests;
    this.metadata = opts.metadata;
    this.maxBytes = opts.maxBytes;
    this.now = opts.now ?? Date.now;
  }

  /** The rule a request for `ref` falls under (matched once per request: `get` takes it as given). */
  ruleFor(upstream: UpstreamClient, repo: string, ref: ManifestReference): CacheRule | undefined {
    return this.rules?.match(upstream.name, repo, ref.kind === "tag" ? ref.tag : undefined);
  }

  async get(
    upstream: UpstreamClient,
    repo: string,
    ref: ManifestReference,
    rule: CacheRule | undefined = this.ruleFor(upstream, repo, ref),
  ): Promise<ManifestResult> {
    if (rule?.cache === false) return this.passThrough(upstream, repo, ref);
    const result = await this.lookup(upstream, repo, ref, rule);
    if (rule?.maxIdle !== undefined) this.noteIdleLimit?.(result.manifest.digest, rule.maxIdle);
    return result;
  }

  /**
   * The stored manifest, or undefined when none is stored, or when the store cannot be reached now (an object
   * store down): the manifest then comes from the upstream, verified, as a miss.
   */
  private stored(digest: string): Promise<StoredManifest | undefined> {
    return this.manifests.get(digest).catch(unlessUnavailable(undefined));
  }

  private async lookup(
    upstream: UpstreamClient,
    repo: string,
    ref: ManifestReference,
    rule: CacheRule | undefined,
  ): Promise<ManifestResult> {
    if (ref.kind === "digest") {
      const cached = await this.stored(ref.digest);
      if (cached && (await this.mayServe(upstream, repo, ref.digest))) return { manifest: cached, source: "hit" };
      await this.refuseKnownMissing(upstream, repo, ref.digest);
      const fetching = this.inflight.join(`${upstream.name}\u0000${repo}\u0000${ref.digest}`, () =>
        this.guard(upstream, repo, ref.digest, () => this.fetch(upstream, repo, ref.digest, undefined)),
      );
      try {
        // Only content the cache may serve without this upstream's proof (access-proof.ts) bounds the wait.
        if (!cached || !(await linkedWithoutRecord(this.metadata, upstream, repo, ref.digest)))
          return await fetching.result;
        const outcome = await settleWithin(fetching.result, upstream.config.revalidateTimeout, fetching.since);
        if (outcome === LATE) throw confirmationLate(upstream, `manifest ${ref.digest} in ${repo}`);
        return outcome;
      } catch (err) {
        if (!cached && (await this.isStoredBlob(ref.digest, err)))
          throw new RegistryError("MANIFEST_UNKNOWN", `${ref.digest} is a blob, not a manifest`, {
            detail: (err as RegistryError).detail,
          });
        if (!cached || !(await servesUnrecordedLink(this.metadata, upstream, repo, ref.digest, err))) throw err;
        this.metrics?.staleServed.inc({ upstream: upstream.name, reason: (err as RegistryError).code });
        return { manifest: cached, source: "stale" };
      }
    }
    const pointer = await this.metadata.getTag(upstream.name, repo, ref.tag);
    const cached = pointer ? await this.stored(pointer.digest) : undefined;
    if (pointer && this.isFresh(upstream, pointer, rule)) {
      if (cached) return { manifest: cached, source: "hit" };
      // Fresh in a shared store (another replica confirmed it) but not on this node's disk: fetch the bytes by
      // digest. The tag itself needs no revalidation.
      const byDigest = await this.lookup(upstream, repo, { kind: "digest", digest: pointer.digest }, rule).catch(
        () => undefined,
      );
      if (byDigest) return byDigest;
    }
    await this.refuseKnownMissing(upstream, repo, ref.tag);
    const revalidation = this.inflight.join(`${upstream.name}\u0000${repo}\u0000${ref.tag}`, () =>
      this.revalidateOnce(upstream, repo, ref.tag),
    );
    // Nothing cached to answer with: the client waits for the upstream, as long as its timeouts allow.
    if (!cached) return revalidation.result;
    if (upstream.config.staleWhileRevalidate) {
      revalidation.result.catch(() => undefined); // the next request sees its outcome; nobody waits for it here
      return this.servedStale(upstream, cached, "BACKGROUND");
    }
    const outcome = await settleWithin(revalidation.result, upstream.config.revalidateTimeout, revalidation.since);
    return outcome === LATE ? this.servedStale(upstream, cached, "DEADLINE") : outcome;
  }

  /**
   * The cached manifest of a tag whose revalidation has not answered (yet): `reason` is the metric's label,
   * DEADLINE when it outlasted `revalidateTimeout`, BACKGROUND under `staleWhileRevalidate`.
   */
  private servedStale(upstream: UpstreamClient, cached: StoredManifest, reason: string): ManifestResult {
    this.metrics?.staleServed.inc({ upstream: upstream.name, reason });
    return { manifest: cached, source: "stale" };
  }

  /**
   * Forgets what is known about a tag (or a whole repository): the next pull asks the upstream. Content stays in
   * the store until eviction; it is simply no longer reachable through the purged names without the upstream.
   */
  async purge(upstream: UpstreamClient, repo: string, tag: string | undefined): Promise<void> {
    if (tag === undefined) {
      await this.metadata.deleteRepository(upstream.name, repo);
      return;
    }
    await this.metadata.deleteTag(upstream.name, repo, tag);
    await this.metadata.clearMissing(upstream.name, repo, tag);
  }

  /** Revalidates a tag now, whatever its TTL, and returns what it points at. */
  async refresh(upstream: UpstreamClient, repo: string, tag: string): Promise<ManifestResult> {
    await this.metadata.clearMissing(upstream.name, repo, tag);
    const pointer = await this.metadata.getTag(upstream.name, repo, tag);
    return this.inflight.join(`${upstream.name}\u0000${repo}\u0000${tag}`, () =>
      this.guard(upstream, repo, tag, () => this.revalidate(upstream, repo, tag, pointer)),
    ).result;
  }

  /** Whether a tag's pointer is trusted without asking: always under an `immutable` rule, else within the TTL. */
  private isFresh(upstream: UpstreamClient, pointer: TagPointer, rule: CacheRule | undefined): boolean {
    if (rule?.immutable) return true;
    return this.now() - pointer.checkedAt < (rule?.tagTtl ?? upstream.config.tagTtl);
  }

  /**
   * A manifest of a repository whose rule says `cache: false`: fetched from the upstream, verified against its
   * digest like any other, served, and neither stored nor pointed at by a tag.
   */
  private async passThrough(upstream: UpstreamClient, repo: string, ref: ManifestReference): Promise<ManifestResult> {
    const reference = ref.kind === "tag" ? ref.tag : ref.digest;
    if (upstream.config.offline)
      throw new RegistryError(
        "MANIFEST_UNKNOWN",
        `manifest ${reference} of ${repo} is never cached (a rule says cache: false), and upstream ${upstream.name} is offline`,
        { detail: { upstream: upstream.name, offline: true } },
      );
    return { manifest: await this.fetchVerified(upstream, repo, reference), source: "miss" };
  }

  /**
   * Whether a manifest request's upstream failure is the upstream's way of saying "not a manifest": distribution
   * answers 500 when a layer digest is asked for as a manifest. When the store holds that digest as a blob (with
   * no manifest sidecar, so it is not a manifest here), the answer is MANIFEST_UNKNOWN, not an upstream outage.
   */
  private async isStoredBlob(digest: string, err: unknown): Promise<boolean> {
    if (!(err instanceof RegistryError) || err.code !== "UPSTREAM_ERROR") return false;
    const status = (err.detail as { status?: unknown } | undefined)?.status;
    return (
      typeof status === "number" &&
      status >= 500 &&
      (await this.manifests.holdsBytes(digest).catch(unlessUnavailable(false)))
    );
  }

  /** A recent upstream 404 for this reference answers at once, without asking again. */
  private async refuseKnownMissing(upstream: UpstreamClient, repo: string, reference: string): Promise<void> {
    if (await this.metadata.isMissing(upstream.name, repo, reference)) {
      throw new RegistryError(
        "MANIFEST_UNKNOWN",
        `upstream ${upstream.name} has no manifest ${reference} in ${repo} (remembered)`,
      );
    }
  }

  /**
   * May the stored manifest `digest` answer a request through this upstream and repository (access-proof.ts)?
   * Linked and proven: yes. Proven by this upstream but not linked here: if a HEAD of it in this repository
   * says so (remembered). Never served by this upstream: no, whatever a HEAD says; the caller then GETs it from
   * this upstream, and the bytes are checked against the digest.
   */
  private async mayServe(upstream: UpstreamClient, repo: string, digest: string): Promise<boolean> {
    const standing = await standingOf(this.metadata, upstream, repo, digest);
    if (standing !== "confirm-repository") return standing === "granted";
    // The upstream's answer is recorded whenever it comes; the client waits for it up to revalidateTimeout.
    const confirmation = this.confirmRepository(upstream, repo, digest);
    const outcome = await settleWithin(confirmation, upstream.config.revalidateTimeout);
    if (outcome === LATE) throw confirmationLate(upstream, `manifest ${digest} in ${repo}`);
    return outcome;
  }

  /** Whether the upstream's HEAD says `repo` holds manifest `digest`; a yes is remembered as a link. */
  private async confirmRepository(upstream: UpstreamClient, repo: string, digest: string): Promise<boolean> {
    try {
      const head = await upstream.headManifest(repo, digest);
      if (head.digest !== undefined && head.digest !== digest) return false;
    } catch (err) {
      if (err instanceof RegistryError && err.code === "MANIFEST_UNKNOWN") throw err;
      return false; // could not confirm: the fetch path reports the upstream's state
    }
    await this.metadata.addLinks(upstream.name, repo, [digest]);
    return true;
  }

  /**
   * Revalidates a tag, unless another replica holds its revalidation lock: then waits briefly for that replica's
   * answer to land in the shared store and serves it.
   */
  private async revalidateOnce(upstream: UpstreamClient, repo: string, tag: string): Promise<ManifestResult> {
    const lockName = `revalidate\u0000${upstream.name}\u0000${repo}\u0000${tag}`;
    const before = await this.metadata.getTag(upstream.name, repo, tag);
    const token =
      before && !upstream.config.offline ? await this.metadata.tryLock(lockName, REVALIDATION_LOCK_MS) : undefined;
    if (before && !upstream.config.offline && token === undefined) {
      const deadline = this.now() + REVALIDATION_WAIT_MS;
      while (this.now() < deadline) {
        await sleep(REVALIDATION_POLL_MS);
        const pointer = await this.metadata.getTag(upstream.name, repo, tag);
        if (pointer && pointer.checkedAt > before.checkedAt) {
          const cached = await this.stored(pointer.digest);
          if (cached) return { manifest: cached, source: "hit" };
        }
      }
      // The other replica is slow or gone: ask the upstream ourselves.
    }
    try {
      return await this.guard(upstream, repo, tag, () => this.revalidate(upstream, repo, tag, before));
    } finally {
      if (token !== undefined) await this.metadata.unlock(lockName, token);
    }
  }

  private async revalidate(
    upstream: UpstreamClient,
    repo: string,
    tag: string,
    pointer: TagPointer | undefined,
  ): Promise<ManifestResult> {
    try {
      // The answer is at least as new as the request: the pointer is stamped with when it was sent.
      const askedAt = this.now();
      const head = await upstream.headManifest(repo, tag);
      if (head.digest !== undefined && isSha256Digest(head.digest)) {
        const cached = await this.stored(head.digest);
        // The tag's HEAD confirms the repository, but only bytes this upstream served itself prove the content:
        // otherwise a Docker-Content-Digest could name another upstream's manifest (access-proof.ts).
        if (cached && (await standingOf(this.metadata, upstream, repo, cached.digest)) !== "prove-content") {
          await this.metadata.putTag(upstream.name, repo, tag, {
            digest: cached.digest,
            mediaType: cached.mediaType,
            checkedAt: askedAt,
          });
          await this.metadata.addLinks(upstream.name, repo, [cached.digest]);
          return { manifest: cached, source: "revalidated" };
        }
        // The HEAD named the digest: the pointer is what it said, when it was asked; the GET (by digest, so
        // the bytes must be exactly that manifest) only brings the content. A GET by tag would restamp an old
        // answer with a later time, and a late GET could then overwrite what another replica learned since.
        return await this.fetch(upstream, repo, head.digest, tag, askedAt);
      }
      return await this.fetch(upstream, repo, tag, tag);
    } catch (err) {
      // The upstream says the tag is gone: forget the pointer rather than serve a deleted tag later.
      if (pointer && err instanceof RegistryError && err.code === "MANIFEST_UNKNOWN")
        await this.metadata.deleteTag(upstream.name, repo, tag);
      if (pointer && isUpstreamUnwell(err)) {
        const cached = await this.stored(pointer.digest);
        if (cached) {
          this.metrics?.staleServed.inc({ upstream: upstream.name, reason: err.code });
          return { manifest: cached, source: "stale" };
        }
      }
      throw err;
    }
  }

  /**
   * Upstream outcomes that need translating for the client: a 404 is remembered for `negativeTtl`; an upstream
   * that is offline by configuration means "not cached", which the client should hear as MANIFEST_UNKNOWN at
   * once rather than as an outage.
   */
  private async guard(
    upstream: UpstreamClient,
    repo: string,
    reference: string,
    work: () => Promise<ManifestResult>,
  ): Promise<ManifestResult> {
    try {
      return await work();
    } catch (err) {
      if (err instanceof RegistryError && err.code === "MANIFEST_UNKNOWN" && upstream.config.negativeTtl > 0) {
        await this.metadata.putMissing(upstream.name, repo, reference, upstream.config.negativeTtl);
      }
      if (upstream.config.offline && err instanceof RegistryError && err.code === "UNAVAILABLE") {
        throw new RegistryError(
          "MANIFEST_UNKNOWN",
          `manifest ${reference} of ${repo} is not cached, and upstream ${upstream.name} is offline`,
          { detail: { upstream: upstream.name, offline: true } },
        );
      }
      throw err;
    }
  }

  /**
   * GETs a manifest, verifies its digest and stores it. The repository is then linked to it and to what its
   * registry had to hold there to accept it (confirmedDigests), never to whatever else the manifest names; and
   * the upstream is on record as having served the manifest itself (not what it names).
   */
  private async fetch(
    upstream: UpstreamClient,
    repo: string,
    reference: string,
    tag: string | undefined,
    askedAt = this.now(),
  ): Promise<ManifestResult> {
    // `askedAt`: when the upstream was asked what `tag` points at (this GET, unless a HEAD answered it before).
    const fetched = await this.fetchVerified(upstream, repo, reference);
    const { digest } = fetched;
    try {
      await this.manifests.put(digest, fetched.mediaType, fetched.bytes);
    } catch (err) {
      // No room to store it, or the object store is down: serve it anyway, uncached (and without a pointer to
      // bytes we do not have).
      if (err instanceof StoreUnavailableError) return { manifest: fetched, source: "miss" };
      if ((err as NodeJS.ErrnoException).code !== "ENOSPC") throw err;
      this.onNoSpace?.(err as Error);
      return { manifest: fetched, source: "miss" };
    }
    await this.metadata.addLinks(upstream.name, repo, [digest, ...confirmedDigests(fetched.bytes)]);
    await this.metadata.addProvenance(upstream.name, [digest]);
    if (tag !== undefined) {
      await this.metadata.putTag(upstream.name, repo, tag, {
        digest,
        mediaType: fetched.mediaType,
        checkedAt: askedAt,
      });
      await this.metadata.clearMissing(upstream.name, repo, tag);
    }
    return { manifest: fetched, source: "miss" };
  }

  /** GETs a manifest and checks its bytes against the digest asked for and the one the upstream announced. */
  private async fetchVerified(upstream: UpstreamClient, repo: string, reference: string): Promise<StoredManifest> {
    const fetched = await upstream.getManifest(repo, reference, this.maxBytes);
    const digest = `sha256:${createHash("sha256").update(fetched.bytes).digest("hex")}`;
    if (isSha256Digest(reference) && digest !== reference) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.name} sent a manifest for ${reference} that hashes to ${digest}`,
      );
    }
    if (fetched.digest !== undefined && isSha256Digest(fetched.digest) && fetched.digest !== digest) {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${upstream.name} sent a manifest whose Docker-Content-Digest ${fetched.digest} does not match its bytes (${digest})`,
      );
    }
    return { digest, mediaType: fetched.mediaType, bytes: fetched.bytes };
  }
}

/** A catch handler: `value` for StoreUnavailableError (the store cannot be reached), anything else rethrown. */
function unlessUnavailable<T>(value: T): (err: unknown) => T {
  return (err) => {
    if (err instanceof StoreUnavailableError) return value;
    throw err;
  };
}
