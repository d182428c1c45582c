/**
 * Whether the object store (`storage.s3`) can be reached: what /readyz and `mirror_object_store_up` report, and
 * what the cache layer asks before caching a download or reading a hit.
 *
 * Every request the store's S3 client sends passes through a middleware here (after the SDK's own retries): a
 * failure that says nothing about the object (connection refused or reset, a timeout, a 5xx) marks the store
 * down with its reason and is rethrown as StoreUnavailableError; answers about the object (404/NoSuchKey, other
 * 4xx) and requests this process aborted itself leave the health alone. While down, the store's reads fail at
 * once instead of waiting on the network. A periodic probe (HeadBucket, bounded by a timeout) marks it up again
 * once it answers, and notices an outage even while nobody pulls.
 */
import { HeadBucketCommand, type S3Client } from "@aws-sdk/client-s3";
import { StoreUnavailableError } from "./content-store.ts";

/** The probe's bound: a gateway that accepts the connection and never answers counts as down after this. */
const PROBE_TIMEOUT_MS = 5_000;

/**
 * Whether an S3 client error means the store cannot be reached or served nothing (network, timeout, 5xx), as
 * opposed to an answer about the request (404, 403, 412…) or an abort this process asked for.
 */
export function isStoreFailure(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } } | undefined;
  if (e === undefined || e === null) return false;
  if (e.name === "AbortError") return false;
  const status = e.$metadata?.httpStatusCode;
  if (status !== undefined) return status >= 500;
  return true; // no HTTP answer at all: refused, reset, DNS, timed out
}

export class ObjectStoreHealth {
  private downReason: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private probing: Promise<void> | undefined;
  /** Failures since the last probe started: a probe that succeeded while calls failed does not clear them. */
  private failuresSinceProbe = 0;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly onFailure: (() => void) | undefined;
  private readonly onChange: ((up: boolean, reason: string | undefined) => void) | undefined;
  private readonly probeTimeoutMs: number;

  constructor(opts: {
    client: S3Client;
    bucket: string;
    /** How long a probe waits for HeadBucket's answer (default 5 s). */
    probeTimeoutMs?: number;
    /** Each failed request (for `mirror_object_store_failures_total`). */
    onFailure?: () => void;
    /** Each change between up and down (for the log). */
    onChange?: (up: boolean, reason: string | undefined) => void;
  }) {
    this.client = opts.client;
    this.bucket = opts.bucket;
    this.onFailure = opts.onFailure;
    this.onChange = opts.onChange;
    this.probeTimeoutMs = opts.probeTimeoutMs ?? PROBE_TIMEOUT_MS;
    opts.client.middlewareStack.add(
      (next) => async (args) => {
        try {
          return await next(args);
        } catch (err) {
          if (!isStoreFailure(err)) throw err;
          this.failed(err);
          throw new StoreUnavailableError(`object store unavailable: ${describe(err)}`, { cause: err });
        }
      },
      { step: "initialize", name: "objectStoreHealth", override: true },
    );
  }

  get up(): boolean {
    return this.downReason === undefined;
  }

  /** Why the store is down (the last failure), undefined while up. */
  get reason(): string | undefined {
    return this.downReason;
  }

  /** Throws StoreUnavailableError while the store is down: a read that would only wait for the network to fail. */
  assertUp(): void {
    if (this.downReason !== undefined) throw new StoreUnavailableError(`object store unavailable: ${this.downReason}`);
  }

  /** A request failed for want of the store. */
  failed(err: unknown): void {
    this.failuresSinceProbe++;
    this.onFailure?.();
    const wasUp = this.downReason === undefined;
    this.downReason = describe(err);
    if (wasUp) this.onChange?.(false, this.downReason);
  }

  /** One probe: HeadBucket within the probe timeout. Up if it answered and nothing failed meanwhile. */
  probe(): Promise<void> {
    this.probing ??= (async () => {
      const before = this.failuresSinceProbe;
      try {
        await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), {
          abortSignal: AbortSignal.timeout(this.probeTimeoutMs),
        });
      } catch (err) {
        // A timeout aborts the request (an AbortError the middleware lets through): that is a failure here, as
        // is any other answer than 200 (a bucket gone, credentials revoked).
        if (err instanceof StoreUnavailableError) return;
        const name = (err as { name?: string } | undefined)?.name;
        this.failed(
          name === "AbortError" || name === "TimeoutError"
            ? new Error(`no answer within ${this.probeTimeoutMs} ms`)
            : err,
        );
        return;
      }
      if (this.failuresSinceProbe !== before || this.downReason === undefined) return;
      this.downReason = undefined;
      this.onChange?.(true, undefined);
    })().finally(() => (this.probing = undefined));
    return this.probing;
  }

  /** Probes every `intervalMs` until stop(). */
  start(intervalMs: number): void {
    this.timer = setInterval(() => void this.probe(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

function describe(err: unknown): string {
  const e = err as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  const status = e?.$metadata?.httpStatusCode;
  // An HTTP answer is named by its status (and S3's error code): its body may be anything (a proxy's page).
  if (status !== undefined) return `HTTP ${status}${e.name && e.name !== "Error" ? ` (${e.name})` : ""}`;
  return e?.message || e?.code || e?.name || String(err);
}
