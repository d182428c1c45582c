/**
 * `GET /v2/_catalog`: the repositories this mirror holds tags of, under every configured upstream, named as a
 * client pulls them back through this mirror (UpstreamResolver.pathName: `library/alpine` on the default
 * upstream, `ghcr.io/team/tool` on another), and only those the asking identity may pull (AccessPolicy.check, the
 * rule every pull passes). Paged like tags/list (oci/pagination.ts). The upstreams are never asked: this is what
 * the mirror holds, not what the upstreams hold.
 */
import type { Logger } from "pino";
import type { UpstreamResolver } from "../config/upstream-resolver.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import { RegistryError } from "../oci/errors.ts";
import { nextPageLink, paginate, type PageRequest } from "../oci/pagination.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { AccessPolicy, Identity } from "./access-policy.ts";
import type { RegistryResponse } from "./response.ts";

export class CatalogHandler {
  private readonly upstreams: readonly UpstreamClient[];
  private readonly resolver: UpstreamResolver<UpstreamClient>;
  private readonly metadata: MetadataStore;
  private readonly policy: AccessPolicy;
  private readonly log: Logger;

  constructor(opts: {
    upstreams: readonly UpstreamClient[];
    resolver: UpstreamResolver<UpstreamClient>;
    metadata: MetadataStore;
    policy: AccessPolicy;
    log: Logger;
  }) {
    this.upstreams = opts.upstreams;
    this.resolver = opts.resolver;
    this.metadata = opts.metadata;
    this.policy = opts.policy;
    this.log = opts.log;
  }

  async handle(req: { who: Identity; page: PageRequest }): Promise<RegistryResponse> {
    const names: string[] = [];
    for (const upstream of this.upstreams) {
      for (const repo of await this.metadata.listRepositories(upstream.name)) {
        if (!this.mayPull(req.who, upstream, repo)) continue;
        const name = this.resolver.pathName(upstream, repo);
        if (name === undefined) {
          // Only a name too long for the grammar once prefixed can have none; it is pulled by ?ns= instead.
          this.log.debug({ upstream: upstream.name, repo }, "_catalog: repository has no path name; left out");
          continue;
        }
        names.push(name);
      }
    }
    const page = paginate(names, req.page);
    const body = Buffer.from(JSON.stringify({ repositories: page.entries }));
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
      "Content-Length": String(body.length),
    };
    if (page.next !== undefined) headers.Link = nextPageLink("/v2/_catalog", page.next);
    return { status: 200, headers, body };
  }

  private mayPull(who: Identity, upstream: UpstreamClient, repo: string): boolean {
    try {
      this.policy.check(who, upstream.name, repo);
      return true;
    } catch (err) {
      if (err instanceof RegistryError) return false;
      throw err;
    }
  }
}
