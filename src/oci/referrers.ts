/**
 * The referrers of a manifest as OCI 1.1 lists them: an image index whose `manifests` are descriptors of the
 * manifests whose `subject` is that manifest (the answer of `GET /v2/<name>/referrers/<digest>`, and the index
 * pushed under the fallback tag `sha256-<hex>` by tools working against registries without that API).
 * Spec: https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-referrers and
 * https://github.com/opencontainers/image-spec/blob/main/image-index.md
 *
 * What the mirror serves is always rendered here from validated descriptors, never an upstream's bytes as they
 * came: so every mirror renders the same list as the same bytes, and a chain of mirrors answers alike.
 */
import { RegistryError } from "./errors.ts";
import { isSha256Digest } from "./digest.ts";
import { MediaType } from "./media-types.ts";

/** A referrer's descriptor, with the fields the spec lists for a referrers answer. */
export interface ReferrerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** The `OCI-Filters-Applied` value when the list was filtered by `artifactType`. */
export const ARTIFACT_TYPE_FILTER = "artifactType";

/**
 * RFC 6838 `type "/" subtype`, each a restricted name (a letter or digit, then up to 126 of
 * `A-Za-z0-9!#$&^_.+-`); no parameters. What an `artifactType` query value must be.
 */
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

export function isMediaType(value: string): boolean {
  return MEDIA_TYPE_RE.test(value);
}

/** Validates a client's `artifactType` filter: 400 when it is not a media type. */
export function assertArtifactType(value: string): void {
  if (!isMediaType(value))
    throw new RegistryError(
      "UNSUPPORTED",
      `artifactType must be a media type (type/subtype), not ${JSON.stringify(value.slice(0, 300))}`,
      { status: 400 },
    );
}

/** The OCI 1.1 fallback tag under which referrers of `digest` (sha256) are listed: `sha256-<hex>`. */
export function referrersFallbackTag(digest: string): string {
  if (!isSha256Digest(digest)) throw new Error(`not a sha256 digest: ${digest}`);
  return digest.replace(":", "-");
}

/**
 * The descriptors of a referrers index, or undefined when `bytes` are not one: a JSON object whose
 * `mediaType` (when present) is the OCI image index type, whose `schemaVersion` (when present) is 2, and whose
 * `manifests` is an array of descriptors each with a media type, a sha256 digest and a non-negative integer
 * size (`artifactType` a string and `annotations` an object of strings, when present). One bad entry makes the
 * whole list unacceptable: a partial list would hide a signature without anyone knowing.
 */
export function parseReferrersIndex(bytes: Buffer): ReferrerDescriptor[] | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString("utf8"));
  } catch {
    return undefined;
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return undefined;
  const d = doc as Record<string, unknown>;
  if (d.mediaType !== undefined && d.mediaType !== MediaType.ociIndex) return undefined;
  if (d.schemaVersion !== undefined && d.schemaVersion !== 2) return undefined;
  if (!Array.isArray(d.manifests)) return undefined;
  const out: ReferrerDescriptor[] = [];
  for (const entry of d.manifests) {
    const descriptor = referrerDescriptorOf(entry);
    if (descriptor === undefined) return undefined;
    out.push(descriptor);
  }
  return out;
}

function referrerDescriptorOf(value: unknown): ReferrerDescriptor | undefined {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
  const v = value as Record<string, unknown>;
  if (typeof v.mediaType !== "string" || !isMediaType(v.mediaType)) return undefined;
  if (typeof v.digest !== "string" || !isSha256Digest(v.digest)) return undefined;
  if (typeof v.size !== "number" || !Number.isSafeInteger(v.size) || v.size < 0) return undefined;
  const d: ReferrerDescriptor = { mediaType: v.mediaType, digest: v.digest, size: v.size };
  if (v.artifactType !== undefined) {
    if (typeof v.artifactType !== "string") return undefined;
    d.artifactType = v.artifactType;
  }
  if (v.annotations !== undefined) {
    const annotations = stringMap(v.annotations);
    if (annotations === undefined) return undefined;
    d.annotations = annotations;
  }
  return d;
}

function stringMap(value: unknown): Record<string, string> | undefined {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
  const entries = Object.entries(value);
  if (!entries.every((e): e is [string, string] => typeof e[1] === "string")) return undefined;
  return Object.fromEntries(entries);
}

/**
 * The descriptor a referrers list gives a manifest whose `subject` is `subject`, or undefined when the manifest
 * names no such subject (or is no JSON object). Its artifact type is the manifest's `artifactType`, else its
 * config's media type, as the spec says a registry computes it.
 */
export function referrerOf(
  manifest: { digest: string; mediaType: string; bytes: Buffer },
  subject: string,
): ReferrerDescriptor | undefined {
  let doc: unknown;
  try {
    doc = JSON.parse(manifest.bytes.toString("utf8"));
  } catch {
    return undefined;
  }
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) return undefined;
  const m = doc as Record<string, unknown>;
  const s = m.subject as Record<string, unknown> | null | undefined;
  if (s === null || typeof s !== "object" || s.digest !== subject) return undefined;
  const d: ReferrerDescriptor = { mediaType: manifest.mediaType, digest: manifest.digest, size: manifest.bytes.length };
  const config = m.config as Record<string, unknown> | null | undefined;
  const artifactType =
    typeof m.artifactType === "string"
      ? m.artifactType
      : config !== null && typeof config === "object" && typeof config.mediaType === "string"
        ? config.mediaType
        : undefined;
  if (artifactType !== undefined) d.artifactType = artifactType;
  const annotations = m.annotations === undefined ? undefined : stringMap(m.annotations);
  if (annotations !== undefined && Object.keys(annotations).length > 0) d.annotations = annotations;
  return d;
}

/** The descriptors whose artifact type is `artifactType` (all of them when undefined). */
export function filterReferrers(
  descriptors: readonly ReferrerDescriptor[],
  artifactType: string | undefined,
): ReferrerDescriptor[] {
  return artifactType === undefined ? [...descriptors] : descriptors.filter((d) => d.artifactType === artifactType);
}

/**
 * The image index listing `descriptors`, rendered with a fixed field order (so equal lists are equal bytes),
 * each descriptor with only the fields a referrers answer carries.
 */
export function renderReferrersIndex(descriptors: readonly ReferrerDescriptor[]): Buffer {
  const manifests = descriptors.map((d) => ({
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
    ...(d.artifactType !== undefined ? { artifactType: d.artifactType } : {}),
    ...(d.annotations !== undefined ? { annotations: d.annotations } : {}),
  }));
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests }));
}
