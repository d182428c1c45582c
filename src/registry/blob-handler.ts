/** `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single byte ranges on cached, in-flight and cold blobs. */
import type { BlobCache } from "../cache/blob-cache.ts";
import type { CacheResult } from "../observability/metrics.ts";
import type { ByteRangeSpec } from "../oci/range.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export class BlobHandler {
  private readonly cache: BlobCache;

  constructor(cache: BlobCache) {
    this.cache = cache;
  }

  async handle(req: {
    method: "GET" | "HEAD";
    target: ResolvedRepository<UpstreamClient>;
    digest: string;
    range: ByteRangeSpec | undefined;
  }): Promise<RegistryResponse> {
    const { upstream, repo } = req.target;
    if (req.method === "HEAD") {
      const { size, result } = await this.cache.head(upstream, repo, req.digest);
      const headers = baseHeaders(req.digest, result);
      if (size !== undefined) headers["Content-Length"] = String(size);
      return { status: 200, headers, cache: result };
    }

    const { size, range, body, result, redirect } = await this.cache.get(upstream, repo, req.digest, req.range);
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
    const headers = baseHeaders(req.digest, result);
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

function baseHeaders(digest: string, cache: string): Record<string, string> {
  return {
    "Content-Type": "application/octet-stream",
    "Docker-Content-Digest": digest,
    ETag: `"${digest}"`,
    "Accept-Ranges": "bytes",
    "Cache-Control": "max-age=31536000",
    "X-Mirror-Cache": cache,
  };
}
