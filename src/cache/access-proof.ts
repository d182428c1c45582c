/**
 * What a repository name unlocks. Content is stored once, by digest, for every repository of every upstream; a
 * request names an upstream and a repository, and stored content answers it only when two records say so:
 *
 * - a link (upstream, repository, digest): the upstream says this repository holds the content. Links come only
 *   from what the upstream confirms for that repository: a manifest it served there (verified against its
 *   digest) and what that manifest's registry had to hold in the repository to accept it (manifest-references.ts
 *   says which fields, and why not `subject`); a HEAD of the blob or manifest in that repository; bytes it served
 *   for that repository; an import of that repository's images.
 * - provenance (upstream, digest): this upstream itself served these bytes and they verified (a committed fill,
 *   a manifest fetched and hashed, a verified pass-through), or an import of its images brought them. A link is
 *   the upstream's word; provenance is its proof. Another configured upstream may answer HEAD 200 for anything
 *   or list any digest in its manifests: its word must not unlock content that a different upstream served.
 *
 * So a request stands in one of three places, each with the cheapest way to prove what is missing:
 *
 * - "granted": linked and proven; served from the store with no upstream request.
 * - "confirm-repository": this upstream proved the content, but this repository is not linked to it: a HEAD of
 *   the repository upstream confirms it (the upstream holds the bytes; it only says whether this name may read them).
 * - "prove-content": this upstream never proved the content: only its own bytes will do, a GET from it whose
 *   bytes verify (passed through to the client, and recorded). A HEAD is never enough.
 *
 * Content cached before provenance was recorded has none, and neither has content whose record was lost
 * (evicted from the embedded store's bounds, expired in Redis): it is "prove-content", so each upstream proves
 * it once more by a verified GET, which costs one download and never serves what an upstream could not. Where
 * that upstream cannot be asked (offline by configuration, or unwell right now: unreachable, 5xx, rate-limited),
 * a link is honoured for content that no upstream at all is on record for (what it was linked to before
 * provenance existed), as a stale answer: a cache upgraded during an outage keeps serving what it held.
 * Content another upstream is on record for stays unreadable there.
 */
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { isUpstreamUnwell } from "../upstream/upstream-errors.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";

export type Standing = "granted" | "confirm-repository" | "prove-content";

/** Where a request for `digest` through `upstream`/`repo` stands, from the metadata store's records. */
export async function standingOf(
  metadata: MetadataStore,
  upstream: UpstreamClient,
  repo: string,
  digest: string,
): Promise<Standing> {
  const [linked, servedBy] = await Promise.all([
    metadata.hasLink(upstream.name, repo, digest),
    metadata.provenance(digest),
  ]);
  const proven = servedBy.includes(upstream.name) || (upstream.config.offline && linked && servedBy.length === 0);
  if (!proven) return "prove-content";
  return linked ? "granted" : "confirm-repository";
}

/** The upstream served `digests` for `repo` and they verified: the repository is linked, the upstream proven. */
export async function recordServed(
  metadata: MetadataStore,
  upstream: string,
  repo: string,
  digests: readonly string[],
): Promise<void> {
  await Promise.all([metadata.addProvenance(upstream, digests), metadata.addLinks(upstream, repo, digests)]);
}

/**
 * Whether content this upstream could not prove just now (`err`: why not) may be served from the cache anyway:
 * only when the upstream is unwell, and the content was linked here before any upstream was on record for it.
 */
export async function servesUnrecordedLink(
  metadata: MetadataStore,
  upstream: UpstreamClient,
  repo: string,
  digest: string,
  err: unknown,
): Promise<boolean> {
  return isUpstreamUnwell(err) && (await linkedWithoutRecord(metadata, upstream, repo, digest));
}

/**
 * Whether `digest` is linked here and no upstream at all is on record for it: content that `servesUnrecordedLink`
 * lets the cache serve when this upstream cannot prove it.
 */
export async function linkedWithoutRecord(
  metadata: MetadataStore,
  upstream: UpstreamClient,
  repo: string,
  digest: string,
): Promise<boolean> {
  const [linked, servedBy] = await Promise.all([
    metadata.hasLink(upstream.name, repo, digest),
    metadata.provenance(digest),
  ]);
  return linked && servedBy.length === 0;
}
