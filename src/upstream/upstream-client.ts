/**
 * The client for one configured upstream registry. It speaks the pull API and returns plain values or throws
 * RegistryError (mapped in upstream-errors.ts). Composed from undici parts and configuration, with no per-host
 * code:
 *  - an Agent with the upstream's connect/headers/body-idle timeouts, connection cap and TLS options, whose
 *    connector refuses non-public addresses for hosts reached by redirect (outbound-policy.ts);
 *  - redirects followed only where the upstream's configuration allows (outbound-policy.ts); Authorization
 *    never follows a redirect to another origin, so a blob GET sent to a CDN never carries credentials;
 *  - auth: on a 401 the challenge is answered (token-auth.ts) and the request retried once;
 *  - bounded retries with back-off for requests that failed before any response arrived;
 *  - an overall deadline (`timeouts.total`) on every exchange a client waits on, token fetch and body
 *    included: idle timeouts alone let an upstream trickling a byte at a time hold a request for hours;
 *  - a health state (upstream-health.ts) that fails requests fast while the upstream is down;
 *  - the latest `ratelimit-limit` / `ratelimit-remaining` values (Docker Hub sends them, HEAD included).
 * Every undici body is consumed or discarded on every path. Requests only ever go to the configured origin,
 * its token realm and the redirect targets its configuration allows.
 */
import { readFileSync } from "node:fs";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { Agent, type Dispatcher } from "./undici.ts";
import type { UpstreamConfig } from "../config/schema.ts";
import { timerDelay } from "../config/timer-delay.ts";
import { statusClass, type Metrics } from "../observability/metrics.ts";
import { RegistryError, type ErrorCode } from "../oci/errors.ts";
import { MediaType, UPSTREAM_MANIFEST_ACCEPT } from "../oci/media-types.ts";
import { isValidTag } from "../oci/reference.ts";
import { parseReferrersIndex, type ReferrerDescriptor } from "../oci/referrers.ts";
import { OutboundPolicy } from "./outbound-policy.ts";
import { UpstreamAuth } from "./token-auth.ts";
import { discardBody, readCappedBody } from "./response-body.ts";
import { headerValue, upstreamFailure, upstreamStatusError } from "./upstream-errors.ts";
import { UpstreamHealth } from "./upstream-health.ts";
import { parseWwwAuthenticate } from "./www-authenticate.ts";

/** What revalidation needs from a manifest HEAD: the digest the reference points at, when the upstream says. */
export interface ManifestHead {
  digest: string | undefined;
}

export interface FetchedManifest {
  bytes: Buffer;
  mediaType: string;
  /** The upstream's `Docker-Content-Digest`, when it sent one (to be checked against the bytes). */
  digest: string | undefined;
}

/** How the upstream answered `GET /v2/` (the API version check), for the start-up check. */
export interface BaseAnswer {
  status: number;
  /** The `Docker-Distribution-API-Version` header, which registries send on this answer (200 or 401). */
  apiVersion: string | undefined;
  /** The authentication scheme a 401 asks for ("Bearer", "Basic"), when it names one. */
  challenge: string | undefined;
}

export interface RateLimit {
  limit: number | undefined;
  remaining: number | undefined;
}

interface UpstreamResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

/** Transport failures worth retrying: nothing was received, so the request cannot have had an effect. */
const RETRYABLE = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE", "UND_ERR_SOCKET", "UND_ERR_CONNECT_TIMEOUT"]);
const RETRY_BASE_MS = 100;
/**
 * The most tag-list pages read from an upstream for one answer, whatever their size; the byte cap
 * (`limits.tagListMaxBytes`, over all pages) and `timeouts.total` bound the walk too.
 */
export const MAX_TAG_LIST_PAGES = 100;

