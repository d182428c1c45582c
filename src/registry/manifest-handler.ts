/** `GET`/`HEAD /v2/<name>/manifests/<reference>`. */
import type { ManifestCache } from "../cache/manifest-cache.ts";
import { RegistryError } from "../oci/errors.ts";
import type { AcceptSet } from "../oci/media-types.ts";
import type { ManifestReference } from "../oci/reference.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { UpstreamFallbacks } from "./upstream-fallback.ts";

export class ManifestHandler {
  private readonly cache: ManifestCache;
  private readonly fallbacks: UpstreamFallbacks | undefined;

  /** `fallbacks`: ask the upstream's fallbacks when it cannot answer (upstream-fallback.ts). */
  constructor(cache: ManifestCache, fallbacks?: UpstreamFallbacks) {
    this.cache = cache;
    this.fallbacks = fallbacks;
  }

  async handle(req: {
    method: "GET" | "HEAD";
    target: ResolvedRepository<UpstreamClient>;
    reference: ManifestReference;
    accept: AcceptSet;
  }): Promise<RegistryResponse> {
    const get = (t: ResolvedRepository<UpstreamClient>) => this.cache.get(t.upstream, t.repo, req.reference);
    const answer = this.fallbacks
      ? await this.fallbacks.run(req.target, get)
      : { value: await get(req.target), source: undefined };
    const { manifest, source } = answer.value;
    const from = answer.source;
    // The mirror asks upstreams for every manifest type; it must still never send a type the client excluded.
    if (!req.accept.accepts(manifest.mediaType)) {
      throw new RegistryError(
        "MANIFEST_UNKNOWN",
        `the manifest is ${manifest.mediaType}, which the request's Accept header does not allow`,
        {
          detail: { mediaType: manifest.mediaType, accept: req.accept.toString() },
        },
      );
    }
    return {
      status: 200,
      headers: {
        "Content-Type": manifest.mediaType,
        "Content-Length": String(manifest.bytes.length),
        "Docker-Content-Digest": manifest.digest,
        ETag: `"${manifest.digest}"`,
        "X-Mirror-Cache": source,
        // RFC 7234's stale marker, for clients and proxies that know it; X-Mirror-Cache says the same to humans.
        ...(source === "stale" ? { Warning: '110 - "Response is Stale"' } : {}),
        // Answered by a fallback upstream (upstream-fallback.ts): which one.
        ...(from !== undefined ? { "X-Mirror-Source": from } : {}),
      },
      body: req.method === "GET" ? manifest.bytes : undefined,
      cache: source,
    };
  }
}
