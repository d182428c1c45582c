/**
 * Read-through blobs. A request for a digest is answered, in order, from: the committed content in the store;
 * the fill already downloading it; or a new fill. Blobs are stored once for every repository and upstream, but
 * are only served under a repository and upstream that are on record for them (access-proof.ts): knowing a
 * digest is not enough to read it through another name. When this upstream never served the content itself, its
 * bytes are fetched from it, verified and passed through, rather than trusting its word (a HEAD) for another's
 * copy.
 *
 * A GET is answered with everything a response needs (`BlobResponse`: size, the range sent, a body, how it was
 * obtained), or RANGE_INVALID.
 *
 * A repository whose cache rule (cache-rules.ts) says `cache: false` is passed through: every GET is this
 * request's own upstream GET, verified as it streams (the pass-through a full disk uses), and nothing is stored
 * or read from the store; a HEAD is the upstream's HEAD. A rule's `maxIdle` is handed to the janitor for each
 * blob served under it. What a source is, and what is read from it, is decided at one instant: a fill is
 * read only if, at that instant, it is still downloading; one that committed meanwhile is read from the store.
 */
import { finished } from "node:stream/promises";
import { pipeline, type Readable } from "node:stream";
import { RegistryError } from "../oci/errors.ts";
import { resolveRange, type ByteRangeSpec } from "../oci/range.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { linkedWithoutRecord, recordServed, servesUnrecordedLink, standingOf, type Standing } from "./access-proof.ts";
import { confirmationLate, LATE, settleWithin } from "./answer-deadline.ts";
import { StoreUnavailableError, type ContentStore, type StoredContent } from "../storage/content-store.ts";
import type { Fill, FillCoordinator, UpstreamBlob } from "../fill/fill-coordinator.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import type { ReceivePacer } from "../fill/receive-pacer.ts";
import { VerifyStream } from "../fill/verify-stream.ts";
import { CommittedElsewhereError, type FleetFills } from "../fill/fleet-fills.ts";
import type { FillLease } from "../fill/fill-lease.ts";
import type { CacheRule, CacheRules } from "../config/cache-rules.ts";

/**
 * How a blob response was obtained: `hit` from the store; `miss` from a download this request started;
 * `coalesced` from a download another request started; `uncached` from the upstream, verified as it streams and
 * not stored (no room to cache it, or this upstream proving it holds content cached from elsewhere).
 */
export type BlobResult = "hit" | "miss" | "coalesced" | "uncached";

/** The answer to a blob GET. */
export interface BlobResponse {
  /** The blob's size; undefined when the upstream announced none (the body then runs to the end of the blob). */
  size: number | undefined;
  /** The bytes sent (inclusive), when a range was answered: a partial response. */
  range: { start: number; end: number } | undefined;
  /** A stream of exactly the bytes to send, or, for a 0-byte blob, nothing (an empty Buffer). */
  body: Readable | Buffer;
  result: BlobResult;
  /** Stored content the client is sent to fetch itself (a presigned object store URL): answered with a 307. */
  redirect?: string;
}

/** The answer to a blob HEAD: `hit` when the store holds it, `miss` otherwise (a download, or the upstream's HEAD). */
export interface BlobHead {
  size: number | undefined;
  result: "hit" | "miss";
}

/**
 * What a caller does with each kind of source, called at the instant the source is decided (`download` before
 * any await, so a reader made there is valid).
 */
interface SourceHandler<T> {
  /** Committed content; the handler owns it (reads or closes it). */
  stored(content: StoredContent): Promise<T>;
  /** A download in progress, started by this request (`joined` false) or by another (true). */
  download(fill: Fill, joined: boolean): Promise<T>;
  /** The upstream body, verified as it streams, not stored: no room to cache it, or this upstream proving it. */
  uncached(body: Readable, size: number | undefined, why: "no-room" | "proving"): Promise<T>;
}

const EMPTY = Buffer.alloc(0);

export class BlobCache {
  private readonly store: ContentStore;
  private readonly fills: FillCoordinator;
  private readonly metadata: MetadataStore;
  private readonly metrics: Metrics | undefined;
  private readonly pacer: ReceivePacer;
  private readonly fleet: FleetFills | undefined;
  private readonly rules: CacheRules | undefined;
  private readonly noteIdleLimit: ((digest: string, ms: number) => void) | undefined;

