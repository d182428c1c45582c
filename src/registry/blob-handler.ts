/** `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single byte ranges on cached, in-flight and cold blobs. */
import type { BlobCache } from "../cache/blob-cache.ts";
import type { CacheResult } from "../observability/metrics.ts";
import type { ByteRangeSpec } from "../oci/range.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { UpstreamFallbacks } from "./upstream-fallback.ts";

export class BlobHandler {
  private readonly cache: BlobCache;
  private readonly fallbacks: UpstreamFallbacks | undefined;

  /** `fallbacks`: ask the upstream's fallbacks when it cannot answer (upstream-fallback.ts). */
  constructor(cache: BlobCache, fallbacks?: UpstreamFallbacks) {
    this.cache = cache;
    this.fallbacks = fallbacks;
  }

  /** `work` for the request's upstream, or through its fallbacks when it cannot answer; `from`: the fallback that did. */
  private async through<T>(
    target: ResolvedRepository<UpstreamClient>,
    work: (t: ResolvedRepository<UpstreamClient>) => Promise<T>,
  ): Promise<{ value: T; from: string | undefined }> {
    if (!this.fallbacks) return { value: await work(target), from: undefined };
    const answer = await this.fallbacks.run(target, work);
    return { value: answer.value, from: answer.source };
  }

  async handle(req: {
    method: "GET" | "HEAD";
    target: ResolvedRepository<UpstreamClient>;
    digest: string;
    range: ByteRangeSpec | undefined;
    /** The Host header the client sent, and whether it sent an Authorization header: see `credentialsWouldFollow`. */
    host?: string | undefined;
    authorization?: boolean;
  }): Promise<RegistryResponse> {
    if (req.method === "HEAD") {
      const { value, from } = await this.through(req.target, (t) => this.cache.head(t.upstream, t.repo, req.digest));
      const { size, result } = value;
      const headers = baseHeaders(req.digest, result, from);
      if (size !== undefined) headers["Content-Length"] = String(size);
      return { status: 200, headers, cache: result };
    }

    // A client that authenticated here is sent to the object store only where its credentials stay behind.
    const redirectTo = (location: string) => req.authorization !== true || !credentialsWouldFollow(req.host, location);
    const { value, from } = await this.through(req.target, (t) =>
      this.cache.get(t.upstream, t.repo, req.digest, req.range, this.cache.ruleFor(t.upstream, t.repo), redirectTo),
    );
    const { size, range, body, result, redirect } = value;
    if (redirect !== undefined) {
      // A hit the client fetches from the object store itself (storage.s3.redirect): the URL is short-lived.
      return {
        status: 307,
        headers: {
          Location: redirect,
          "Docker-Content-Digest": req.digest,
          "Cache-Control": "no-store",
          "X-Mirror-Cache": result,
        },
        cache: "hit",
      };
    }
    const headers = baseHeaders(req.digest, result, from);
    if (range !== undefined) {
      headers["Content-Range"] = `bytes ${range.start}-${range.end}/${size}`;
      headers["Content-Length"] = String(range.end - range.start + 1);
    } else if (size !== undefined) {
      headers["Content-Length"] = String(size);
    }
    // Passed through uncached: counted as a miss, and named so in X-Mirror-Cache.
    const cache: CacheResult = result === "uncached" ? "miss" : result;
    return { status: range !== undefined ? 206 : 200, headers, body, cache };
  }
}

function baseHeaders(digest: string, cache: string, from: string | undefined): Record<string, string> {
  return {
    ...(from !== undefined ? { "X-Mirror-Source": from } : {}),
    "Content-Type": "application/octet-stream",
    "Docker-Content-Digest": digest,
    ETag: `"${digest}"`,
    "Accept-Ranges": "bytes",
    "Cache-Control": "max-age=31536000",
    "X-Mirror-Cache": cache,
  };
}

/**
 * Whether a client sent from `requestHost` (its Host header) to `location` would send along the Authorization
 * header it sent here. Go's HTTP client, which dockerd, containerd, podman and skopeo use, keeps it when the new
 * host is the same or a subdomain of the old one (recent releases compare host names, ignoring ports; so does
 * this, which covers the older ones too). An object store refuses a presigned URL that arrives with an
 * Authorization header (Ceph RGW answers 400 InvalidArgument, as S3 does), and the client's credentials for the
 * mirror do not belong there either. An unknown or unreadable host counts as "would follow".
 */
export function credentialsWouldFollow(requestHost: string | undefined, location: string): boolean {
  let from: string;
  let to: string;
  try {
    if (requestHost === undefined || requestHost === "") return true;
    from = new URL(`http://${requestHost}`).hostname.toLowerCase();
    to = new URL(location).hostname.toLowerCase();
  } catch {
    return true;
  }
  if (to === from) return true;
  // IP addresses have no subdomains.
  if (to.startsWith("[") || /^[\d.]+$/.test(to)) return false;
  return to.endsWith(`.${from}`);
}
