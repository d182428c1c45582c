/**
 * Image references as the transfer commands take them and bundles record them:
 * `<upstream>/<repository>[:tag|@sha256:…]`, the upstream being a configured upstream's name or alias. A
 * reference that does not start with one belongs to the default upstream (`alpine:3.20`, `library/alpine`),
 * as with docker. Single-component repositories get the upstream's library prefix (`docker.io/alpine` is
 * `docker.io/library/alpine` on Docker Hub). The canonical form, written into bundles and inventories, always
 * names the upstream and the full repository.
 */
import { RegistryError } from "./errors.ts";
import { assertName, parseManifestReference, type ManifestReference } from "./reference.ts";

/** What reference parsing needs of an upstream (an UpstreamClient has it). */
export interface NamedUpstream {
  name: string;
  config: { aliases: readonly string[]; default: boolean; libraryPrefix: string | null };
}

export interface ImageReference<U extends NamedUpstream = NamedUpstream> {
  upstream: U;
  repository: string;
  reference: ManifestReference;
  /** Canonical text: `docker.io/library/alpine:3.20`. */
  canonical: string;
}

/**
 * Parses a reference against the configured upstreams. With `requireUpstream`, the first component must name
 * one (used for names found in foreign bundles, where a bare `latest` must not become `library/latest`).
 */
export function parseImageReference<U extends NamedUpstream>(text: string, upstreams: readonly U[], opts: { requireUpstream?: boolean } = {}): ImageReference<U> {
  const trimmed = text.trim();
  const slash = trimmed.indexOf("/");
  const first = slash > 0 ? trimmed.slice(0, slash).toLowerCase() : undefined;
  let upstream = first === undefined ? undefined : upstreams.find((u) => u.name.toLowerCase() === first || u.config.aliases.some((a) => a.toLowerCase() === first));
  let rest = upstream ? trimmed.slice(slash + 1) : trimmed;
  if (!upstream) {
    const names = upstreams.map((u) => u.name).join(", ");
    if (opts.requireUpstream) throw new RegistryError("NAME_UNKNOWN", `${JSON.stringify(trimmed.slice(0, 300))} does not start with a configured upstream (${names})`);
    upstream = upstreams.find((u) => u.config.default);
    if (!upstream) throw new RegistryError("NAME_UNKNOWN", `${JSON.stringify(trimmed.slice(0, 300))} does not start with a configured upstream (${names}), and none is the default`);
  }
  let ref = "latest";
  const at = rest.indexOf("@");
  if (at >= 0) {
    ref = rest.slice(at + 1);
    rest = rest.slice(0, at);
    // `name:tag@digest` (docker accepts it): the digest decides, the tag is informational.
    const colon = rest.lastIndexOf(":");
    if (colon > rest.lastIndexOf("/")) rest = rest.slice(0, colon);
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon > rest.lastIndexOf("/")) {
      ref = rest.slice(colon + 1);
      rest = rest.slice(0, colon);
    }
  }
  const prefix = upstream.config.libraryPrefix;
  const repository = prefix !== null && !rest.includes("/") ? `${prefix}/${rest}` : rest;
  assertName(repository);
  const reference = parseManifestReference(ref);
  return { upstream, repository, reference, canonical: formatReference(upstream.name, repository, reference) };
}

export function formatReference(upstream: string, repository: string, reference: ManifestReference): string {
  return `${upstream}/${repository}${reference.kind === "tag" ? `:${reference.tag}` : `@${reference.digest}`}`;
}
