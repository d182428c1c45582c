/**
 * What the mirror knows about content beyond the bytes themselves: tag → digest pointers (with when they were
 * last confirmed upstream), which repository references which digest, which upstream served which content,
 * short-lived "the upstream said 404" records, and short locks that let several replicas agree on who
 * revalidates a tag. One interface, so the embedded store and the Redis store are interchangeable and pass one
 * conformance suite (test/conformance/metadata-store.ts).
 *
 * Links and provenance exist because content is stored once across repositories and upstreams, but may only be
 * served under a repository known to reference it, of an upstream known to hold it: otherwise anyone who knows a
 * digest could read content of a private repository through any other name. A missing record is never fatal:
 * the caller asks the upstream and records the answer. The rules the caches apply to them are in access-proof.ts.
 *
 * Nothing here is trusted beyond what the blob store confirms: a pointer to a digest whose manifest is not in
 * the store is treated as absent by the caches.
 */

export interface TagPointer {
  digest: string;
  mediaType: string;
  /**
   * When the upstream confirmed this pointer (ms since the epoch): the time the request that got the answer was
   * SENT, not when the answer arrived or was stored. It is what orders pointers (see `supersedes`), so an answer
   * that took long to arrive, or to be written, can never pass for newer than one obtained after it.
   */
  checkedAt: number;
}

/**
 * The one ordering rule of tag pointers, in every store and on every merge (Redis and the embedded fallback,
 * the journal replayed at start): `next` may replace `stored` unless `stored` was checked strictly later. A
 * pointer therefore never goes back in time, whatever order writes arrive in (a slow revalidation, a replica
 * that was cut off from Redis, a write retried late). Equal times: the later write wins.
 *
 * checkedAt values from different replicas are compared, so their clocks must agree to well within a tagTtl
 * (NTP); a skewed replica can only make its own pointers look older or newer by its skew.
 */
export function supersedes(next: TagPointer, stored: TagPointer | undefined): boolean {
  return stored === undefined || next.checkedAt >= stored.checkedAt;
}

export interface MetadataStore {
  getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined>;
  /**
   * Stores a pointer unless the one stored was checked later (`supersedes`): a write never replaces a newer
   * pointer, atomically with respect to concurrent writes. Pointers outlive their freshness (they are what is
   * served when stale).
   */
  putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void>;
  deleteTag(upstream: string, repo: string, tag: string): Promise<void>;
  /** Tags of a repository that have a pointer (order unspecified). */
  listTags(upstream: string, repo: string): Promise<string[]>;
  /** Repositories of an upstream with at least one tag pointer (order unspecified), for the admin API. */
  listRepositories(upstream: string): Promise<string[]>;

  /**
   * A store may bound its links by forgetting the least recently used ones (the embedded store's LRU count,
   * Redis's retention; each store's own tests pin its bound): `hasLink` answering yes and `addLinks` both count
   * as use. A forgotten link costs one upstream HEAD.
   */
  hasLink(upstream: string, repo: string, digest: string): Promise<boolean>;
  addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void>;

  /**
   * Records that `upstream` itself served these digests and their bytes verified (a committed fill, a hashed
   * manifest, a verified pass-through), or that an import of that upstream's images brought them. Per digest,
   * across repositories, and untouched by deleteRepository: it says where content came from, not who may read it.
   */
  addProvenance(upstream: string, digests: readonly string[]): Promise<void>;
  /** The upstreams recorded by addProvenance for `digest` (order unspecified; empty when none). */
  provenance(digest: string): Promise<string[]>;

  /** Remembers for `ttlMs` that the upstream has no `reference` (tag or digest) in `repo`. */
  putMissing(upstream: string, repo: string, reference: string, ttlMs: number): Promise<void>;
  isMissing(upstream: string, repo: string, reference: string): Promise<boolean>;
  clearMissing(upstream: string, repo: string, reference: string): Promise<void>;

  /**
   * Takes a named lock for at most `ttlMs` if nobody holds it (Redis: SET NX PX). Returns a token to release
   * it with, or undefined when it is held elsewhere. Locks are advisory: holders must cope with expiry.
   */
  tryLock(name: string, ttlMs: number): Promise<string | undefined>;
  unlock(name: string, token: string): Promise<void>;

  /** Forgets every tag, link and missing-record of a repository (purge). */
  deleteRepository(upstream: string, repo: string): Promise<void>;

  close(): Promise<void>;
}
