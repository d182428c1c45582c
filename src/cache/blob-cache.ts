/**
 * Read-through blobs. A request for a digest is answered, in order, from: the committed file in the store; the
 * fill already downloading it; or a new fill. Blobs are stored once for every repository and upstream, but are
 * only served under a repository known to reference them (a manifest fetched for it, or an upstream HEAD that
 * confirms it): knowing a digest is not enough to read it through another name.
 */
import type { FileHandle } from "node:fs/promises";
import { pipeline, type Readable } from "node:stream";
import { RegistryError } from "../oci/errors.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { BlobStore } from "./blob-store.ts";
import type { Fill, FillCoordinator, UpstreamBlob } from "./fill-coordinator.ts";
import type { MetadataStore } from "./metadata-store.ts";
import { VerifyStream } from "./verify-stream.ts";

/** Where a blob response's bytes come from. */
export type BlobSource =
  /** Committed content; the caller owns (and must close) the handle. */
  | { kind: "cached"; size: number; handle: FileHandle }
  /** A fill in progress (started by this request: `joined` false; or by another: true). */
  | { kind: "fill"; fill: Fill; joined: boolean }
  /** HEAD of a blob not cached: the upstream confirmed it exists. */
  | { kind: "upstream"; size: number | undefined }
  /** No room to cache: the upstream body, verified as it streams, not stored. */
  | { kind: "direct"; size: number | undefined; body: Readable };

export class BlobCache {
  private readonly store: BlobStore;
  private readonly fills: FillCoordinator;
  private readonly metadata: MetadataStore;

  private readonly metrics: Metrics | undefined;

  constructor(opts: { store: BlobStore; fills: FillCoordinator; metadata: MetadataStore; metrics?: Metrics }) {
    this.metrics = opts.metrics;
    this.store = opts.store;
    this.fills = opts.fills;
    this.metadata = opts.metadata;
  }

  /** For GET: an open source of the blob's bytes. Throws BLOB_UNKNOWN (or the upstream's error) otherwise. */
  async open(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobSource> {
    return offlineAsUnknown(upstream, digest, () => this.openOnline(upstream, repo, digest));
  }

  /** For HEAD: the blob's size, from the store, a running fill, or an upstream HEAD (no download is started). */
  async size(upstream: UpstreamClient, repo: string, digest: string): Promise<{ size: number | undefined; source: "cached" | "fill" | "upstream" }> {
    return offlineAsUnknown(upstream, digest, () => this.sizeOnline(upstream, repo, digest));
  }

  private async openOnline(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobSource> {
    const linked = await this.metadata.hasLink(upstream.name, repo, digest);
    const cached = await this.store.open(digest);
    if (cached) {
      if (!linked) {
        try {
          await this.confirm(upstream, repo, digest);
        } catch (err) {
          await cached.handle.close();
          throw err;
        }
      }
      return { kind: "cached", ...cached };
    }
    const running = this.fills.current(digest);
    if (running === undefined) return this.download(upstream, repo, digest);
    const sameRepo = running.origin.upstream === upstream.name && running.origin.repo === repo;
    if (!linked && !sameRepo) await this.confirm(upstream, repo, digest);
    return this.read(running, upstream, repo, digest, true);
  }

  /** Starts the one download of a blob nobody has. */
  private async download(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobSource> {
    const fill = this.fills.start(digest, { upstream: upstream.name, repo }, (signal) => upstream.getBlob(repo, digest, signal));
    await fill.ready;
    await this.metadata.addLinks(upstream.name, repo, [digest]);
    return this.read(fill, upstream, repo, digest, false);
  }

  /**
   * Reads a fill once it is ready: following the download; the committed file, if it committed meanwhile; or,
   * when there was no room to cache it, the upstream body (the first request takes the fill's, each other
   * request gets its own). Nothing here loops: every outcome is an answer.
   */
  private async read(fill: Fill, upstream: UpstreamClient, repo: string, digest: string, joined: boolean): Promise<BlobSource> {
    await fill.ready;
    switch (readableAs(fill)) {
      case "download":
        return { kind: "fill", fill, joined };
      case "committed": {
        const cached = await this.store.open(digest);
        // Evicted the moment it was committed (no room for it after all): the upstream is still there.
        return cached ? { kind: "cached", ...cached } : this.passThrough(upstream, repo, digest);
      }
      case "uncached": {
        this.metrics?.uncachedServed.inc({ upstream: upstream.name });
        const body = fill.takeDirect();
        return body ? verified(digest, body) : this.passThrough(upstream, repo, digest);
      }
    }
  }

  /** This request's own GET from the upstream, verified as it streams and not stored. */
  private async passThrough(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobSource> {
    // A signal nobody aborts: the client's stream is made from the response, and destroying it releases the body.
    return verified(digest, await upstream.getBlob(repo, digest, new AbortController().signal));
  }

  private async sizeOnline(upstream: UpstreamClient, repo: string, digest: string): Promise<{ size: number | undefined; source: "cached" | "fill" | "upstream" }> {
    const linked = await this.metadata.hasLink(upstream.name, repo, digest);
    const size = await this.store.size(digest);
    if (size !== undefined) {
      if (!linked) await this.confirm(upstream, repo, digest);
      return { size, source: "cached" };
    }
    const running = this.fills.current(digest);
    if (running && linked) {
      await running.ready;
      if (running.size !== undefined) return { size: running.size, source: "fill" };
    }
    const head = await upstream.headBlob(repo, digest);
    await this.metadata.addLinks(upstream.name, repo, [digest]);
    return { size: head.size, source: "upstream" };
  }

  private async confirm(upstream: UpstreamClient, repo: string, digest: string): Promise<void> {
    await upstream.headBlob(repo, digest);
    await this.metadata.addLinks(upstream.name, repo, [digest]);
  }
}

/** The upstream body as a client's stream, verified as it passes: nothing unverified ends complete-looking. */
function verified(digest: string, response: UpstreamBlob): BlobSource {
  const stream = new VerifyStream(digest, response.size);
  // pipeline, not pipe: an upstream failure must break the client's stream, and a client leaving must
  // release the upstream body.
  pipeline(response.body, stream, () => undefined);
  return { kind: "direct", size: response.size, body: stream };
}

/**
 * What a new reader of a ready fill gets, decided at one instant: the download in progress, the committed file,
 * or nothing of the fill's (no room to cache: the fill handed its body to one request and is done). A fill that
 * failed since it was ready answers with its error, as its readers do.
 */
function readableAs(fill: Fill): "download" | "committed" | "uncached" {
  if (fill.state === "failed") throw fill.error ?? new Error(`blob fill of ${fill.digest} failed`);
  if (fill.committed) return "committed";
  return fill.state === "direct" ? "uncached" : "download";
}

/** An upstream that is offline by configuration means "not cached" here: BLOB_UNKNOWN, not an outage. */
async function offlineAsUnknown<T>(upstream: UpstreamClient, digest: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (upstream.config.offline && err instanceof RegistryError && err.code === "UNAVAILABLE") {
      throw new RegistryError("BLOB_UNKNOWN", `blob ${digest} is not cached here, and upstream ${upstream.name} is offline`, { detail: { upstream: upstream.name, offline: true } });
    }
    throw err;
  }
}