  constructor(opts: {
    store: ContentStore;
    fills: FillCoordinator;
    metadata: MetadataStore;
    pacer: ReceivePacer;
    metrics?: Metrics;
    /** Replicas sharing downloads (fleet-fills.ts); absent: every download comes from the upstream. */
    fleet?: FleetFills;
    /** Per-repository rules (`rules:`); none: every blob is cached. */
    rules?: CacheRules;
    /** Told each blob served under a rule with `maxIdle` (the janitor's noteIdleLimit). */
    noteIdleLimit?: (digest: string, ms: number) => void;
  }) {
    this.fleet = opts.fleet;
    this.rules = opts.rules;
    this.noteIdleLimit = opts.noteIdleLimit;
    this.metrics = opts.metrics;
    this.pacer = opts.pacer;
    this.store = opts.store;
    this.fills = opts.fills;
    this.metadata = opts.metadata;
  }

  /**
   * For GET: the blob's bytes (the `range` of them, when given and the size is known), or BLOB_UNKNOWN (or the
   * upstream's error); RANGE_INVALID when the range is not satisfiable. Bytes that pass through uncached are
   * always the whole blob (RFC 9110 allows answering a Range request with the full content).
   *
   * `redirectTo`: whether this client may be sent to fetch a hit from a URL of the store's (`storage.s3.redirect`)
   * instead; absent, or false for that URL: the bytes come through the mirror.
   */
  async get(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    range?: ByteRangeSpec,
    rule: CacheRule | undefined = this.ruleFor(upstream, repo),
    redirectTo?: (location: string) => boolean,
  ): Promise<BlobResponse> {
    if (rule?.cache === false)
      return offlineAsUnknown(upstream, digest, async (): Promise<BlobResponse> => {
        const { body, size } = await this.passThrough(upstream, repo, digest);
        return { size, range: undefined, body, result: "uncached" };
      });
    const response = await this.serve<BlobResponse>(upstream, repo, digest, {
      stored: (content) =>
        fromStore(content, range, "hit", redirectTo).catch(async (err: unknown): Promise<BlobResponse> => {
          // The store could not be read (an object store down) before any byte was sent: the upstream's bytes,
          // verified, instead of an error.
          if (!(err instanceof StoreUnavailableError)) throw err;
          this.metrics?.uncachedServed.inc({ upstream: upstream.name });
          const { body, size } = await this.passThrough(upstream, repo, digest);
          return { size, range: undefined, body, result: "uncached" };
        }),
      download: (fill, joined) => fromDownload(fill, range, joined ? "coalesced" : "miss"),
      uncached: async (body, size) => ({ size, range: undefined, body, result: "uncached" }),
    });
    if (rule?.maxIdle !== undefined) this.noteIdleLimit?.(digest, rule.maxIdle);
    return response;
  }

  /** The rule a blob request falls under (blobs carry no tag), matched once per request. */
  ruleFor(upstream: UpstreamClient, repo: string): CacheRule | undefined {
    return this.rules?.match(upstream.name, repo, undefined);
  }

  /**
   * For prefetching: resolves once the blob is committed here (already cached, or a download, this one's or a
   * client's, finished) and servable under `repo`; throws when it cannot be cached (no room).
   */
  async ensureCached(upstream: UpstreamClient, repo: string, digest: string): Promise<void> {
    const rule = this.ruleFor(upstream, repo);
    if (rule?.cache === false) throw new Error(`not cached: rules[${rule.index}] says cache: false for ${repo}`);
    if (rule?.maxIdle !== undefined) this.noteIdleLimit?.(digest, rule.maxIdle);
    return this.serve(upstream, repo, digest, {
      stored: (content) => content.close(),
      download: (fill) => fill.done,
      uncached: async (body, _size, why) => {
        if (why === "proving") {
          // Cached already, from elsewhere: reading this upstream's bytes to the end is what proves it here.
          await finished(body.resume());
          return;
        }
        body.destroy();
        throw new Error("not cached: no room in the cache (disk full or over budget)");
      },
    });
  }

