/**
 * Grammar for repository names, tags and manifest references (a tag or a digest; digests themselves are in
 * digest.ts), as the distribution spec defines them.
 * Spec: https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
 * Every value that reaches the cache or an upstream URL has passed one of these checks, which is what keeps
 * client input out of file paths (`..`, `/`, `%2F` cannot match) and upstream hosts.
 */
import { assertDigest } from "./digest.ts";
import { RegistryError } from "./errors.ts";

/** `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*` */
const NAME_COMPONENT = "[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*";
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
/** `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` */
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** Distribution limits a repository name (with its registry host) to 255 characters. */
export const MAX_NAME_LENGTH = 255;

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

export function assertName(name: string): void {
  if (!isValidName(name)) {
    throw new RegistryError("NAME_INVALID", `invalid repository name: ${JSON.stringify(name.slice(0, 300))}`);
  }
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
