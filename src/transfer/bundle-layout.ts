/**
 * What a bundle is: an OCI image layout (https://github.com/opencontainers/image-spec/blob/main/image-layout.md)
 * in a tar, so any OCI tool reads it (`skopeo copy oci-archive:bundle.tar:<ref> …`).
 *
 *   oci-layout                {"imageLayoutVersion": "1.0.0"}
 *   index.json                one descriptor per exported reference (annotations below), then one per referrer
 *                             (OCI 1.1: a signature, an SBOM) of an exported manifest, named by digest
 *   blobs/sha256/<hex>        manifests, then configs and layers (a delta bundle leaves out the blobs the
 *                             destination listed as held; manifests are always included)
 *
 * The metadata comes first, so an importer reading a stream knows every digest and size before the content.
 */

export const LAYOUT_FILE = "oci-layout";
export const INDEX_FILE = "index.json";
export const LAYOUT_VERSION = "1.0.0";

/** The OCI layout's own name for a reference: the canonical reference, unique within a bundle. */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/** The full reference (upstream, repository, tag or digest) the importer recreates. */
export const REFERENCE_ANNOTATION = "io.registry-mirror.reference";
/** The name `ctr image import` gives the image (the same canonical reference). */
export const CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name";
/** On index.json itself: the selected platforms, when the export was limited to some. */
export const PLATFORMS_ANNOTATION = "io.registry-mirror.platforms";
/**
 * On index.json itself: "included" when the export carried the referrers of its images (`mirror export`
 * without `--no-referrers`), so an importer knows an image without any in the bundle had none.
 */
export const REFERRERS_ANNOTATION = "io.registry-mirror.referrers";
/**
 * On a referrer's descriptor: the digest of the manifest it refers to (its `subject`). Informational: the
 * importer recomputes who refers to what from the referrers' own `subject` fields, which the digest verifies.
 * A referrer's descriptor carries no `ref.name` (it is no image to run), only the full reference by digest.
 */
export const REFERRER_OF_ANNOTATION = "io.registry-mirror.referrer-of";

/** `blobs/sha256/<hex>`. */
export function blobPath(digest: string): string {
  const [algorithm, encoded] = digest.split(":");
  return `blobs/${algorithm}/${encoded}`;
}

/** The digest a `blobs/<algorithm>/<encoded>` entry claims to hold (a leading `./` is tolerated). */
export function blobDigestOf(name: string): string | undefined {
  const m = /^(?:\.\/)?blobs\/([a-z0-9]+(?:[+._-][a-z0-9]+)*)\/([A-Za-z0-9=_-]+)$/.exec(name);
  return m ? `${m[1]}:${m[2]}` : undefined;
}

/** An entry name without a leading `./` (tar writers that archive a directory's contents add it). */
export function entryName(name: string): string {
  return name.startsWith("./") ? name.slice(2) : name;
}
