/**
 * Ordered fallbacks (`upstreams.<name>.fallbacks`): when the upstream a request resolved to cannot answer
 * because it is down (unreachable, or marked down by its health state), rate-limiting (429) or timing out, the
 * same request is made through each listed upstream in turn, as Nexus group and Artifactory virtual repositories
 * do. Anything else the upstream says (not found, denied, a bad answer) is its answer, and no fallback is asked.
 *
 * A fallback is asked through the same caches as any request (manifest-cache.ts, blob-cache.ts): what it sends
 * is verified by digest and recorded as its own (its tag pointers, its links, its provenance), never as the
 * primary's. It is asked for the same repository name, with its own library prefix applied to a single-component
 * name, and never for a repository its `repositories` rules exclude. Only the primary's list is followed (a
 * fallback's own fallbacks are not), and when every fallback fails too the primary's error is the answer: that
 * is what is wrong.
 */
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { Metrics } from "../observability/metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { isValidName } from "../oci/reference.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export type FallbackReason = "down" | "ratelimited" | "timeout";

/** Transport codes that mean the upstream did not answer in time. */
const TIMEOUT_CODES = new Set([
  "ETIMEDOUT",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
]);

/**
 * Why `err` from `upstream` lets a fallback answer, or undefined when it does not. Only the upstream's own
 * outage counts: the mirror's own 429s (queues full) and an upstream offline by configuration do not.
 */
export function fallbackReason(err: unknown, upstream: string): FallbackReason | undefined {
  if (!(err instanceof RegistryError)) return undefined;
  const detail = (err.detail ?? {}) as {
    upstream?: unknown;
    status?: unknown;
    timeout?: unknown;
    code?: unknown;
    offline?: unknown;
  };
  if (detail.upstream !== upstream || detail.offline === true) return undefined;
  if (err.code === "TOOMANYREQUESTS") return detail.status === 429 ? "ratelimited" : undefined;
  if (err.code !== "UNAVAILABLE") return undefined;
  if (detail.timeout !== undefined || (typeof detail.code === "string" && TIMEOUT_CODES.has(detail.code)))
    return "timeout";
  return "down";
}

export interface FallbackAnswer<T> {
  value: T;
  /** The fallback upstream that answered; undefined when the request's own upstream did. */
  source: string | undefined;
}

export class UpstreamFallbacks {
  private readonly byName: ReadonlyMap<string, UpstreamClient>;
  private readonly permits: (upstream: string, repo: string) => boolean;
  private readonly metrics: Metrics | undefined;

  constructor(opts: {
    upstreams: readonly UpstreamClient[];
    /** Whether the upstream's `repositories` rules let `repo` be pulled through it (access-policy.ts). */
    permits: (upstream: string, repo: string) => boolean;
    metrics?: Metrics;
  }) {
    this.byName = new Map(opts.upstreams.map((u) => [u.name, u]));
    this.permits = opts.permits;
    this.metrics = opts.metrics;
  }

  /** Runs `work` for the request's upstream, then, if that fails with a fallback reason, for each fallback in order. */
  async run<T>(
    target: ResolvedRepository<UpstreamClient>,
    work: (target: ResolvedRepository<UpstreamClient>) => Promise<T>,
  ): Promise<FallbackAnswer<T>> {
    try {
      return { value: await work(target), source: undefined };
    } catch (err) {
      const primary = target.upstream;
      const reason = fallbackReason(err, primary.name);
      if (reason === undefined || primary.config.fallbacks.length === 0) throw err;
      for (const name of primary.config.fallbacks) {
        const fallback = this.byName.get(name);
        if (fallback === undefined || fallback.config.offline) continue;
        const repo = repositoryFor(fallback, target.repo);
        if (repo === undefined || !this.permits(fallback.name, repo)) continue;
        try {
          const value = await work({ upstream: fallback, repo });
          this.metrics?.upstreamFallbacks.inc({ upstream: primary.name, fallback: fallback.name, reason });
          return { value, source: fallback.name };
        } catch {
          // That fallback could not answer either (or does not have it): the next one may.
        }
      }
      throw err;
    }
  }
}

/**
 * The repository as `fallback` names it: the same name, with the fallback's library prefix on a single
 * component (`busybox` of an upstream without a prefix is `library/busybox` on Docker Hub); a name the prefix
 * would make invalid has none.
 */
function repositoryFor(fallback: UpstreamClient, repo: string): string | undefined {
  const prefix = fallback.config.libraryPrefix;
  const name = prefix !== null && !repo.includes("/") ? `${prefix}/${repo}` : repo;
  return isValidName(name) ? name : undefined;
}
