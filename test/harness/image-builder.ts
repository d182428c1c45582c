// Builds real container images in memory (layers, config, manifest, index) and pushes them to a registry
// with the plain distribution API, so tests need no internet and no Docker Hub. Pushes answer auth
// challenges (Basic or the token flow) when given credentials, so registries with auth can be seeded too.
//
// Digests are always computed over the exact bytes that get pushed, and those bytes are never
// re-serialised afterwards. Manifests and configs are pretty-printed on purpose: a mirror that parses and
// re-serialises JSON (compactly) changes the bytes, and the digest checks in tests then catch it.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { gunzipSync, gzipSync } from "node:zlib";
import { RegistryAuthenticator, type Credentials } from "./registry.ts";
import { buildTar, type TarEntry } from "./tar-writer.ts";

export type ImageFormat = "docker" | "oci";
export type Architecture = "amd64" | "arm64";

export const MediaTypes = {
  dockerLayer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
  ociLayer: "application/vnd.oci.image.layer.v1.tar+gzip",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
} as const;

export interface Blob {
  /** sha256:<hex> of `bytes`. */
  digest: string;
  bytes: Buffer;
  mediaType: string;
  /** For layers: sha256 of the UNcompressed tar, which is what the image config's rootfs.diff_ids lists. */
  diffId?: string;
}

export interface BuiltImage {
  /** The manifest exactly as pushed and digested. */
  manifest: Buffer;
  mediaType: string;
  digest: string;
  config: Blob;
  layers: Blob[];
  architecture: Architecture;
  /** config + layers, in that order. */
  blobs(): Blob[];
}

export interface BuiltIndex {
  manifest: Buffer;
  mediaType: string;
  digest: string;
  children: BuiltImage[];
}

