/**
 * Read-through blobs. A request for a digest is answered, in order, from: the committed file in the store; the
 * fill already downloading it; or a new fill. Blobs are stored once for every repository and upstream, but are
 * only served under a repository and upstream that are on record for them (access-proof.ts): knowing a digest
 * is not enough to read it through another name. When this upstream never served the content itself, its bytes
 * are fetched from it, verified and passed through, rather than trusting its word (a HEAD) for another's copy.
 */
import { pipeline, type Readable } from "node:stream";
import { RegistryError } from "../oci/errors.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { recordServed, servesUnrecordedLink, standingOf, type Standing } from "./access-proof.ts";
import type { ContentStore, StoredContent } from "../storage/content-store.ts";
import type { Fill, FillCoordinator, UpstreamBlob } from "../fill/fill-coordinator.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import type { ReceivePacer } from "../fill/receive-pacer.ts";
import { VerifyStream } from "../fill/verify-stream.ts";

/** Where a blob response's bytes come from. */
export type BlobSource =
  /** Committed content; the caller owns (and must read or close) it. */
  | { kind: "cached"; size: number; content: StoredContent }
  /** A fill in progress (started by this request: `joined` false; or by another: true). */
  | { kind: "fill"; fill: Fill; joined: boolean }
  /** HEAD of a blob not cached: the upstream confirmed it exists. */
  | { kind: "upstream"; size: number | undefined }
  /**
   * The upstream body, verified as it streams, not stored: there was no room to cache it (`no-room`), or it is
   * cached but this upstream has to prove it holds it (`proving`; recorded once the bytes verified).
   */
  | { kind: "direct"; size: number | undefined; body: Readable; why: "no-room" | "proving" };

export class BlobCache {
  private readonly store: ContentStore;
  private readonly fills: FillCoordinator;
  private readonly metadata: MetadataStore;

  private readonly metrics: Metrics | undefined;
  private readonly pacer: ReceivePacer;

  constructor(opts: { store: ContentStore; fills: FillCoordinator; metadata: MetadataStore; pacer: ReceivePacer; metrics?: Metrics }) {
    this.metrics = opts.metrics;
    this.pacer = opts.pacer;
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
    const standing = await this.standing(upstream, repo, digest);
    const cached = await this.store.open(digest);
    if (cached) {
      if (standing === "granted") return { kind: "cached", size: cached.size, content: cached };
      if (standing === "confirm-repository") {
        try {
          await this.confirmRepository(upstream, repo, digest);
        } catch (err) {
          await cached.close();
          throw err;
        }
        return { kind: "cached", size: cached.size, content: cached };
      }
      try {
        const proof = await this.passThrough(upstream, repo, digest);
        await cached.close();
        return proof;
      } catch (err) {
        if (await servesUnrecordedLink(this.metadata, upstream, repo, digest, err)) {
          this.metrics?.staleServed.inc({ upstream: upstream.name, reason: (err as RegistryError).code });
          return { kind: "cached", size: cached.size, content: cached };
        }
        await cached.close();
        throw err;
      }
    }
    const running = this.fills.current(digest);
    // Nobody has it: this upstream's own download proves the content and the repository.
    if (running === undefined) return this.download(upstream, repo, digest);
    const fromHere = running.origin.upstream === upstream.name;
    // Another upstream's download proves nothing about this one.
    if (standing === "prove-content" && !fromHere) return this.passThrough(upstream, repo, digest);
    if (standing !== "granted" && !(fromHere && running.origin.repo === repo)) await this.confirmRepository(upstream, repo, digest);
    return this.read(running, upstream, repo, digest, true);
  }

  /**
   * Where this request stands (access-proof.ts), counting a download this upstream is serving for the digest
   * now, or committed moments ago (before its record was written), as the upstream's proof of the content,
   * and of the repository if it is the same one.
   */
  private async standing(upstream: UpstreamClient, repo: string, digest: string): Promise<Standing> {
    const recorded = await standingOf(this.metadata, upstream, repo, digest);
    const running = this.fills.current(digest);
    if (running?.origin.upstream !== upstream.name) return recorded;
    if (running.origin.repo === repo) return "granted";
    return recorded === "prove-content" ? "confirm-repository" : recorded;
  }

