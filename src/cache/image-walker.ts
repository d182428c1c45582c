/**
 * Walks an image through the read-through manifest cache: the manifest a reference names, then, for an index,
 * the child manifests of the selected platforms (all by default), and the config and layer descriptors of every
 * image reached. Shared by the prefetcher and the bundle exporter, so both select platforms the same way and
 * fetch through the same code as client pulls.
 */
import { isIndexType } from "../oci/media-types.ts";
import type { ManifestReference } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { ManifestCache } from "./manifest-cache.ts";
import type { StoredManifest } from "./manifest-store.ts";

export interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

export interface ManifestDocument {
  mediaType?: string;
  manifests?: Descriptor[];
  config?: Descriptor;
  layers?: Descriptor[];
}

export interface WalkedImage {
  top: StoredManifest;
  /** The selected child manifests of an index, in index order; empty for a single image. */
  children: StoredManifest[];
  /** Config and layer descriptors of every selected image, by digest (first seen wins), in walk order. */
  blobs: Map<string, Descriptor>;
}

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
  const children: StoredManifest[] = [];
  const images: StoredManifest[] = [];
  if (isIndexLike(top)) {
    for (const child of (parseManifest(top.bytes).manifests ?? []).filter((d) => wantedPlatform(d, platforms))) {
      const m = (await manifests.get(upstream, repository, { kind: "digest", digest: child.digest })).manifest;
      onManifest();
      children.push(m);
      images.push(m);
    }
  } else {
    images.push(top);
  }
  const blobs = new Map<string, Descriptor>();
  for (const image of images) {
    const doc = parseManifest(image.bytes);
    for (const d of [doc.config, ...(doc.layers ?? [])]) if (d?.digest && !blobs.has(d.digest)) blobs.set(d.digest, d);
  }
  return { top, children, blobs };
}

/** An index by media type, or by shape (a `manifests` list) when an upstream labels it loosely. */
export function isIndexLike(manifest: { mediaType: string; bytes: Buffer }): boolean {
  return isIndexType(manifest.mediaType) || Array.isArray(parseManifest(manifest.bytes).manifests);
}

/** The JSON of a manifest or index; `{}` for bytes that do not parse (they are still served byte-exact). */
export function parseManifest(bytes: Buffer): ManifestDocument {
  try {
    const doc = JSON.parse(bytes.toString("utf8")) as unknown;
    return doc !== null && typeof doc === "object" ? doc : {};
  } catch {
    return {};
  }
}

/** `os/architecture[/variant]` selection; an empty list selects every platform. */
export function wantedPlatform(d: Descriptor, platforms: readonly string[]): boolean {
  if (platforms.length === 0) return true;
  const p = d.platform;
  if (!p) return false;
  return platforms.some((want) => {
    const [os, arch, variant] = want.split("/");
    return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant);
  });
}