/** "sha256:<hex>" of some bytes. */
export function sha256(bytes: Buffer | Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** A blob of arbitrary bytes (for tests that need a blob that is not a layer). */
export function blobOf(bytes: Buffer, mediaType = "application/octet-stream"): Blob {
  return { digest: sha256(bytes), bytes, mediaType };
}

/** A gzip-compressed layer made from a tar archive; keeps the tar's digest as diffId. */
export function layerFromTar(tar: Buffer, format: ImageFormat, gzipLevel?: number): Blob {
  const bytes = gzipSync(tar, gzipLevel === undefined ? {} : { level: gzipLevel });
  return { digest: sha256(bytes), bytes, mediaType: layerMediaType(format), diffId: sha256(tar) };
}

/**
 * A layer holding one file of `size` random bytes. Random content does not compress, so the blob is a
 * little larger than `size`, and every call gives a different digest.
 */
export function randomLayer(size: number, opts: { format: ImageFormat } = { format: "oci" }): Blob {
  const content = randomBytes(size);
  const name = `random-${content.subarray(0, 4).toString("hex").padEnd(8, "0")}.bin`;
  // Level 1: random bytes gain nothing from harder compression, and it is several times faster.
  return layerFromTar(buildTar([{ type: "file", name, content }]), opts.format, 1);
}

/**
 * A layer that makes an image runnable with `docker run`: /bin/busybox (the static binary from Debian's
 * busybox-static) plus /bin/sh and /bin/echo as symlinks to it. About 1 MB compressed.
 */
export function busyboxLayer(format: ImageFormat = "oci", busyboxPath = "/bin/busybox"): Blob {
  const entries: TarEntry[] = [
    { type: "directory", name: "bin", mode: 0o755 },
    { type: "file", name: "bin/busybox", content: readFileSync(busyboxPath), mode: 0o755 },
    { type: "symlink", name: "bin/sh", target: "busybox" },
    { type: "symlink", name: "bin/echo", target: "busybox" },
  ];
  return layerFromTar(buildTar(entries), format);
}

export interface BuildImageOptions {
  layers: Blob[];
  format: ImageFormat;
  architecture?: Architecture;
  cmd?: string[];
  /** Extra config labels: a cheap way to make otherwise identical images differ. */
  labels?: Record<string, string>;
}

/**
 * An image config and schema-2 manifest over `layers`. Layer descriptors keep each layer's own media type
 * (mixing Docker layer types into an OCI manifest is legal and common). Deterministic: the same inputs give
 * the same digests.
 */
export function buildImage(opts: BuildImageOptions): BuiltImage {
  const architecture = opts.architecture ?? "amd64";
  const format = opts.format;
  const configJson = {
    created: "2024-01-01T00:00:00Z",
    architecture,
    os: "linux",
    config: {
      Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
      ...(opts.cmd === undefined ? {} : { Cmd: opts.cmd }),
      ...(opts.labels === undefined ? {} : { Labels: opts.labels }),
    },
    rootfs: { type: "layers", diff_ids: opts.layers.map(diffIdOf) },
  };
  const config = blobOf(
    Buffer.from(JSON.stringify(configJson, null, 2)),
    format === "docker" ? MediaTypes.dockerConfig : MediaTypes.ociConfig,
  );
  const mediaType = format === "docker" ? MediaTypes.dockerManifest : MediaTypes.ociManifest;
  const manifestJson = {
    schemaVersion: 2,
    mediaType,
    config: descriptor(config),
    layers: opts.layers.map(descriptor),
  };
  const manifest = Buffer.from(JSON.stringify(manifestJson, null, 3));
  const layers = [...opts.layers];
  return {
    manifest,
    mediaType,
    digest: sha256(manifest),
    config,
    layers,
    architecture,
    blobs: () => [config, ...layers],
  };
}

/** A multi-platform index over `children`: OCI image index by default, or a Docker manifest list. */
export function buildIndex(children: BuiltImage[], opts: { format?: ImageFormat } = {}): BuiltIndex {
  const mediaType = opts.format === "docker" ? MediaTypes.dockerManifestList : MediaTypes.ociIndex;
  const indexJson = {
    schemaVersion: 2,
    mediaType,
    manifests: children.map((child) => ({
      mediaType: child.mediaType,
      digest: child.digest,
      size: child.manifest.length,
      platform: { architecture: child.architecture, os: "linux" },
    })),
  };
  const manifest = Buffer.from(JSON.stringify(indexJson, null, 3));
  return { manifest, mediaType, digest: sha256(manifest), children: [...children] };
}

/** An OCI index whose one child is another index: the image spec allows nesting, and containerd follows it. */
export interface BuiltNestedIndex {
  manifest: Buffer;
  mediaType: string;
  digest: string;
  inner: BuiltIndex;
}

export function buildNestedIndex(inner: BuiltIndex): BuiltNestedIndex {
  const mediaType = MediaTypes.ociIndex;
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType,
      manifests: [{ mediaType: inner.mediaType, digest: inner.digest, size: inner.manifest.length }],
    }),
  );
  return { manifest, mediaType, digest: sha256(manifest), inner };
}

/** Pushes the inner index (its children, then itself by digest), then the outer one under `ref`. */
export async function pushNestedIndex(
  registryUrl: string,
  repo: string,
  ref: string,
  nested: BuiltNestedIndex,
  auth?: Credentials,
): Promise<void> {
  await pushIndex(registryUrl, repo, nested.inner.digest, nested.inner, auth);
  await pushManifest(
    new RegistryAuthenticator(auth),
    registryUrl,
    repo,
    ref,
    nested.manifest,
    nested.mediaType,
    nested.digest,
  );
}

/**
 * Pushes an image's blobs (skipping any the registry already has) and then its manifest under `ref`
 * (a tag, or the manifest digest). Fails with the registry's answer on any unexpected status.
 *
 * `auth` is for a registry that requires it: the push answers the registry's 401 challenge as docker
 * would, with Basic credentials (htpasswd) or a push token from the challenge's realm (token auth; the
 * user must be an admin of the token server to be granted push).
 */
export async function pushImage(
  registryUrl: string,
  repo: string,
  ref: string,
  image: BuiltImage,
  auth?: Credentials,
): Promise<void> {
  await pushImageWith(new RegistryAuthenticator(auth), registryUrl, repo, ref, image);
}

