/**
 * Which configured upstream a name refers to, and what the repository is called there: the one place that
 * decides it, for the three kinds of names the mirror is given, and the way back for listings.
 *
 * - A request (`resolve`): the repository path of `/v2/<name>/...` and containerd's `?ns=` value.
 *   1. `?ns=<host>` names an upstream by name or alias; a path prefix naming the same upstream is dropped
 *      (containerd with `override_path` sends both);
 *   2. otherwise a first path component naming an upstream (`/v2/ghcr.io/team/tool/...`: podman and CRI-O
 *      `registries.conf` mirrors with a path, containerd `override_path`);
 *   3. otherwise the default upstream (dockerd `registry-mirrors`).
 * - An image reference (`reference`): `mirror export` arguments, the admin API's prefetch, the names in a bundle:
 *   `<upstream>/<repository>[:tag|@sha256:…]`, the upstream by name or alias; without one, the default upstream
 *   (`alpine:3.20`, as with docker), unless the caller requires it to be named (`requireUpstream`).
 * - A `storage.pinned` entry (`pin`): `<upstream>/<repository>[:tag]`; the upstream must be named.
 * - A listing (`pathName`, for `_catalog`): the inverse of `resolve`, checked by running it.
 *
 * For all of them: names and aliases match in any case; a single-component repository gets its upstream's
 * `libraryPrefix` (`alpine` → `library/alpine` on Docker Hub); the repository that results must be a valid name.
 * A name that names no configured upstream is an error (`NAME_UNKNOWN`), never a new outbound host: every
 * upstream this module answers with is one it was constructed with.
 */
import { RegistryError } from "../oci/errors.ts";
import { formatReference, splitImageReference } from "../oci/image-reference.ts";
import {
  assertName,
  isValidName,
  isValidTag,
  parseManifestReference,
  type ManifestReference,
} from "../oci/reference.ts";
import type { Config, UpstreamConfig } from "./schema.ts";
import { errorMessage } from "../caught-errors.ts";

/** What choosing an upstream needs to know of one (an UpstreamClient has it). */
export interface RoutedUpstream {
  readonly name: string;
  readonly config: Pick<UpstreamConfig, "aliases" | "default" | "libraryPrefix">;
}

export interface ResolvedRepository<U extends RoutedUpstream = RoutedUpstream> {
  upstream: U;
  /** The repository name as the upstream knows it. */
  repo: string;
}

export interface ImageReference<U extends RoutedUpstream = RoutedUpstream> {
  upstream: U;
  repository: string;
  reference: ManifestReference;
  /** Canonical text: `docker.io/library/alpine:3.20`. */
  canonical: string;
}

/** A `storage.pinned` entry: content eviction must keep. */
export interface Pin {
  /** The upstream's configured name (an alias in the entry is read as the name it stands for). */
  upstream: string;
  repository: string;
  /** Absent: every tag of the repository. */
  tag: string | undefined;
}

export class UpstreamResolver<U extends RoutedUpstream = RoutedUpstream> {
  private readonly upstreams: readonly U[];
  /** Lower-case name or alias → upstream. */
  private readonly byName = new Map<string, U>();
  private readonly fallback: U | undefined;

  constructor(upstreams: readonly U[]) {
    this.upstreams = upstreams;
    for (const upstream of upstreams) {
      for (const alias of [upstream.name, ...upstream.config.aliases]) this.byName.set(alias.toLowerCase(), upstream);
    }
    this.fallback = upstreams.find((u) => u.config.default);
  }

  /** Over the configured upstreams themselves (config loading, pins), before any client exists. */
  static ofConfig(upstreams: Readonly<Record<string, UpstreamConfig>>): UpstreamResolver {
    return new UpstreamResolver(Object.values(upstreams).map((config) => ({ name: config.name, config })));
  }

  /** A request: `name` is its (already grammar-checked) repository path; `ns` the raw query value, if any. */
  resolve(name: string, ns: string | undefined): ResolvedRepository<U> {
    const prefixed = this.prefixed(name);
    if (ns !== undefined) {
      const upstream = this.byName.get(ns.toLowerCase());
      if (!upstream) {
        throw new RegistryError(
          "NAME_UNKNOWN",
          `ns=${JSON.stringify(ns.slice(0, 255))} names no upstream configured on this mirror`,
          { detail: { ns: ns.slice(0, 255) } },
        );
      }
      return { upstream, repo: this.repository(upstream, prefixed?.upstream === upstream ? prefixed.rest : name) };
    }
    if (prefixed) return { upstream: prefixed.upstream, repo: this.repository(prefixed.upstream, prefixed.rest) };
    if (!this.fallback) {
      throw new RegistryError(
        "NAME_UNKNOWN",
        "no default upstream is configured; use ?ns=<registry> or a /v2/<registry>/<repository> path",
      );
    }
    return { upstream: this.fallback, repo: this.repository(this.fallback, name) };
  }

