/**
 * Content digests: the grammar of `algorithm:encoded`, the sha256 digests this mirror can verify, and sha256 of
 * whole byte strings. Spec: https://github.com/opencontainers/image-spec/blob/main/descriptor.md#digests
 *
 * Only sha256 is accepted for content: what cannot be verified must never enter the cache, so a well-formed
 * digest of another algorithm is refused like a malformed one. A digest names a file only through `digestHex`,
 * which accepts nothing but 64 lowercase hex characters.
 */
import { createHash } from "node:crypto";
import { RegistryError } from "./errors.ts";

/** `algorithm ":" encoded`; algorithm `[a-z0-9]+([+._-][a-z0-9]+)*`, encoded `[a-zA-Z0-9=_-]+`. */
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;
const SHA256_RE = /^sha256:[a-f0-9]{64}$/;

/** The sha256 of zero bytes: the one digest a 0-byte blob can have. */
export const EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** A digest in the general grammar (any algorithm). */
export function isDigestLike(value: string): boolean {
  return value.length <= 255 && DIGEST_RE.test(value);
}

/** The only algorithm this mirror can verify content with. */
export function isSha256Digest(value: string): boolean {
  return SHA256_RE.test(value);
}

/**
 * Validates a digest the mirror will verify and store. Anything that is not a well-formed sha256 digest is
 * `DIGEST_INVALID`; a well-formed digest of another algorithm is refused too, because content we cannot verify
 * must never enter the cache.
 */
export function assertDigest(value: string): void {
  if (isSha256Digest(value)) return;
  if (isDigestLike(value) && !value.startsWith("sha256:")) {
    throw new RegistryError(
      "DIGEST_INVALID",
      `unsupported digest algorithm: ${value.split(":")[0]}; only sha256 is supported`,
    );
  }
  throw new RegistryError("DIGEST_INVALID", `invalid digest: ${JSON.stringify(value.slice(0, 300))}`);
}

/** The hex part of a validated sha256 digest: the only thing derived from client input that names a file. */
export function digestHex(digest: string): string {
  if (!isSha256Digest(digest)) throw new Error(`not a sha256 digest: ${digest}`);
  return digest.slice("sha256:".length);
}

/** `sha256:<hex>` of `bytes` (whole content in memory: manifests, index files). */
export function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Whether `bytes` are the content `digest` names. */
export function verifies(bytes: Uint8Array, digest: string): boolean {
  return digestOf(bytes) === digest;
}