export class UpstreamClient {
  readonly config: UpstreamConfig;
  readonly name: string;
  readonly health: UpstreamHealth;
  readonly auth: UpstreamAuth;
  /** Latest rate-limit headers seen from this upstream; undefined until one arrives. */
  rateLimit: RateLimit | undefined;
  private readonly url: URL;
  private readonly agent: Agent;
  private readonly policy: OutboundPolicy;
  private readonly metrics: Metrics | undefined;

  constructor(config: UpstreamConfig, opts: { now?: () => number; metrics?: Metrics } = {}) {
    this.metrics = opts.metrics;
    this.config = config;
    this.name = config.name;
    this.url = new URL(config.url);
    this.policy = new OutboundPolicy({
      upstream: config.name,
      url: config.url,
      authHosts: config.authHosts,
      redirectHosts: config.redirectHosts,
      allowPrivateRedirects: config.allowPrivateRedirects,
      maxRedirects: config.maxRedirects,
    });
    this.agent = new Agent({
      connections: config.maxConnections,
      connect: this.policy.connector({
        timeout: timerDelay(config.timeouts.connect),
        ...(config.tls.caFile !== undefined ? { ca: readFileSync(config.tls.caFile, "utf8") } : {}),
        rejectUnauthorized: !config.tls.insecure,
      }),
      headersTimeout: timerDelay(config.timeouts.headers),
      bodyTimeout: timerDelay(config.timeouts.bodyIdle),
      keepAliveTimeout: 30_000,
    });
    this.health = new UpstreamHealth({
      failureThreshold: config.health.failureThreshold,
      initialBackoffMs: config.health.initialBackoff,
      maxBackoffMs: config.health.maxBackoff,
      now: opts.now,
    });
    this.auth = new UpstreamAuth({
      upstream: config.name,
      policy: this.policy,
      credentials: config.credentials,
      dispatcher: this.agent,
      deadlineMs: config.timeouts.total,
      now: opts.now,
      metrics: opts.metrics,
    });
  }

  async headManifest(repo: string, reference: string): Promise<ManifestHead> {
    return this.withDeadline(undefined, async (signal) => {
      const res = await this.send(
        "HEAD",
        repo,
        `/v2/${repo}/manifests/${reference}`,
        { accept: UPSTREAM_MANIFEST_ACCEPT },
        signal,
      );
      await this.expectOk(res, "MANIFEST_UNKNOWN");
      discardBody(res.body);
      return { digest: headerValue(res.headers, "docker-content-digest") };
    });
  }

  async getManifest(repo: string, reference: string, maxBytes: number): Promise<FetchedManifest> {
    return this.withDeadline(undefined, async (signal) => {
      const res = await this.send(
        "GET",
        repo,
        `/v2/${repo}/manifests/${reference}`,
        { accept: UPSTREAM_MANIFEST_ACCEPT },
        signal,
      );
      await this.expectOk(res, "MANIFEST_UNKNOWN");
      const bytes = await this.readCapped(res.body, maxBytes, "manifest");
      this.metrics?.upstreamFetchedBytes.inc({ upstream: this.name, kind: "manifest" }, bytes.length);
      const mediaType = mediaTypeOf(res.headers);
      if (mediaType === undefined)
        throw new RegistryError("UPSTREAM_ERROR", `upstream ${this.name} sent a manifest without Content-Type`);
      // Only a manifest type is relayed: not whatever JSON (or HTML) an upstream, or a host it redirected to, sent.
      if (!MANIFEST_TYPES.has(mediaType)) {
        throw new RegistryError(
          "UPSTREAM_ERROR",
          `upstream ${this.name} sent a manifest of type ${mediaType.slice(0, 100)}, which is not a manifest type`,
        );
      }
      return { bytes, mediaType, digest: headerValue(res.headers, "docker-content-digest") };
    });
  }

  /** Confirms a blob exists upstream under `repo`; resolves to its size when the upstream says. */
  async headBlob(repo: string, digest: string): Promise<{ size: number | undefined }> {
    return this.withDeadline(undefined, async (signal) => {
      const res = await this.send("HEAD", repo, `/v2/${repo}/blobs/${digest}`, {}, signal);
      await this.expectOk(res, "BLOB_UNKNOWN");
      discardBody(res.body);
      const length = headerValue(res.headers, "content-length");
      return { size: length !== undefined ? Number(length) : undefined };
    });
  }

