/**
 * `GET /v2/<name>/referrers/<digest>[?artifactType=<media type>]` (OCI 1.1 "Listing Referrers"): an image index
 * of the manifests whose `subject` is `<digest>`, from the referrers cache. The cached list is unfiltered; an
 * `artifactType` filter is applied here, and only then is `OCI-Filters-Applied: artifactType` said.
 */
import type { ReferrersCache } from "../cache/referrers-cache.ts";
import { MediaType } from "../oci/media-types.ts";
import { ARTIFACT_TYPE_FILTER, filterReferrers, renderReferrersIndex } from "../oci/referrers.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export class ReferrersHandler {
  private readonly cache: ReferrersCache;

  constructor(cache: ReferrersCache) {
    this.cache = cache;
  }

  async handle(req: {
    target: ResolvedRepository<UpstreamClient>;
    digest: string;
    artifactType: string | undefined;
  }): Promise<RegistryResponse> {
    const { referrers, source } = await this.cache.get(req.target.upstream, req.target.repo, req.digest);
    const body = renderReferrersIndex(filterReferrers(referrers, req.artifactType));
    return {
      status: 200,
      headers: {
        "Content-Type": MediaType.ociIndex,
        "Content-Length": String(body.length),
        "X-Mirror-Cache": source,
        ...(req.artifactType !== undefined ? { "OCI-Filters-Applied": ARTIFACT_TYPE_FILTER } : {}),
        ...(source === "stale" ? { Warning: '110 - "Response is Stale"' } : {}),
      },
      body,
      cache: source,
    };
  }
}