  /** For HEAD: the blob's size, from the store, a running fill, or an upstream HEAD (no download is started). */
  async head(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    rule: CacheRule | undefined = this.ruleFor(upstream, repo),
  ): Promise<BlobHead> {
    if (rule?.cache === false)
      return offlineAsUnknown(upstream, digest, async (): Promise<BlobHead> => ({
        size: (await upstream.headBlob(repo, digest)).size,
        result: "miss",
      }));
    return offlineAsUnknown(upstream, digest, () => this.headOnline(upstream, repo, digest));
  }

  private serve<T>(upstream: UpstreamClient, repo: string, digest: string, handler: SourceHandler<T>): Promise<T> {
    return offlineAsUnknown(upstream, digest, () => this.serveOnline(upstream, repo, digest, handler));
  }

  private async serveOnline<T>(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    handler: SourceHandler<T>,
  ): Promise<T> {
    const standing = await this.standing(upstream, repo, digest);
    const cached = await this.openStored(digest);
    if (cached) {
      if (standing === "granted") return handler.stored(cached);
      if (standing === "confirm-repository") {
        try {
          await this.confirmCached(upstream, repo, digest);
        } catch (err) {
          await cached.close();
          throw err;
        }
        return handler.stored(cached);
      }
      let proof: { body: Readable; size: number | undefined };
      try {
        proof = await this.proveCached(upstream, repo, digest);
      } catch (err) {
        if (await servesUnrecordedLink(this.metadata, upstream, repo, digest, err)) {
          this.metrics?.staleServed.inc({ upstream: upstream.name, reason: (err as RegistryError).code });
          return handler.stored(cached);
        }
        await cached.close();
        throw err;
      }
      await cached.close();
      return handler.uncached(proof.body, proof.size, "proving");
    }
    const running = this.fills.current(digest);
    // Nobody has it: this upstream's own download proves the content and the repository.
    if (running === undefined) return this.download(upstream, repo, digest, handler);
    const fromHere = running.origin.upstream === upstream.name;
    // Another upstream's download proves nothing about this one.
    if (standing === "prove-content" && !fromHere) {
      const proof = await this.passThrough(upstream, repo, digest);
      return handler.uncached(proof.body, proof.size, "proving");
    }
    if (standing !== "granted" && !(fromHere && running.origin.repo === repo))
      await this.confirmRepository(upstream, repo, digest);
    return this.read(running, upstream, repo, digest, true, handler);
  }

