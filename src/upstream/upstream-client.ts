/**
 * The client for one configured upstream registry: an undici Pool to its origin (the only host it ever
 * contacts), with connect, headers and body-idle timeouts from config. It speaks the pull API and returns
 * plain values or throws RegistryError (via upstream-errors.ts). Every undici body is consumed or destroyed on
 * every path.
 */
import type { Readable } from "node:stream";
import { Pool } from "undici";
import type { UpstreamConfig } from "../config/schema.ts";
import { RegistryError, type ErrorCode } from "../oci/errors.ts";
import { UPSTREAM_MANIFEST_ACCEPT } from "../oci/media-types.ts";
import { discardBody, headerValue, upstreamFailure, upstreamStatusError } from "./upstream-errors.ts";

export interface ManifestHead {
  digest: string | undefined;
  mediaType: string | undefined;
  size: number | undefined;
}

export interface FetchedManifest {
  bytes: Buffer;
  mediaType: string;
  /** The upstream's `Docker-Content-Digest`, when it sent one (to be checked against the bytes). */
  digest: string | undefined;
}

interface UpstreamResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

export class UpstreamClient {
  readonly config: UpstreamConfig;
  readonly name: string;
  private readonly pool: Pool;

  constructor(config: UpstreamConfig) {
    this.config = config;
    this.name = config.name;
    this.pool = new Pool(new URL(config.url).origin, {
      connections: config.maxConnections,
      connect: { timeout: config.timeouts.connect },
      headersTimeout: config.timeouts.headers,
      bodyTimeout: config.timeouts.bodyIdle,
      keepAliveTimeout: 30_000,
    });
  }

  async headManifest(repo: string, reference: string): Promise<ManifestHead> {
    const res = await this.send("HEAD", `/v2/${repo}/manifests/${reference}`, { accept: UPSTREAM_MANIFEST_ACCEPT });
    await this.expectOk(res, "MANIFEST_UNKNOWN");
    discardBody(res.body);
    const length = headerValue(res.headers, "content-length");
    return {
      digest: headerValue(res.headers, "docker-content-digest"),
      mediaType: mediaTypeOf(res.headers),
      size: length !== undefined ? Number(length) : undefined,
    };
  }

  async getManifest(repo: string, reference: string, maxBytes: number): Promise<FetchedManifest> {
    const res = await this.send("GET", `/v2/${repo}/manifests/${reference}`, { accept: UPSTREAM_MANIFEST_ACCEPT });
    await this.expectOk(res, "MANIFEST_UNKNOWN");
    const bytes = await this.readCapped(res.body, maxBytes, "manifest");
    const mediaType = mediaTypeOf(res.headers);
    if (mediaType === undefined) throw new RegistryError("UPSTREAM_ERROR", `upstream ${this.name} sent a manifest without Content-Type`);
    return { bytes, mediaType, digest: headerValue(res.headers, "docker-content-digest") };
  }

  /** Confirms a blob exists upstream under `repo`; resolves to its size when the upstream says. */
  async headBlob(repo: string, digest: string): Promise<{ size: number | undefined }> {
    const res = await this.send("HEAD", `/v2/${repo}/blobs/${digest}`, {});
    await this.expectOk(res, "BLOB_UNKNOWN");
    discardBody(res.body);
    const length = headerValue(res.headers, "content-length");
    return { size: length !== undefined ? Number(length) : undefined };
  }

  /** Opens a blob download; the caller owns (and must consume or destroy) the body. */
  async getBlob(repo: string, digest: string, signal: AbortSignal): Promise<{ size: number | undefined; body: Readable }> {
    const res = await this.send("GET", `/v2/${repo}/blobs/${digest}`, {}, signal);
    await this.expectOk(res, "BLOB_UNKNOWN");
    const length = headerValue(res.headers, "content-length");
    return { size: length !== undefined ? Number(length) : undefined, body: res.body };
  }

  /** `GET /v2/<repo>/tags/list`, with the client's `n`/`last` query passed through. */
  async getTags(repo: string, query: string, maxBytes: number): Promise<{ body: Buffer; link: string | undefined }> {
    const res = await this.send("GET", `/v2/${repo}/tags/list${query}`, { accept: "application/json" });
    await this.expectOk(res, "NAME_UNKNOWN");
    const body = await this.readCapped(res.body, maxBytes, "tag list");
    return { body, link: headerValue(res.headers, "link") };
  }

  async close(): Promise<void> {
    await this.pool.close();
  }

  private async send(method: "GET" | "HEAD", path: string, headers: Record<string, string>, signal?: AbortSignal): Promise<UpstreamResponse> {
    try {
      const res = await this.pool.request({ method, path, headers: { "user-agent": "registry-mirror", ...headers }, signal });
      return { statusCode: res.statusCode, headers: res.headers, body: res.body };
    } catch (err) {
      throw upstreamFailure(this.name, err);
    }
  }

  private async expectOk(res: UpstreamResponse, notFound: ErrorCode): Promise<void> {
    if (res.statusCode === 200) return;
    throw await upstreamStatusError(this.name, res.statusCode, res.headers, res.body, notFound);
  }

  private async readCapped(body: Readable, maxBytes: number, what: string): Promise<Buffer> {
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body) {
        size += (chunk as Buffer).length;
        if (size > maxBytes) {
          throw new RegistryError("UPSTREAM_ERROR", `upstream ${this.name} sent a ${what} larger than the limit of ${maxBytes} bytes`);
        }
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      discardBody(body);
      throw upstreamFailure(this.name, err);
    }
    return Buffer.concat(chunks, size);
  }
}

function mediaTypeOf(headers: Record<string, string | string[] | undefined>): string | undefined {
  return headerValue(headers, "content-type")?.split(";")[0]?.trim() || undefined;
}