  /**
   * The name a client pulls `repo` of `upstream` by through this mirror (`/v2/<name>/...` without `ns`), for
   * listings such as `_catalog`: the repository itself on the default upstream (`library/alpine`), otherwise
   * prefixed by the upstream's name or an alias (`ghcr.io/team/tool`). Only a name that `resolve` maps back to
   * this same upstream and repository is given; undefined when there is none (a default-upstream repository whose
   * first component names another upstream gets the prefixed form; a name too long for the grammar gets none).
   */
  pathName(upstream: U, repo: string): string | undefined {
    const candidates = [
      ...(upstream === this.fallback ? [repo] : []),
      ...[upstream.name, ...upstream.config.aliases].map((prefix) => `${prefix.toLowerCase()}/${repo}`),
    ];
    return candidates.find((name) => {
      if (!isValidName(name)) return false;
      try {
        const back = this.resolve(name, undefined);
        return back.upstream === upstream && back.repo === repo;
      } catch {
        return false;
      }
    });
  }

  /**
   * An image reference; a missing tag is `latest`. With `requireUpstream`, the first component must name an
   * upstream (names found in foreign bundles, where a bare `latest` must not become `library/latest`).
   */
  reference(text: string, opts: { requireUpstream?: boolean } = {}): ImageReference<U> {
    const trimmed = text.trim();
    const split = splitImageReference(trimmed);
    const prefixed = this.prefixed(split.name);
    let upstream = prefixed?.upstream;
    if (!upstream) {
      const names = this.upstreams.map((u) => u.name).join(", ");
      if (opts.requireUpstream)
        throw new RegistryError(
          "NAME_UNKNOWN",
          `${JSON.stringify(trimmed.slice(0, 300))} does not start with a configured upstream (${names})`,
        );
      upstream = this.fallback;
      if (!upstream)
        throw new RegistryError(
          "NAME_UNKNOWN",
          `${JSON.stringify(trimmed.slice(0, 300))} does not start with a configured upstream (${names}), and none is the default`,
        );
    }
    const repository = this.repository(upstream, prefixed ? prefixed.rest : split.name);
    const reference = parseManifestReference(split.reference ?? "latest");
    return { upstream, repository, reference, canonical: formatReference(upstream.name, repository, reference) };
  }

  /** A `storage.pinned` entry. Throws an Error saying what is wrong with it (config loading lists them all). */
  pin(text: string): Pin {
    const trimmed = text.trim();
    const split = splitImageReference(trimmed);
    const prefixed = this.prefixed(split.name);
    if (!prefixed)
      throw new Error(
        `pin ${JSON.stringify(text)} must start with a configured upstream name (${this.upstreams.map((u) => u.name).join(", ")})`,
      );
    if (trimmed.includes("@"))
      throw new Error(
        `pin ${JSON.stringify(text)} names a digest: a pin names a tag, or a repository for every tag of it`,
      );
    try {
      const repository = this.repository(prefixed.upstream, prefixed.rest);
      if (split.reference !== undefined && !isValidTag(split.reference))
        throw new RegistryError("TAG_INVALID", `invalid tag: ${JSON.stringify(split.reference.slice(0, 300))}`);
      return { upstream: prefixed.upstream.name, repository, tag: split.reference };
    } catch (err) {
      throw new Error(`pin ${JSON.stringify(text)}: ${errorMessage(err)}`);
    }
  }

  /** The upstream a first path component names, and the rest of the name; undefined when it names none. */
  private prefixed(name: string): { upstream: U; rest: string } | undefined {
    const slash = name.indexOf("/");
    if (slash <= 0) return undefined;
    const upstream = this.byName.get(name.slice(0, slash).toLowerCase());
    return upstream && { upstream, rest: name.slice(slash + 1) };
  }

  /** The repository as `upstream` names it: its library prefix on a single component, then checked. */
  private repository(upstream: U, name: string): string {
    const prefix = upstream.config.libraryPrefix;
    const repository = prefix !== null && !name.includes("/") ? `${prefix}/${name}` : name;
    assertName(repository);
    return repository;
  }
}

/** The `storage.pinned` entries of a loaded configuration (loading has refused any that `pin` refuses). */
export function configuredPins(config: Pick<Config, "upstreams" | "storage">): Pin[] {
  const resolver = UpstreamResolver.ofConfig(config.upstreams);
  return config.storage.pinned.map((entry) => resolver.pin(entry));
}
