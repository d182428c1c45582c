/** `GET`/`HEAD /v2/<name>/blobs/<digest>`, with single byte ranges on cached, in-flight and cold blobs. */
import type { Readable } from "node:stream";
import type { BlobCache } from "../cache/blob-cache.ts";
import { RegistryError } from "../oci/errors.ts";
import type { CacheResult } from "../observability/metrics.ts";
import { resolveRange, type ByteRangeSpec } from "../oci/range.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export class BlobHandler {
  private readonly cache: BlobCache;

  constructor(cache: BlobCache) {
    this.cache = cache;
  }

  async handle(req: { method: "GET" | "HEAD"; target: ResolvedRepository<UpstreamClient>; digest: string; range: ByteRangeSpec | undefined }): Promise<RegistryResponse> {
    const { upstream, repo } = req.target;
    if (req.method === "HEAD") {
      const { size, source } = await this.cache.size(upstream, repo, req.digest);
      const cache: CacheResult = source === "cached" ? "hit" : "miss";
      const headers = baseHeaders(req.digest, cache);
      if (size !== undefined) headers["Content-Length"] = String(size);
      return { status: 200, headers, cache };
    }

    const source = await this.cache.open(upstream, repo, req.digest);
    if (source.kind === "direct") {
      // Not cached (no room): the whole blob, verified in flight. A range cannot be cut from it; RFC 9110
      // allows answering a Range request with the full content.
      const headers = baseHeaders(req.digest, "miss");
      headers["X-Mirror-Cache"] = "uncached";
      if (source.size !== undefined) headers["Content-Length"] = String(source.size);
      return { status: 200, headers, body: source.body, cache: "miss" };
    }
    const cacheResult: CacheResult = source.kind === "cached" ? "hit" : source.kind === "fill" && source.joined ? "coalesced" : "miss";
    const size = source.kind === "cached" ? source.size : source.kind === "fill" ? source.fill.size : undefined;
    const headers = baseHeaders(req.digest, cacheResult);
    let start = 0;
    let end: number | undefined;
    let status = 200;
    // Without a known size (an upstream that sent no Content-Length) a range cannot be resolved yet: send it all.
    if (req.range !== undefined && size !== undefined) {
      const resolved = resolveRange(req.range, size);
      if (resolved === "unsatisfiable") {
        if (source.kind === "cached") await source.content.close();
        throw new RegistryError("RANGE_INVALID", `range not satisfiable for a blob of ${size} bytes`, { headers: { "Content-Range": `bytes */${size}` } });
      }
      ({ start, end } = resolved);
      status = 206;
      headers["Content-Range"] = `bytes ${start}-${end}/${size}`;
    } else if (size !== undefined) {
      end = size - 1;
    }
    if (size !== undefined) headers["Content-Length"] = String(end === undefined ? 0 : end - start + 1);

    let body: Readable | Buffer;
    if (source.kind === "cached" && size === 0) {
      await source.content.close();
      body = Buffer.alloc(0);
    } else if (source.kind === "cached") {
      body = source.content.read({ start, end: end ?? source.size - 1 });
    } else if (source.kind === "fill" && size === 0) {
      // Headers alone make a 0-byte response complete, so it is sent only once the content verified; an
      // upstream that announced 0 bytes for other content gets its error answered instead.
      await source.fill.done;
      body = Buffer.alloc(0);
    } else if (source.kind === "fill") {
      body = source.fill.createReader(start, end);
    } else {
      throw new Error(`unreachable: GET opened a ${source.kind} source`);
    }
    return { status, headers, body, cache: cacheResult };
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