  /**
   * Opens a blob download; the caller owns (and must consume or destroy) the body. The deadline covers the
   * exchange up to the body (token fetch, redirects, an error body); the body itself is the caller's to bound.
   */
  async getBlob(
    repo: string,
    digest: string,
    signal: AbortSignal,
  ): Promise<{ size: number | undefined; body: Readable }> {
    return this.withDeadline(signal, async (exchange) => {
      const res = await this.send("GET", repo, `/v2/${repo}/blobs/${digest}`, {}, exchange);
      await this.expectOk(res, "BLOB_UNKNOWN");
      const length = headerValue(res.headers, "content-length");
      return { size: length !== undefined ? Number(length) : undefined, body: res.body };
    });
  }

  /**
   * The whole tag list of `repo`: `GET /v2/<repo>/tags/list`, then the pages its `Link rel="next"` headers lead
   * to, in the upstream's order (the caller sorts and pages). Only a tag list (`{"name": ..., "tags": [...]}` with
   * valid tags) is accepted. A next-page link only supplies `n` and `last`: it must stay on this upstream's origin
   * and this repository's path (anything else is UPSTREAM_ERROR), and the request is built here as every other
   * one is, so no host or path ever comes from the header. Bounded: at most MAX_TAG_LIST_PAGES pages, `maxBytes`
   * for all pages together, and one `timeouts.total` deadline for the whole walk.
   */
  async getTags(repo: string, maxBytes: number): Promise<string[]> {
    return this.withDeadline(undefined, async (signal) => {
      const path = `/v2/${repo}/tags/list`;
      const tags: string[] = [];
      let budget = maxBytes;
      let query = "";
      const seen = new Set<string>();
      for (let page = 1; ; page++) {
        const res = await this.send("GET", repo, `${path}${query}`, { accept: "application/json" }, signal);
        await this.expectOk(res, "NAME_UNKNOWN");
        const body = await this.readCapped(res.body, budget, "tag list");
        budget -= body.length;
        this.metrics?.upstreamFetchedBytes.inc({ upstream: this.name, kind: "tags" }, body.length);
        const pageTags = parseTagList(body);
        if (pageTags === undefined)
          throw new RegistryError(
            "UPSTREAM_ERROR",
            `upstream ${this.name} sent a tag list that is not one (expected {"name": ..., "tags": [...]})`,
          );
        tags.push(...pageTags);
        const next = this.nextTagsQuery(headerValue(res.headers, "link"), path);
        if (next === undefined) return tags;
        // A link back to a page already read would go round in circles until the page cap: refused at once.
        if (seen.has(next)) throw this.badTagsLink(`a next-page link that repeats an earlier page`);
        seen.add(next);
        if (page >= MAX_TAG_LIST_PAGES)
          throw new RegistryError(
            "UPSTREAM_ERROR",
            `upstream ${this.name} sent a tag list of more than ${MAX_TAG_LIST_PAGES} pages, the most the mirror reads`,
            { detail: { upstream: this.name } },
          );
        query = next;
      }
    });
  }

  /**
   * The query (`?n=..&last=..`) of the next tag-list page a `Link` header names, or undefined when it names none.
   * The link may be relative or absolute, but only on this upstream's origin and `path`; its `n` and `last` must
   * be a number and a tag.
   */
  private nextTagsQuery(link: string | undefined, path: string): string | undefined {
    if (link === undefined) return undefined;
    const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
    if (!m) return undefined;
    const target = URL.parse(m[1]!, new URL(path, this.url).href);
    if (target === null || target.origin !== this.url.origin || target.pathname !== path)
      throw this.badTagsLink(`a next-page link off its own origin and repository path`);
    const params = new URLSearchParams();
    const n = target.searchParams.get("n");
    const last = target.searchParams.get("last");
    if (n !== null) {
      if (!/^\d{1,9}$/.test(n)) throw this.badTagsLink("a next-page link whose n is not a number");
      params.set("n", n);
    }
    if (last === null || !isValidTag(last)) throw this.badTagsLink("a next-page link whose last is not a tag");
    params.set("last", last);
    return `?${params.toString()}`;
  }