/** Pushes every child by digest, then the index itself under `ref`. */
export async function pushIndex(
  registryUrl: string,
  repo: string,
  ref: string,
  index: BuiltIndex,
  auth?: Credentials,
): Promise<void> {
  // One authenticator for the whole index, so it fetches one token, not one per child.
  const client = new RegistryAuthenticator(auth);
  for (const child of index.children) await pushImageWith(client, registryUrl, repo, child.digest, child);
  await pushManifest(client, registryUrl, repo, ref, index.manifest, index.mediaType, index.digest);
}

/** The OCI 1.1 empty descriptor's content: what an artifact without a config of its own names as config. */
export const EMPTY_CONFIG: Blob = blobOf(Buffer.from("{}"), "application/vnd.oci.empty.v1+json");

/** An OCI 1.1 artifact (a signature, an SBOM): an image manifest with `artifactType` and a `subject`. */
export interface BuiltArtifact {
  manifest: Buffer;
  mediaType: string;
  digest: string;
  artifactType: string;
  annotations: Record<string, string>;
  /** The empty config, then the payload layer. */
  blobs(): Blob[];
}

/**
 * An artifact manifest as oras and cosign push one: `artifactType`, the empty config `{}`, one payload layer,
 * and `subject` naming the manifest it refers to (an image, or another artifact).
 */
export function buildArtifact(opts: {
  subject: { mediaType: string; digest: string; manifest: Buffer };
  artifactType: string;
  payload: Buffer;
  annotations?: Record<string, string>;
}): BuiltArtifact {
  const payload = blobOf(opts.payload, "application/octet-stream");
  const annotations = opts.annotations ?? {};
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      artifactType: opts.artifactType,
      config: descriptor(EMPTY_CONFIG),
      layers: [descriptor(payload)],
      subject: { mediaType: opts.subject.mediaType, digest: opts.subject.digest, size: opts.subject.manifest.length },
      ...(Object.keys(annotations).length > 0 ? { annotations } : {}),
    }),
  );
  return {
    manifest,
    mediaType: MediaTypes.ociManifest,
    digest: sha256(manifest),
    artifactType: opts.artifactType,
    annotations,
    blobs: () => [EMPTY_CONFIG, payload],
  };
}

/** The descriptor a referrers list gives an artifact. */
export function referrerDescriptor(artifact: BuiltArtifact): Record<string, unknown> {
  return {
    mediaType: artifact.mediaType,
    digest: artifact.digest,
    size: artifact.manifest.length,
    artifactType: artifact.artifactType,
    ...(Object.keys(artifact.annotations).length > 0 ? { annotations: artifact.annotations } : {}),
  };
}

/** Pushes an artifact's blobs, then its manifest by digest (referrers are not tagged). */
export async function pushArtifact(registryUrl: string, repo: string, artifact: BuiltArtifact): Promise<void> {
  await pushImageWith(new RegistryAuthenticator(), registryUrl, repo, artifact.digest, artifact);
}

/**
 * Pushes the OCI 1.1 fallback index of `subject`'s referrers under the tag `sha256-<hex>`, as oras and cosign do
 * against a registry without the referrers API (the spec's "Unavailable Referrers API"). Returns its bytes.
 */
export async function pushReferrersFallback(
  registryUrl: string,
  repo: string,
  subject: string,
  artifacts: BuiltArtifact[],
): Promise<Buffer> {
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociIndex,
      manifests: artifacts.map(referrerDescriptor),
    }),
  );
  await pushManifest(
    new RegistryAuthenticator(),
    registryUrl,
    repo,
    subject.replace(":", "-"),
    index,
    MediaTypes.ociIndex,
    sha256(index),
  );
  return index;
}

/** Monolithic upload: POST to open an upload, PUT the whole body to its Location with ?digest=. */
export async function pushBlob(registryUrl: string, repo: string, blob: Blob, auth?: Credentials): Promise<void> {
  await pushBlobWith(new RegistryAuthenticator(auth), registryUrl, repo, blob);
}

