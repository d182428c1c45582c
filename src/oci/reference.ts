/**
 * Grammar for repository names, tags and digests, as the distribution spec defines them.
 * Spec: https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
 * Every value that reaches the cache or an upstream URL has passed one of these checks, which is what keeps
 * client input out of file paths (`..`, `/`, `%2F` cannot match) and upstream hosts.
 */
import { RegistryError } from "./errors.ts";

/** `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*` */
const NAME_COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*";
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
/** `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` */
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
/** `algorithm ":" encoded`; algorithm `[a-z0-9]+([+._-][a-z0-9]+)*`, encoded `[a-zA-Z0-9=_-]+`. */
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[A-Za-z0-9=_-]+$/;
const SHA256_RE = /^sha256:[a-f0-9]{64}$/;

/** Distribution limits a repository name (with its registry host) to 255 characters. */
export const MAX_NAME_LENGTH = 255;

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** A digest in the general grammar (any algorithm). */
export function isDigestLike(value: string): boolean {
  return value.length <= 255 && DIGEST_RE.test(value);
}

/** The only algorithm this mirror can verify content with. */
export function isSha256Digest(value: string): boolean {
  return SHA256_RE.test(value);
}

export function assertName(name: string): void {
  if (!isValidName(name)) {
    throw new RegistryError("NAME_INVALID", `invalid repository name: ${JSON.stringify(name.slice(0, 300))}`);
  }
}

/**
 * Validates a digest the mirror will verify and store. Anything that is not a well-formed sha256 digest is
 * `DIGEST_INVALID`; a well-formed digest of another algorithm is refused too, because content we cannot verify
 * must never enter the cache.
 */
export function assertDigest(value: string): void {
  if (isSha256Digest(value)) return;
  if (isDigestLike(value) && !value.startsWith("sha256:")) {
    throw new RegistryError("DIGEST_INVALID", `unsupported digest algorithm: ${value.split(":")[0]}; only sha256 is supported`);
  }
  throw new RegistryError("DIGEST_INVALID", `invalid digest: ${JSON.stringify(value.slice(0, 300))}`);
}

export type ManifestReference = { kind: "tag"; tag: string } | { kind: "digest"; digest: string };

/** A manifest reference is a tag or a digest; which one is decided by the presence of `:`. */
export function parseManifestReference(value: string): ManifestReference {
  if (value.includes(":")) {
    assertDigest(value);
    return { kind: "digest", digest: value };
  }
  if (!isValidTag(value)) {
    throw new RegistryError("TAG_INVALID", `invalid tag: ${JSON.stringify(value.slice(0, 300))}`);
  }
  return { kind: "tag", tag: value };
}

/** The hex part of a validated sha256 digest: the only thing derived from client input that names a file. */
export function digestHex(digest: string): string {
  if (!isSha256Digest(digest)) throw new Error(`not a sha256 digest: ${digest}`);
  return digest.slice("sha256:".length);
}