  private badTagsLink(what: string): RegistryError {
    return new RegistryError("UPSTREAM_ERROR", `upstream ${this.name} sent ${what} on tags/list`, {
      detail: { upstream: this.name },
    });
  }

  /**
   * `GET /v2/<repo>/referrers/<digest>` (OCI 1.1), unfiltered: the caller keeps one list per subject and filters
   * it itself. A 404 is the upstream saying it has no referrers API (distribution 2.8 answers any unknown route
   * so; the spec forbids a registry with the API to answer 404 for a digest it knows nothing of), for the caller
   * to fall back to the tag schema. Only a referrers index (oci/referrers.ts) is accepted. A paged answer
   * (`Link: <…>; rel="next"`) is followed, up to MAX_REFERRER_PAGES pages, only to the same endpoint of the same
   * origin, and the pages together are held to `maxBytes` (the manifest cap): a list cut short would hide a
   * signature, so a next page that cannot be followed fails the whole answer.
   */
  async getReferrers(
    repo: string,
    digest: string,
    maxBytes: number,
  ): Promise<{ kind: "index"; referrers: ReferrerDescriptor[] } | { kind: "no-api" }> {
    return this.withDeadline(undefined, async (signal) => {
      const endpoint = `/v2/${repo}/referrers/${digest}`;
      const referrers: ReferrerDescriptor[] = [];
      let next: string | undefined = endpoint;
      let budget = maxBytes;
      for (let page = 0; next !== undefined; page++) {
        const refuse = (why: string) =>
          new RegistryError("UPSTREAM_ERROR", `upstream ${this.name} answered the referrers of ${digest} ${why}`, {
            detail: { upstream: this.name },
          });
        if (page === MAX_REFERRER_PAGES) throw refuse(`in more than ${MAX_REFERRER_PAGES} pages`);
        const res = await this.send("GET", repo, next, { accept: MediaType.ociIndex }, signal);
        if (res.statusCode === 404 && page === 0) {
          discardBody(res.body);
          return { kind: "no-api" };
        }
        await this.expectOk(res, "MANIFEST_UNKNOWN");
        const bytes = await this.readCapped(res.body, budget, "referrers list");
        budget -= bytes.length;
        this.metrics?.upstreamFetchedBytes.inc({ upstream: this.name, kind: "referrers" }, bytes.length);
        const mediaType = mediaTypeOf(res.headers);
        const list = mediaType === MediaType.ociIndex ? parseReferrersIndex(bytes) : undefined;
        if (list === undefined)
          throw refuse(
            `with something that is not an OCI image index of descriptors (${(mediaType ?? "no Content-Type").slice(0, 100)})`,
          );
        referrers.push(...list);
        const following = this.nextPage(headerValue(res.headers, "link"), endpoint);
        if (following === null) throw refuse("with a next page (Link) elsewhere than its referrers endpoint");
        next = following;
      }
      return { kind: "index", referrers };
    });
  }

  /**
   * The path and query of the `rel="next"` page a Link header names: undefined without one, null when it points
   * anywhere but `endpoint` on this upstream's origin (a client-visible answer never makes the mirror call an
   * address the configuration does not name).
   */
  private nextPage(link: string | undefined, endpoint: string): string | undefined | null {
    const m = link === undefined ? null : /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
    if (!m) return undefined;
    const base = new URL(endpoint, this.url);
    const target = URL.parse(m[1]!, base.href);
    if (target === null || target.origin !== this.url.origin) return null;
    if (target.pathname !== base.pathname) return null;
    return `${target.pathname}${target.search}`;
  }