  /**
   * The committed content, or undefined when there is none, or when the store cannot be reached now (an object
   * store down): it then holds nothing for this request, and the blob comes from the upstream, verified, without
   * being stored (the admission refuses while the store is down).
   */
  private openStored(digest: string): Promise<StoredContent | undefined> {
    return this.store.open(digest).catch((err: unknown) => {
      if (err instanceof StoreUnavailableError) return undefined;
      throw err;
    });
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
  private async download<T>(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    handler: SourceHandler<T>,
  ): Promise<T> {
    let lease: FillLease | undefined;
    const fleet = this.fleet;
    const fill = this.fills.start(digest, { upstream: upstream.name, repo }, (signal) =>
      fleet === undefined
        ? upstream.getBlob(repo, digest, signal)
        : fleet.open(digest, { upstream: upstream.name, repo }, signal, {
            upstream: () => upstream.getBlob(repo, digest, signal),
            confirmRepository: () => this.confirmRepository(upstream, repo, digest),
            committed: async () => (await this.store.size(digest)) !== undefined,
            leased: (taken) => (lease = taken),
          }),
    );
    const { origin } = fill;
    // The fleet's lease on this download (when this replica holds it) ends with the fill, committed or not.
    const release = () => void lease?.release();
    void fill.done.then(release, release);
    // A record that fails to be written only costs a later request a verified download: nothing to report here.
    void fill.done.then(
      () => recordServed(this.metadata, origin.upstream, origin.repo, [digest]).catch(() => undefined),
      () => undefined,
    );
    return this.read(fill, upstream, repo, digest, false, handler);
  }

  /**
   * Reads a fill once it is ready: following the download; the committed content, if it committed meanwhile;
   * or, when there was no room to cache it, the upstream body (the first request takes the fill's, each other
   * request gets its own). Nothing here loops: every outcome is an answer.
   */
  private async read<T>(
    fill: Fill,
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    joined: boolean,
    handler: SourceHandler<T>,
  ): Promise<T> {
    try {
      await fill.ready;
    } catch (err) {
      // Another replica committed it to the shared store while this one was about to download it.
      if (!(err instanceof CommittedElsewhereError)) throw err;
      const cached = await this.openStored(digest);
      if (cached) return handler.stored(cached);
      throw new RegistryError("UNAVAILABLE", `blob ${digest} was committed by another replica and is gone again`, {
        headers: { "Retry-After": "1" },
      });
    }
    switch (fill.readableAs()) {
      case "download":
        return handler.download(fill, joined);
      case "committed": {
        const cached = await this.openStored(digest);
        if (cached) return handler.stored(cached);
        // Evicted the moment it was committed (no room for it after all): the upstream is still there.
        const response = await this.passThrough(upstream, repo, digest);
        return handler.uncached(response.body, response.size, "no-room");
      }
      case "uncached": {
        this.metrics?.uncachedServed.inc({ upstream: upstream.name });
        const taken = fill.takeUncached();
        const response = taken
          ? this.verified(upstream, repo, digest, taken)
          : await this.passThrough(upstream, repo, digest);
        return handler.uncached(response.body, response.size, "no-room");
      }
    }
  }

  /** This request's own GET from the upstream, verified as it streams and not stored. */
  private async passThrough(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
  ): Promise<{ body: Readable; size: number | undefined }> {
    // A signal nobody aborts: the client's stream is made from the response, and destroying it releases the body.
    const response = await upstream.getBlob(repo, digest, new AbortController().signal);
    return this.verified(upstream, repo, digest, response);
  }

  private verified(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
    response: UpstreamBlob,
  ): { body: Readable; size: number | undefined } {
    const verified = new VerifyStream(digest, response.size, {
      stallTimeoutMs: upstream.config.timeouts.bodyIdle,
      pacer: this.pacer,
    });
    // A Transform finishes only after its flush accepted the bytes: the upstream has proved it holds them.
    verified.once(
      "finish",
      () => void recordServed(this.metadata, upstream.name, repo, [digest]).catch(() => undefined),
    );
    // pipeline, not pipe: an upstream failure must break the client's stream, and a client leaving must
    // release the upstream body.
    // Counted when the transfer ends, however it ends: these bytes came from the upstream, as a fill's do.
    pipeline(response.body, verified, () =>
      this.metrics?.upstreamFetchedBytes.inc({ upstream: upstream.name, kind: "blob" }, verified.received),
    );
    return { body: verified, size: response.size };
  }

  private async headOnline(upstream: UpstreamClient, repo: string, digest: string): Promise<BlobHead> {
    const standing = await this.standing(upstream, repo, digest);
    const stored = standing === "prove-content" ? undefined : await this.store.size(digest);
    // Not granted: this repository is confirmed by the upstream's HEAD; if the upstream never proved the content,
    // that HEAD is also the whole answer (a HEAD reveals the size, and no bytes).
    const head =
      standing === "granted"
        ? undefined
        : stored !== undefined
          ? await this.confirmCached(upstream, repo, digest)
          : await this.confirmRepository(upstream, repo, digest);
    if (standing !== "prove-content") {
      const size = stored ?? (await this.store.size(digest));
      if (size !== undefined) return { size, result: "hit" };
      const running = this.fills.current(digest);
      if (running) {
        const ready = await running.ready.then(
          () => true,
          (err: unknown) => {
            if (err instanceof CommittedElsewhereError) return false;
            throw err;
          },
        );
        if (!ready) {
          const committed = await this.store.size(digest);
          if (committed !== undefined) return { size: committed, result: "hit" };
        } else if (running.size !== undefined) return { size: running.size, result: "miss" };
      }
    }
    return { size: (head ?? (await this.confirmRepository(upstream, repo, digest))).size, result: "miss" };
  }

  /**
   * confirmRepository for a blob the store holds: the client waits for the upstream up to `revalidateTimeout`,
   * then hears UNAVAILABLE; the HEAD goes on, and its answer is remembered for the next request.
   */
  private async confirmCached(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
  ): Promise<{ size: number | undefined }> {
    const outcome = await settleWithin(
      this.confirmRepository(upstream, repo, digest),
      upstream.config.revalidateTimeout,
    );
    if (outcome === LATE) throw confirmationLate(upstream, `blob ${digest} in ${repo}`);
    return outcome;
  }

  /**
   * This upstream's own GET of a blob the store holds but it never proved (passThrough). When the cache may
   * serve it without that proof (linkedWithoutRecord), the client waits up to `revalidateTimeout`; a response
   * arriving later is released unread.
   */
  private async proveCached(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
  ): Promise<{ body: Readable; size: number | undefined }> {
    const proof = this.passThrough(upstream, repo, digest);
    if (!(await linkedWithoutRecord(this.metadata, upstream, repo, digest))) return proof;
    const outcome = await settleWithin(proof, upstream.config.revalidateTimeout);
    if (outcome !== LATE) return outcome;
    void proof.then(
      (late) => late.body.destroy(),
      () => undefined,
    );
    throw confirmationLate(upstream, `blob ${digest} in ${repo}`);
  }

  /** The upstream's HEAD says `repo` holds the blob: remembered as a link (it proves the repository, not the bytes). */
  private async confirmRepository(
    upstream: UpstreamClient,
    repo: string,
    digest: string,
  ): Promise<{ size: number | undefined }> {
    const head = await upstream.headBlob(repo, digest);
    await this.metadata.addLinks(upstream.name, repo, [digest]);
    return head;
  }
}

/** Committed content as a response: the range of it asked for, or all of it. */
async function fromStore(
  content: StoredContent,
  spec: ByteRangeSpec | undefined,
  result: BlobResult,
  redirectTo?: (location: string) => boolean,
): Promise<BlobResponse> {
  let range: { start: number; end: number } | undefined;
  try {
    range = rangeToSend(spec, content.size);
  } catch (err) {
    await content.close();
    throw err;
  }
  if (content.size === 0) {
    await content.close();
    return { size: 0, range, body: EMPTY, result };
  }
  // The store sends the client to the content itself (storage.s3.redirect), where the caller lets it; the Range
  // goes along with it.
  if (content.directUrl && redirectTo) {
    let location: string;
    try {
      location = await content.directUrl();
    } catch (err) {
      await content.close();
      throw err;
    }
    if (redirectTo(location)) {
      await content.close();
      return { size: content.size, range, body: EMPTY, result, redirect: location };
    }
  }
  const body = content.readWhenAnswered ? await content.readWhenAnswered(range) : content.read(range);
  return { size: content.size, range, body, result };
}

/**
 * A download in progress as a response: a reader following it, made before any await (the fill is readable
 * now). Without a known size a range cannot be resolved yet: the whole blob is sent.
 */
async function fromDownload(fill: Fill, spec: ByteRangeSpec | undefined, result: BlobResult): Promise<BlobResponse> {
  const size = fill.size;
  const range = size === undefined ? undefined : rangeToSend(spec, size);
  if (size === 0) {
    // Headers alone make a 0-byte response complete, so it is answered only once the content verified; an
    // upstream that announced 0 bytes for other content gets its error answered instead.
    await fill.done;
    return { size, range, body: EMPTY, result };
  }
  const body = range
    ? fill.createReader(range.start, range.end)
    : fill.createReader(0, size === undefined ? undefined : size - 1);
  return { size, range, body, result };
}

/** The bytes to send for `spec` of a `size`-byte blob: undefined for all of them; RANGE_INVALID when unsatisfiable. */
function rangeToSend(spec: ByteRangeSpec | undefined, size: number): { start: number; end: number } | undefined {
  if (spec === undefined) return undefined;
  const resolved = resolveRange(spec, size);
  if (resolved === "unsatisfiable") {
    throw new RegistryError("RANGE_INVALID", `range not satisfiable for a blob of ${size} bytes`, {
      headers: { "Content-Range": `bytes */${size}` },
    });
  }
  return resolved;
}

/** An upstream that is offline by configuration means "not cached" here: BLOB_UNKNOWN, not an outage. */
async function offlineAsUnknown<T>(upstream: UpstreamClient, digest: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (upstream.config.offline && err instanceof RegistryError && err.code === "UNAVAILABLE") {
      throw new RegistryError(
        "BLOB_UNKNOWN",
        `blob ${digest} is not cached here, and upstream ${upstream.name} is offline`,
        { detail: { upstream: upstream.name, offline: true } },
      );
    }
    throw err;
  }
}
