/**
 * What a manifest says, read in one place: its fields (parseManifest), whether it is an index or an image, which
 * platform a descriptor is for, and the digests it names, for two different questions: which of them the
 * manifest's repository is known to hold (what a repository may be linked to, access-proof.ts), and which of
 * them keeping the manifest useful means keeping too (pins and other reachability walks). Unparseable manifests
 * are still served byte-exact; they just name nothing.
 *
 * Formats: OCI image manifest and index (https://github.com/opencontainers/image-spec/blob/main/manifest.md,
 * image-index.md), Docker schema 2 manifest and manifest list (the same fields), Docker schema 1 (layers as
 * `fsLayers[].blobSum`, no config). A manifest is whatever its upstream or bundle wrote: every field is checked
 * for its type here, and what has the wrong type is read as absent.
 */
import { isSha256Digest } from "./digest.ts";
import { isIndexType } from "./media-types.ts";

/** `os/architecture[/variant]` of an index entry (the OCI image index `platform` object). */
export interface Platform {
  os?: string;
  architecture?: string;
  variant?: string;
}

/** A content descriptor as a manifest lists it: `digest` is a string (not necessarily a valid digest). */
export interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: Platform;
  annotations?: Record<string, string>;
}

/** The fields of a manifest or index that this mirror reads; a list holds only the entries that are descriptors. */
export interface ManifestDocument {
  /** The document's own `mediaType` (optional in every format). */
  mediaType?: string;
  /** An index's child manifests. Absent when the document has no `manifests` list: it is no index by shape. */
  manifests?: Descriptor[];
  config?: Descriptor;
  layers: Descriptor[];
  /** Docker schema 1 layers, by digest only (`fsLayers[].blobSum`). */
  fsLayers: Descriptor[];
  /** OCI 1.1 artifact blobs. */
  blobs: Descriptor[];
  /** OCI 1.1 `subject`: the manifest this one refers to (a signature's image). */
  subject?: Descriptor;
}

/**
 * The JSON of a manifest or index. Bytes that do not parse, or that parse to something other than an object
 * (`null`, a number, a string), read as a document that names nothing.
 */
export function parseManifest(bytes: Buffer): ManifestDocument {
  const m = jsonObject(bytes);
  const parsed: ManifestDocument = {
    layers: descriptorList(m.layers),
    fsLayers: asList(m.fsLayers).flatMap((l) => {
      const blobSum = (l as { blobSum?: unknown } | null | undefined)?.blobSum;
      return typeof blobSum === "string" ? [{ digest: blobSum }] : [];
    }),
    blobs: descriptorList(m.blobs),
  };
  if (typeof m.mediaType === "string") parsed.mediaType = m.mediaType;
  if (Array.isArray(m.manifests)) parsed.manifests = descriptorList(m.manifests);
  const config = descriptorOf(m.config);
  if (config !== undefined) parsed.config = config;
  const subject = descriptorOf(m.subject);
  if (subject !== undefined) parsed.subject = subject;
  return parsed;
}

/**
 * The entries of an index's `manifests` list in their order, each a descriptor or undefined where the entry is
 * none; undefined when the document has no such list. For a reader that must answer for every entry (an image
 * layout's index.json, where each entry is an image to import or to refuse).
 */
export function indexEntries(bytes: Buffer): Array<Descriptor | undefined> | undefined {
  const list = jsonObject(bytes).manifests;
  return Array.isArray(list) ? list.map(descriptorOf) : undefined;
}

/** An index by media type, or by shape (a `manifests` list) when an upstream labels it loosely. */
export function isIndexManifest(mediaType: string, doc: ManifestDocument): boolean {
  return isIndexType(mediaType) || doc.manifests !== undefined;
}

/** What an image manifest names as blobs: its config and layers (for schema 1, its `fsLayers`), in that order. */
export function imageBlobs(doc: ManifestDocument): Descriptor[] {
  return [...(doc.config !== undefined ? [doc.config] : []), ...doc.layers, ...doc.fsLayers];
}

/**
 * `os/architecture[/variant]` selection of an index entry by its `platform`; an empty list selects every entry,
 * a non-empty one never selects an entry that names no platform. A selection without a variant matches every
 * variant (`linux/arm64` selects `linux/arm64/v8`).
 */
export function platformMatches(d: Descriptor, platforms: readonly string[]): boolean {
  if (platforms.length === 0) return true;
  const p = d.platform;
  if (!p) return false;
  return platforms.some((want) => {
    const [os, arch, variant] = want.split("/");
    return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant);
  });
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
  const m = parseManifest(bytes);
  return sha256DigestsOf([m.config, ...m.layers, ...(m.manifests ?? [])]);
}

/**
 * Everything a manifest points at: config, layers, child manifests, artifact blobs and subject. For
 * reachability only (what a pin keeps, what a walk visits): being named here grants no access (confirmedDigests).
 */
export function reachableDigests(bytes: Buffer): string[] {
  const m = parseManifest(bytes);
  return sha256DigestsOf([m.config, m.subject, ...m.layers, ...(m.manifests ?? []), ...m.blobs]);
}

/**
 * The digests among `reachableDigests` that name manifests: an index's child manifests and a subject. A walk
 * reads these as manifests; a config, a layer or an artifact blob it only keeps.
 */
export function reachableManifests(bytes: Buffer): string[] {
  const m = parseManifest(bytes);
  return sha256DigestsOf([m.subject, ...(m.manifests ?? [])]);
}

/** The JSON object in `bytes`; `{}` for bytes that do not parse or hold no object (`null`, a number, a string). */
function jsonObject(bytes: Buffer): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString("utf8"));
  } catch {
    return {};
  }
  return doc !== null && typeof doc === "object" ? (doc as Record<string, unknown>) : {};
}

function asList(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function descriptorList(value: unknown): Descriptor[] {
  return asList(value).flatMap((entry) => descriptorOf(entry) ?? []);
}

/**
 * A descriptor: an object with a string `digest`; its other fields as far as they have their type. A `platform`
 * that is present but not an object names no platform at all (it matches no selection).
 */
function descriptorOf(value: unknown): Descriptor | undefined {
  if (value === null || typeof value !== "object") return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.digest !== "string") return undefined;
  const d: Descriptor = { digest: v.digest };
  if (typeof v.mediaType === "string") d.mediaType = v.mediaType;
  if (typeof v.size === "number") d.size = v.size;
  if (v.platform !== undefined) {
    const p = (v.platform !== null && typeof v.platform === "object" ? v.platform : {}) as Record<string, unknown>;
    d.platform = {};
    for (const key of ["os", "architecture", "variant"] as const)
      if (typeof p[key] === "string") d.platform[key] = p[key];
  }
  if (v.annotations !== null && typeof v.annotations === "object") {
    d.annotations = Object.fromEntries(
      Object.entries(v.annotations).filter((e): e is [string, string] => typeof e[1] === "string"),
    );
  }
  return d;
}

/** The sha256 digests of descriptors, skipping anything that is not one. */
function sha256DigestsOf(descriptors: ReadonlyArray<Descriptor | undefined>): string[] {
  const found: string[] = [];
  for (const d of descriptors) if (d !== undefined && isSha256Digest(d.digest)) found.push(d.digest);
  return found;
}
