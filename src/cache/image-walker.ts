/**
 * Walks an image: the manifest a reference names, then, for an index, its child manifests, recursively (an
 * index may list other indexes: the OCI image spec allows it, and containerd follows them), and the config and
 * layer descriptors of every image manifest reached. The one walk shared by the prefetcher and the bundle
 * exporter (through the read-through manifest cache, so they fetch as client pulls do) and by the importer
 * (over what the cache holds), so all three agree on what an image is made of.
 *
 * Rules of the walk:
 * - `platforms` selects image manifests by their descriptor's platform (none: every one). A child descriptor
 *   of an index type without a platform is always followed: the platforms are chosen inside it.
 * - Each manifest is visited once (a digest listed twice, at any depth, is walked the first time only), and
 *   indexes nest at most MAX_INDEX_DEPTH deep: a deeper chain is an error, not an endless walk.
 * - A manifest that lists neither child manifests nor a config (nor schema 1 layers) is not an image: error.
 * - An image walk that reaches no image manifest at all is an error for callers that fetch what they need
 *   (walkImage); the importer, which only looks at what it holds, decides for itself (`absent`).
 */
import { isIndexType } from "../oci/media-types.ts";
import { imageBlobs, isIndexManifest, parseManifest, platformMatches, type Descriptor } from "../oci/manifest.ts";
import type { ManifestReference } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { ManifestCache } from "./manifest-cache.ts";
import type { StoredManifest } from "../storage/manifest-store.ts";

/** Levels of indexes below the top one: an index of indexes of images has 1. */
export const MAX_INDEX_DEPTH = 8;

export interface WalkedImage {
  top: StoredManifest;
  /** Every manifest reached below the top (nested indexes and images), each once, in walk order. */
  children: StoredManifest[];
  /** The image manifests reached: the top itself for a single image, else the selected platforms. */
  images: StoredManifest[];
  /** Config and layer descriptors of every image reached, by digest (first seen wins), in walk order. */
  blobs: Map<string, Descriptor>;
  /** Selected child descriptors the source did not have (see ChildSource). */
  absent: Descriptor[];
}

/** A child manifest of an index by its descriptor; undefined: not available from this source. */
export type ChildSource = (descriptor: Descriptor) => Promise<StoredManifest | undefined>;

/** Walks from `top` (already fetched) through `child` for everything below it. */
export async function walkManifests(
  top: StoredManifest,
  child: ChildSource,
  opts: { platforms?: readonly string[]; onManifest?: () => void } = {},
): Promise<WalkedImage> {
  const platforms = opts.platforms ?? [];
  const walked: WalkedImage = { top, children: [], images: [], blobs: new Map(), absent: [] };
  const visited = new Set<string>([top.digest]);
  const visit = async (manifest: StoredManifest, depth: number): Promise<void> => {
    const doc = parseManifest(manifest.bytes);
    if (isIndexManifest(manifest.mediaType, doc)) {
      if (depth > MAX_INDEX_DEPTH)
        throw new Error(`${manifest.digest}: indexes nested more than ${MAX_INDEX_DEPTH} levels deep`);
      for (const d of doc.manifests ?? []) {
        if (visited.has(d.digest) || !wantedChild(d, platforms)) continue;
        visited.add(d.digest);
        const m = await child(d);
        if (m === undefined) {
          walked.absent.push(d);
          continue;
        }
        opts.onManifest?.();
        walked.children.push(m);
        await visit(m, depth + 1);
      }
      return;
    }
    const blobs = imageBlobs(doc);
    if (blobs.length === 0)
      throw new Error(`${manifest.digest} lists neither child manifests nor a config: not an image manifest`);
    walked.images.push(manifest);
    for (const d of blobs) if (!walked.blobs.has(d.digest)) walked.blobs.set(d.digest, d);
  };
  await visit(top, 0);
  return walked;
}

/**
 * Fetches an image through the read-through manifest cache and walks it (walkManifests). Throws when the walk
 * reaches no image manifest (an empty index, or no platform selected): there would be nothing to fetch.
 */
export async function walkImage(
  manifests: ManifestCache,
  upstream: UpstreamClient,
  repository: string,
  reference: ManifestReference,
  platforms: readonly string[],
  onManifest: () => void = () => undefined,
): Promise<WalkedImage> {
  const top = (await manifests.get(upstream, repository, reference)).manifest;
  onManifest();
  const fetchChild: ChildSource = async (d) =>
    (await manifests.get(upstream, repository, { kind: "digest", digest: d.digest })).manifest;
  const walked = await walkManifests(top, fetchChild, { platforms, onManifest });
  if (walked.images.length === 0) {
    throw new Error(
      platforms.length > 0
        ? `no manifest of the index matches the platforms ${platforms.join(", ")}`
        : `the index ${top.digest} reaches no image manifest`,
    );
  }
  return walked;
}

/** A child of an index worth walking: a wanted platform, or a nested index that names none (chosen inside it). */
function wantedChild(d: Descriptor, platforms: readonly string[]): boolean {
  return (d.platform === undefined && isIndexType(d.mediaType ?? "")) || platformMatches(d, platforms);
}
