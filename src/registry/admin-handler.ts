/**
 * Operator actions on the cache: purge a tag or a repository (the next pull asks the upstream), refresh a tag
 * now. Input is validated with the same grammar as registry requests, and the upstream must be one the
 * configuration names.
 */
import type { ManifestCache } from "../cache/manifest-cache.ts";
import { RegistryError } from "../oci/errors.ts";
import { assertName, isValidTag } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export interface TagTarget {
  upstream: string;
  repository: string;
  tag?: string | undefined;
}

export class AdminHandler {
  private readonly upstreams: ReadonlyMap<string, UpstreamClient>;
  private readonly manifests: ManifestCache;

  constructor(opts: { upstreams: readonly UpstreamClient[]; manifests: ManifestCache }) {
    this.upstreams = new Map(opts.upstreams.map((u) => [u.name, u]));
    this.manifests = opts.manifests;
  }

  async purge(body: unknown): Promise<{ purged: TagTarget }> {
    const target = this.parse(body, false);
    await this.manifests.purge(this.upstreams.get(target.upstream)!, target.repository, target.tag);
    return { purged: target };
  }

  async refresh(body: unknown): Promise<{ refreshed: TagTarget; digest: string; mediaType: string; source: string }> {
    const target = this.parse(body, true);
    const { manifest, source } = await this.manifests.refresh(this.upstreams.get(target.upstream)!, target.repository, target.tag!);
    return { refreshed: target, digest: manifest.digest, mediaType: manifest.mediaType, source };
  }

  private parse(body: unknown, tagRequired: boolean): TagTarget {
    const b = (body ?? {}) as Record<string, unknown>;
    const upstream = typeof b.upstream === "string" ? b.upstream : undefined;
    const repository = typeof b.repository === "string" ? b.repository : undefined;
    const tag = typeof b.tag === "string" ? b.tag : undefined;
    if (upstream === undefined || !this.upstreams.has(upstream)) {
      throw new RegistryError("NAME_UNKNOWN", `upstream must name a configured upstream (${[...this.upstreams.keys()].join(", ")})`);
    }
    if (repository === undefined) throw new RegistryError("NAME_INVALID", "repository is required, as the upstream names it (e.g. library/alpine)");
    assertName(repository);
    if (tag !== undefined && !isValidTag(tag)) throw new RegistryError("TAG_INVALID", `invalid tag: ${JSON.stringify(tag.slice(0, 200))}`);
    if (tagRequired && tag === undefined) throw new RegistryError("TAG_INVALID", "tag is required");
    return { upstream, repository, tag };
  }
}