  /**
   * Closes the pool. Exchanges still in flight are cut off, not waited for: at shutdown the fills had their
   * grace already (a graceful close would wait for a stalled download until its idle or fill timeout).
   */
  /**
   * `GET /v2/`, as clients do first: one request with the outbound policy (redirects as configured), without
   * credentials, retries, the health state or metrics; a 401 is an answer, not a challenge to answer. Throws the
   * RegistryError a pull would see for a transport failure or a refused redirect.
   */
  async checkBase(signal: AbortSignal): Promise<BaseAnswer> {
    let res: Dispatcher.ResponseData;
    try {
      res = await this.policy.request(this.agent, {
        url: new URL("/v2/", this.url),
        method: "GET",
        headers: { "user-agent": "registry-mirror" },
        authorization: undefined,
        signal,
      });
    } catch (err) {
      throw upstreamFailure(this.name, err);
    }
    discardBody(res.body);
    const challenge = headerValue(res.headers, "www-authenticate");
    return {
      status: res.statusCode,
      apiVersion: headerValue(res.headers, "docker-distribution-api-version"),
      challenge: res.statusCode === 401 ? challenge?.trim().split(/\s/, 1)[0] || undefined : undefined,
    };
  }

  async close(): Promise<void> {
    await this.agent.destroy();
  }

