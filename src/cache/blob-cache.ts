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
import type { Fill, FillCoordinator } from "./fill-coordinator.ts";
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
    let linked = await this.metadata.hasLink(upstream.name, repo, digest);
    for (let attempt = 0; attempt < 3; attempt++) {
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
      if (running) {
        if (running.committed) continue; // renamed since our look: read the committed file
        const sameRepo = running.origin.upstream === upstream.name && running.origin.repo === repo;
        if (!linked && !sameRepo) {
          await this.confirm(upstream, repo, digest);
          linked = true;
        }
        await running.ready;
        if (running.committed || running.state === "direct") continue; // direct: not shareable, go on our own
        return { kind: "fill", fill: running, joined: true };
      }
      const fill = this.fills.start(digest, { upstream: upstream.name, repo }, (signal) => upstream.getBlob(repo, digest, signal));
      await fill.ready;
      await this.metadata.addLinks(upstream.name, repo, [digest]);
      if (fill.committed) continue;
      const direct = fill.state === "direct" ? fill.takeDirect() : undefined;
      if (direct) {
        // pipeline, not pipe: an upstream failure must break the client's stream, and a client leaving must
        // release the upstream body.
        const verified = new VerifyStream(digest, direct.size);
        pipeline(direct.body, verified, () => undefined);
        this.metrics?.uncachedServed.inc({ upstream: upstream.name });
        return { kind: "direct", size: direct.size, body: verified };
      }
      if (fill.state === "direct") continue;
      return { kind: "fill", fill, joined: false };
    }
    // Only reachable if the committed file vanished three times in a row (evicted under us): let the client retry.
    throw new Error(`blob ${digest} was committed but could not be opened`);
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
