/**
 * Chooses the upstream for a request, from configuration only (../../../shared/PROTOCOL.md):
 *  1. containerd's `?ns=<host>` names an upstream by name or alias;
 *  2. otherwise a path prefix `/v2/<upstream name or alias>/<repo>/...` (podman/CRI-O `registries.conf` mirrors
 *     with a path, containerd `override_path`);
 *  3. otherwise the default upstream (dockerd `registry-mirrors`).
 * A value naming no configured upstream is an error; it never becomes a new outbound host.
 * Single-component names get the upstream's `libraryPrefix` (`alpine` → `library/alpine` on Docker Hub).
 */
import { RegistryError } from "../oci/errors.ts";
import { assertName } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export interface ResolvedRepository {
  upstream: UpstreamClient;
  /** The repository name as the upstream knows it. */
  repo: string;
}

export class UpstreamResolver {
  private readonly byName = new Map<string, UpstreamClient>();
  private readonly fallback: UpstreamClient | undefined;

  constructor(upstreams: readonly UpstreamClient[]) {
    for (const upstream of upstreams) {
      for (const alias of [upstream.name, ...upstream.config.aliases]) this.byName.set(alias.toLowerCase(), upstream);
    }
    this.fallback = upstreams.find((u) => u.config.default);
  }

  /** `name` is the (already grammar-checked) repository path of the request; `ns` the raw query value, if any. */
  resolve(name: string, ns: string | undefined): ResolvedRepository {
    const slash = name.indexOf("/");
    const first = slash > 0 ? name.slice(0, slash) : undefined;
    let upstream: UpstreamClient | undefined;
    let repo = name;
    if (ns !== undefined) {
      upstream = this.byName.get(ns.toLowerCase());
      if (!upstream) {
        throw new RegistryError("NAME_UNKNOWN", `ns=${JSON.stringify(ns.slice(0, 255))} names no upstream configured on this mirror`, { detail: { ns: ns.slice(0, 255) } });
      }
      // containerd with override_path sends both: strip a prefix naming the same upstream.
      if (first !== undefined && this.byName.get(first) === upstream) repo = name.slice(slash + 1);
    } else if (first !== undefined && this.byName.has(first)) {
      upstream = this.byName.get(first)!;
      repo = name.slice(slash + 1);
    } else {
      upstream = this.fallback;
      if (!upstream) {
        throw new RegistryError("NAME_UNKNOWN", "no default upstream is configured; use ?ns=<registry> or a /v2/<registry>/<repository> path");
      }
    }
    const prefix = upstream.config.libraryPrefix;
    if (prefix !== null && !repo.includes("/")) repo = `${prefix}/${repo}`;
    assertName(repo);
    return { upstream, repo };
  }
}
