/**
 * The digests a manifest names, for two different questions: which of them the manifest's repository is known
 * to hold (what a repository may be linked to, access-proof.ts), and which of them keeping the manifest useful
 * means keeping too (pins and other reachability walks). Unparseable manifests are still served byte-exact;
 * they just name nothing.
 */
import { isSha256Digest } from "./reference.ts";

interface ManifestFields {
  config?: unknown;
  layers?: unknown;
  manifests?: unknown;
  blobs?: unknown;
  subject?: unknown;
}

/**
 * What the registry that served a manifest had to hold in the manifest's own repository before it accepted the
 * manifest: an image manifest's config and layers, an index's child manifests. A registry (distribution, and
 * the hosted registries that follow it) refuses a pushed image manifest whose config or layers are not blobs of
 * that repository, and an index whose child manifests are not manifests of it; so a manifest an upstream served
 * for a repository is that upstream's confirmation of these digests for that repository.
 *
 * Nothing else in a manifest confirms anything. `subject` may name any digest at all (OCI 1.1 asks registries to
 * accept a subject they do not hold, so that a signature can be pushed before what it signs), artifact `blobs`
 * are not checked by every registry, and unknown fields are whatever the pusher wrote.
 */
export function confirmedDigests(bytes: Buffer): string[] {
  const m = parse(bytes);
  if (m === undefined) return [];
  return digestsOf([m.config, ...asList(m.layers), ...asList(m.manifests)]);
}

/**
 * Everything a manifest points at: config, layers, child manifests, artifact blobs and subject. For
 * reachability only (what a pin keeps, what a walk visits): being named here grants no access (confirmedDigests).
 */
export function reachableDigests(bytes: Buffer): string[] {
  const m = parse(bytes);
  if (m === undefined) return [];
  return digestsOf([m.config, m.subject, ...asList(m.layers), ...asList(m.manifests), ...asList(m.blobs)]);
}

/**
 * The digests among `reachableDigests` that name manifests: an index's child manifests and a subject. A walk
 * reads these as manifests; a config, a layer or an artifact blob it only keeps.
 */
export function reachableManifests(bytes: Buffer): string[] {
  const m = parse(bytes);
  if (m === undefined) return [];
  return digestsOf([m.subject, ...asList(m.manifests)]);
}

function parse(bytes: Buffer): ManifestFields | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString("utf8"));
  } catch {
    return undefined;
  }
  // Valid JSON is not necessarily an object: `null`, numbers and strings name nothing.
  return doc !== null && typeof doc === "object" ? doc : undefined;
}

function asList(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

/** The sha256 digests of descriptors, skipping anything that is not one. */
function digestsOf(descriptors: readonly unknown[]): string[] {
  const found: string[] = [];
  for (const d of descriptors) {
    const digest = (d as { digest?: unknown } | null | undefined)?.digest;
    if (typeof digest === "string" && isSha256Digest(digest)) found.push(digest);
  }
  return found;
}