  /** Starts the one download of a blob nobody has; once it commits, its upstream has served it for its repository. */
  private async download(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobSource> {
    const fill = this.fills.start(digest, { upstream: upstream.name, repo }, (signal) => upstream.getBlob(repo, digest, signal));
    const { origin } = fill;
    // A record that fails to be written only costs a later request a verified download: nothing to report here.
    void fill.done.then(
      () => recordServed(this.metadata, origin.upstream, origin.repo, [digest]).catch(() => undefined),
      () => undefined,
    );
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
        return cached ? { kind: "cached", size: cached.size, content: cached } : this.passThrough(upstream, repo, digest, "no-room");
      }
      case "uncached": {
        this.metrics?.uncachedServed.inc({ upstream: upstream.name });
        const body = fill.takeUncached();
        return body ? this.verified(upstream, repo, digest, body, "no-room") : this.passThrough(upstream, repo, digest, "no-room");
      }
    }
  }

  /** This request's own GET from the upstream, verified as it streams and not stored. */
  private async passThrough(upstream: UpstreamClient, repo: string, digest: string, why: "no-room" | "proving" = "proving"): Promise<BlobSource> {
    // A signal nobody aborts: the client's stream is made from the response, and destroying it releases the body.
    const response = await upstream.getBlob(repo, digest, new AbortController().signal);
    return this.verified(upstream, repo, digest, response, why);
  }

  private verified(upstream: UpstreamClient, repo: string, digest: string, response: UpstreamBlob, why: "no-room" | "proving"): BlobSource {
    const verified = new VerifyStream(digest, response.size, { stallTimeoutMs: upstream.config.timeouts.bodyIdle, pacer: this.pacer });
    // A Transform finishes only after its flush accepted the bytes: the upstream has proved it holds them.
    verified.once("finish", () => void recordServed(this.metadata, upstream.name, repo, [digest]).catch(() => undefined));
    // pipeline, not pipe: an upstream failure must break the client's stream, and a client leaving must
    // release the upstream body.
    pipeline(response.body, verified, () => undefined);
    return { kind: "direct", size: response.size, body: verified, why };
  }

  private async sizeOnline(upstream: UpstreamClient, repo: string, digest: string): Promise<{ size: number | undefined; source: "cached" | "fill" | "upstream" }> {
    const standing = await this.standing(upstream, repo, digest);
    // Not granted: this repository is confirmed by the upstream's HEAD; if the upstream never proved the content,
    // that HEAD is also the whole answer (a HEAD reveals the size, and no bytes).
    const head = standing === "granted" ? undefined : await this.confirmRepository(upstream, repo, digest);
    if (standing !== "prove-content") {
      const size = await this.store.size(digest);
      if (size !== undefined) return { size, source: "cached" };
      const running = this.fills.current(digest);
      if (running) {
        await running.ready;
        if (running.size !== undefined) return { size: running.size, source: "fill" };
      }
    }
    return { size: (head ?? (await this.confirmRepository(upstream, repo, digest))).size, source: "upstream" };
  }

  /** The upstream's HEAD says `repo` holds the blob: remembered as a link (it proves the repository, not the bytes). */
  private async confirmRepository(upstream: UpstreamClient, repo: string, digest: string): Promise<{ size: number | undefined }> {
    const head = await upstream.headBlob(repo, digest);
    await this.metadata.addLinks(upstream.name, repo, [digest]);
    return head;
  }
}

/**
 * What a new reader of a ready fill gets, decided at one instant: the download in progress, the committed file,
 * or nothing of the fill's (no room to cache: the fill handed its body to one request and is done, or it passed
 * its download through to its readers and kept nothing). A fill that failed since it was ready answers with its
 * error, as its readers do.
 */
function readableAs(fill: Fill): "download" | "committed" | "uncached" {
  if (fill.state === "failed") throw fill.error ?? new Error(`blob fill of ${fill.digest} failed`);
  if (fill.committed) return "committed";
  return fill.state === "uncached" || fill.state === "passed" ? "uncached" : "download";
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