  /**
   * Runs one exchange under the upstream's overall deadline (`timeouts.total`). `work` passes the signal it is
   * given to every request (and so to every body it reads); when the deadline passes, whatever is in flight is
   * aborted and the exchange fails with UNAVAILABLE naming the deadline. The deadline ends when `work` returns:
   * a body handed on to the caller (a blob) is not cut off by it.
   */
  private async withDeadline<T>(
    signal: AbortSignal | undefined,
    work: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const ms = this.config.timeouts.total;
    const deadline = new AbortController();
    const timer = setTimeout(() => {
      deadline.abort(
        new RegistryError(
          "UNAVAILABLE",
          `upstream ${this.name} did not finish answering within ${ms / 1000} s (timeouts.total)`,
          {
            detail: { upstream: this.name, timeout: "total" },
          },
        ),
      );
    }, timerDelay(ms));
    try {
      return await work(signal === undefined ? deadline.signal : AbortSignal.any([signal, deadline.signal]));
    } catch (err) {
      // Whatever the abort broke (a body read, an error body swallowed into a status error), the deadline is the cause.
      throw deadline.signal.aborted ? (deadline.signal.reason as RegistryError) : err;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Sends one request: fails fast while the upstream is marked down, retries transport failures that happened
   * before any response, and answers one 401 challenge. Returns any response that arrived (callers map
   * statuses); throws RegistryError for transport failures.
   */
  private async send(
    method: "GET" | "HEAD",
    repo: string,
    path: string,
    headers: Record<string, string>,
    signal: AbortSignal,
  ): Promise<UpstreamResponse> {
    if (this.config.offline) {
      throw new RegistryError(
        "UNAVAILABLE",
        `upstream ${this.name} is offline by configuration; only cached content is served`,
        { detail: { upstream: this.name, offline: true } },
      );
    }
    if (!this.health.allow()) {
      throw new RegistryError(
        "UNAVAILABLE",
        `upstream ${this.name} is marked down after repeated failures; next attempt in ${Math.ceil(this.health.retryInMs() / 1000)} s`,
        {
          detail: { upstream: this.name },
        },
      );
    }
    const scope = `repository:${repo}:pull`;
    let answeredChallenge = false;
    for (let attempt = 0; ; attempt++) {
      const authorization = this.auth.headerFor(scope);
      let res: Dispatcher.ResponseData;
      const started = performance.now();
      try {
        res = await this.policy.request(this.agent, {
          url: new URL(path, this.url),
          method,
          headers: { "user-agent": "registry-mirror", ...headers },
          authorization,
          signal,
        });
      } catch (err) {
        this.observe(method, undefined, started);
        if (err instanceof RegistryError && err.code === "UPSTREAM_ERROR") {
          this.health.success(); // it answered, with a redirect the policy refuses: a misbehaviour, not an outage
          throw err;
        }
        const code = (err as { code?: string }).code;
        if (attempt < this.config.retries && code !== undefined && RETRYABLE.has(code) && !signal.aborted) {
          // An abort during the pause makes the next attempt fail at once, with the abort's reason.
          await sleep(RETRY_BASE_MS * 2 ** attempt * (0.5 + Math.random()), undefined, { signal }).catch(
            () => undefined,
          );
          continue;
        }
        const failure = upstreamFailure(this.name, err);
        this.health.failure(failure.message);
        throw failure;
      }
      this.observe(method, res.statusCode, started);
      this.recordRateLimit(res.headers);
      if (res.statusCode === 401 && !answeredChallenge) {
        answeredChallenge = true;
        const challenge = parseWwwAuthenticate(res.headers["www-authenticate"]);
        discardBody(res.body);
        if (authorization !== undefined) this.auth.forget(scope);
        this.health.success(); // it answered: auth trouble is not an outage
        await this.auth.answer(challenge, scope, signal);
        attempt--; // the challenge round trip is not a retry
        continue;
      }
      if (res.statusCode >= 500) this.health.failure(`${method} answered ${res.statusCode}`);
      else this.health.success();
      return { statusCode: res.statusCode, headers: res.headers, body: res.body };
    }
  }

  private observe(method: string, status: number | undefined, started: number): void {
    if (!this.metrics) return;
    const labels = { upstream: this.name, method, status_class: statusClass(status) };
    this.metrics.upstreamRequests.inc(labels);
    this.metrics.upstreamDuration.observe(labels, (performance.now() - started) / 1000);
  }

  private recordRateLimit(headers: Record<string, string | string[] | undefined>): void {
    const limit = parseRateLimit(headerValue(headers, "ratelimit-limit"));
    const remaining = parseRateLimit(headerValue(headers, "ratelimit-remaining"));
    if (limit !== undefined || remaining !== undefined) this.rateLimit = { limit, remaining };
  }

  private async expectOk(res: UpstreamResponse, notFound: ErrorCode): Promise<void> {
    if (res.statusCode === 200) return;
    throw await upstreamStatusError(this.name, res.statusCode, res.headers, res.body, notFound);
  }

  private async readCapped(body: Readable, maxBytes: number, what: string): Promise<Buffer> {
    try {
      return await readCappedBody(
        body,
        maxBytes,
        () =>
          new RegistryError(
            "UPSTREAM_ERROR",
            `upstream ${this.name} sent a ${what} larger than the limit of ${maxBytes} bytes`,
          ),
      );
    } catch (err) {
      throw upstreamFailure(this.name, err);
    }
  }
}

const MANIFEST_TYPES: ReadonlySet<string> = new Set(Object.values(MediaType));

/** The most pages of one referrers answer followed (each also counts against the manifest cap). */
const MAX_REFERRER_PAGES = 16;

/** The tags of a `tags/list` body, or undefined when it is not one. `"tags": null` (no tags) is an empty list. */
function parseTagList(body: Buffer): string[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch {
    return undefined;
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) return undefined;
  const { name, tags } = parsed as { name?: unknown; tags?: unknown };
  if (typeof name !== "string") return undefined;
  if (tags === null) return [];
  if (!Array.isArray(tags) || !tags.every((t): t is string => typeof t === "string" && isValidTag(t))) return undefined;
  return tags;
}

/** `100;w=21600` → 100 (Docker Hub's format: the count, then the window). */
function parseRateLimit(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number.parseInt(value, 10);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

function mediaTypeOf(headers: Record<string, string | string[] | undefined>): string | undefined {
  return headerValue(headers, "content-type")?.split(";")[0]?.trim() || undefined;
}