async function pushImageWith(
  client: RegistryAuthenticator,
  registryUrl: string,
  repo: string,
  ref: string,
  image: Pick<BuiltImage, "manifest" | "mediaType" | "digest" | "blobs">,
): Promise<void> {
  for (const blob of image.blobs()) await pushBlobWith(client, registryUrl, repo, blob);
  await pushManifest(client, registryUrl, repo, ref, image.manifest, image.mediaType, image.digest);
}

async function pushBlobWith(
  client: RegistryAuthenticator,
  registryUrl: string,
  repo: string,
  blob: Blob,
): Promise<void> {
  const base = registryUrl.replace(/\/+$/, "");
  const head = await client.fetch(`${base}/v2/${repo}/blobs/${blob.digest}`, { method: "HEAD" });
  if (head.status === 200) return;
  if (head.status === 401)
    throw new Error(`HEAD blob ${blob.digest} in ${repo} answered 401: ${describeChallenge(head)}`);

  const post = await client.fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: "POST" });
  const postBody = await post.text();
  const location = post.headers.get("location");
  if (post.status !== 202 || location === null) {
    throw new Error(
      `POST ${base}/v2/${repo}/blobs/uploads/ answered ${post.status} (Location ${String(location)}): ${describeChallenge(post)}${postBody}`,
    );
  }
  // Location may be absolute or relative to the registry; it usually carries a query (_state=...) already.
  // Appending keeps that query byte-for-byte instead of re-encoding it through URLSearchParams.
  const uploadUrl = new URL(location, `${base}/`).href;
  const putUrl = `${uploadUrl}${uploadUrl.includes("?") ? "&" : "?"}digest=${encodeURIComponent(blob.digest)}`;
  const put = await client.fetch(putUrl, {
    method: "PUT",
    headers: { "content-type": "application/octet-stream", "content-length": String(blob.bytes.length) },
    body: blob.bytes,
  });
  const putBody = await put.text();
  if (put.status !== 201)
    throw new Error(`PUT blob ${blob.digest} to ${repo} answered ${put.status}: ${describeChallenge(put)}${putBody}`);
}

async function pushManifest(
  client: RegistryAuthenticator,
  registryUrl: string,
  repo: string,
  ref: string,
  manifest: Buffer,
  mediaType: string,
  digest: string,
): Promise<void> {
  const base = registryUrl.replace(/\/+$/, "");
  const res = await client.fetch(`${base}/v2/${repo}/manifests/${ref}`, {
    method: "PUT",
    headers: { "content-type": mediaType },
    body: manifest,
  });
  const body = await res.text();
  if (res.status !== 201)
    throw new Error(`PUT manifest ${repo}:${ref} answered ${res.status}: ${describeChallenge(res)}${body}`);
  const stored = res.headers.get("docker-content-digest");
  if (stored !== null && stored !== digest) {
    throw new Error(`registry stored manifest ${repo}:${ref} as ${stored}, expected ${digest}`);
  }
}

/** For error messages: the challenge of a 401 ("wrong credentials, or a user without push?"), else nothing. */
function describeChallenge(res: Response): string {
  const challenge = res.headers.get("www-authenticate");
  return res.status === 401 && challenge !== null
    ? `(challenge ${challenge}; are the credentials right, and allowed to push?) `
    : "";
}

function layerMediaType(format: ImageFormat): string {
  return format === "docker" ? MediaTypes.dockerLayer : MediaTypes.ociLayer;
}

function descriptor(blob: Blob): { mediaType: string; digest: string; size: number } {
  return { mediaType: blob.mediaType, digest: blob.digest, size: blob.bytes.length };
}

/** The layer's diff_id: kept from building it, or recomputed from the bytes for layers made elsewhere. */
function diffIdOf(layer: Blob): string {
  if (layer.diffId !== undefined) return layer.diffId;
  const gzipped = layer.bytes[0] === 0x1f && layer.bytes[1] === 0x8b;
  return sha256(gzipped ? gunzipSync(layer.bytes) : layer.bytes);
}
