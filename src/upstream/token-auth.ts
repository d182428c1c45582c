/**
 * Answers upstream auth challenges (the Docker token flow, and Basic), as data-driven as the registries are:
 * no per-host code. On a 401 the challenge says where to get a token; the realm's host must be the upstream's
 * own or one listed in its `authHosts` (outbound-policy.ts), so an upstream cannot make the mirror send
 * credentials anywhere else.
 * Tokens are cached per scope until shortly before they expire, and concurrent requests needing the same token
 * share one fetch. That fetch has a deadline of its own, and is cancelled early only when every request waiting
 * for it has gone: one caller leaving (its client disconnected, its own deadline passed) never fails the
 * others. Credentials are re-read on every token fetch (Kubernetes rotates mounted secrets) and never
 * appear in logs, errors or metrics.
 */
import { readFile } from "node:fs/promises";
import { LRUCache } from "lru-cache";
import type { Dispatcher } from "undici";
import { timerDelay } from "../config/timer-delay.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { OutboundPolicy } from "./outbound-policy.ts";
import { discardBody, readCappedBody } from "./response-body.ts";
import { upstreamFailure } from "./upstream-errors.ts";
import type { Challenge } from "./www-authenticate.ts";

export interface Credentials {
  username: string;
  password: string;
}

export interface CredentialsConfig {
  username?: string | undefined;
  usernameFile?: string | undefined;
  password?: string | undefined;
  passwordFile?: string | undefined;
}

/** Tokens are refreshed this long before the expiry the token server announced (or half the lifetime if shorter). */
const EXPIRY_MARGIN_MS = 30_000;
/** The token spec's default lifetime when `expires_in` is absent. */
const DEFAULT_TOKEN_LIFETIME_S = 60;
const TOKEN_BODY_CAP = 64 * 1024;

/** One token fetch in flight, shared by the requests `waiting` for it. */
interface TokenFetch {
  promise: Promise<string>;
  cancel: AbortController;
  waiting: number;
  settled: boolean;
}

export class UpstreamAuth {
  private readonly upstream: string;
  private readonly policy: OutboundPolicy;
  private readonly credentials: CredentialsConfig | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly now: () => number;
  private readonly headers: LRUCache<string, { value: string; expiresAt: number }>;
  private readonly fetching = new Map<string, TokenFetch>();
  private readonly deadlineMs: number;
  /** Token requests sent so far (tests assert reuse). */
  tokenRequests = 0;
  private readonly metrics: Metrics | undefined;

  constructor(opts: {
    upstream: string;
    /** Which realms may be asked, and where their redirects may lead. */
    policy: OutboundPolicy;
    credentials: CredentialsConfig | undefined;
    dispatcher: Dispatcher;
    /** The longest a token fetch may take, body included (the upstream's `timeouts.total`). */
    deadlineMs: number;
    now?: () => number;
    metrics?: Metrics | undefined;
  }) {
    this.deadlineMs = opts.deadlineMs;
    this.metrics = opts.metrics;
    this.upstream = opts.upstream;
    this.policy = opts.policy;
    this.credentials = opts.credentials;
    this.dispatcher = opts.dispatcher;
    this.now = opts.now ?? Date.now;
    this.headers = new LRUCache({ max: 10_000 });
  }

  /** The Authorization header already known for `scope`, if it is still valid. */
  headerFor(scope: string): string | undefined {
    const cached = this.headers.get(scope) ?? this.headers.get("*");
    if (cached && cached.expiresAt > this.now()) return cached.value;
    return undefined;
  }

  /**
   * After a 401: obtains a fresh Authorization header for the challenge, or throws UNAUTHORIZED when nothing
   * can satisfy it. Concurrent calls for the same scope share one token fetch. When `signal` aborts, this
   * call gives up with its reason; the fetch goes on for the others still waiting.
   */
  async answer(challenge: Challenge | undefined, scope: string, signal?: AbortSignal): Promise<string> {
    if (challenge === undefined)
      throw new RegistryError(
        "UNAUTHORIZED",
        `upstream ${this.upstream} requires authentication but sent no usable challenge`,
      );
    if (challenge.scheme === "basic") {
      const creds = await this.readCredentials();
      if (!creds)
        throw new RegistryError(
          "UNAUTHORIZED",
          `upstream ${this.upstream} requires credentials, and none are configured`,
        );
      const value = basic(creds);
      this.headers.set("*", { value, expiresAt: Number.MAX_SAFE_INTEGER });
      return value;
    }
    if (signal?.aborted) throw signal.reason;
    const inflight = this.fetching.get(scope) ?? this.startFetch(challenge, scope);
    inflight.waiting++;
    try {
      return await untilAborted(inflight.promise, signal);
    } finally {
      inflight.waiting--;
      if (inflight.waiting === 0 && !inflight.settled) {
        // Nobody wants this token any more: stop fetching it. A later request starts afresh.
        this.fetching.delete(scope);
        inflight.cancel.abort(
          new RegistryError(
            "UNAVAILABLE",
            `token fetch from upstream ${this.upstream} abandoned: every request waiting for it went away`,
          ),
        );
      }
    }
  }

  /** Starts the one fetch of a token for `scope`, under its own deadline, cancellable through `cancel`. */
  private startFetch(challenge: Challenge, scope: string): TokenFetch {
    const cancel = new AbortController();
    const timer = setTimeout(() => {
      cancel.abort(
        new RegistryError(
          "UNAVAILABLE",
          `token service of upstream ${this.upstream} did not finish answering within ${this.deadlineMs / 1000} s (timeouts.total)`,
          {
            detail: { upstream: this.upstream, timeout: "total" },
          },
        ),
      );
    }, timerDelay(this.deadlineMs));
    const promise = this.fetchToken(challenge, scope, cancel.signal)
      .then(
        (header) => {
          this.metrics?.tokenRequests.inc({ upstream: this.upstream, result: "ok" });
          return header;
        },
        (err: unknown) => {
          this.metrics?.tokenRequests.inc({ upstream: this.upstream, result: "error" });
          // The deadline is the cause, whatever its abort broke on the way.
          throw cancel.signal.aborted ? cancel.signal.reason : err;
        },
      )
      .finally(() => {
        inflight.settled = true;
        clearTimeout(timer);
        if (this.fetching.get(scope) === inflight) this.fetching.delete(scope);
      });
    const inflight: TokenFetch = { promise, cancel, waiting: 0, settled: false };
    // A fetch every waiter left ends rejected with nobody awaiting it: that is not an unhandled rejection.
    promise.catch(() => undefined);
    this.fetching.set(scope, inflight);
    return inflight;
  }

  /** Forgets what we sent for `scope` after the upstream refused it anyway. */
  forget(scope: string): void {
    this.headers.delete(scope);
    this.headers.delete("*");
  }

  private async fetchToken(challenge: Challenge, scope: string, signal: AbortSignal): Promise<string> {
    const realm = challenge.params.realm;
    let url: URL;
    try {
      url = new URL(realm ?? "");
    } catch {
      throw new RegistryError(
        "UPSTREAM_ERROR",
        `upstream ${this.upstream} sent a bearer challenge without a valid realm`,
      );
    }
    this.policy.checkRealm(url);
    if (challenge.params.service !== undefined) url.searchParams.set("service", challenge.params.service);
    const wanted = challenge.params.scope ?? (scope === "" ? undefined : scope);
    if (wanted !== undefined) url.searchParams.set("scope", wanted);
    const creds = await this.readCredentials();
    const requested = this.now();
    this.tokenRequests++;
    // Transport failures, before the answer or while reading its body, are mapped like every upstream request's.
    const service = `token service of upstream ${this.upstream}`;
    let res: Dispatcher.ResponseData;
    try {
      res = await this.policy.request(this.dispatcher, {
        url,
        method: "GET",
        headers: { accept: "application/json", "user-agent": "registry-mirror" },
        authorization: creds ? basic(creds) : undefined,
        signal,
      });
    } catch (err) {
      throw upstreamFailure(this.upstream, err, service);
    }
    if (res.statusCode !== 200) {
      discardBody(res.body);
      const code = res.statusCode === 401 || res.statusCode === 403 ? "UNAUTHORIZED" : "UPSTREAM_ERROR";
      throw new RegistryError(
        code,
        `${service} answered ${res.statusCode}${creds ? " (check the configured credentials)" : ""}`,
        {
          detail: { upstream: this.upstream, status: res.statusCode },
        },
      );
    }
    let body: Buffer;
    try {
      body = await readCappedBody(
        res.body,
        TOKEN_BODY_CAP,
        () => new RegistryError("UPSTREAM_ERROR", `${service} sent a response larger than ${TOKEN_BODY_CAP} bytes`),
      );
    } catch (err) {
      throw upstreamFailure(this.upstream, err, service);
    }
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown; issued_at?: unknown };
    try {
      parsed = JSON.parse(body.toString("utf8")) as typeof parsed;
    } catch {
      throw new RegistryError("UPSTREAM_ERROR", `${service} sent invalid JSON`);
    }
    const token =
      typeof parsed.token === "string"
        ? parsed.token
        : typeof parsed.access_token === "string"
          ? parsed.access_token
          : undefined;
    if (!token) throw new RegistryError("UPSTREAM_ERROR", `${service} sent no token`);
    const lifetimeMs =
      (typeof parsed.expires_in === "number" && parsed.expires_in > 0 ? parsed.expires_in : DEFAULT_TOKEN_LIFETIME_S) *
      1000;
    const value = `Bearer ${token}`;
    this.headers.set(scope, { value, expiresAt: requested + lifetimeMs - Math.min(EXPIRY_MARGIN_MS, lifetimeMs / 2) });
    return value;
  }

  private async readCredentials(): Promise<Credentials | undefined> {
    const c = this.credentials;
    if (!c) return undefined;
    const username = c.username ?? (c.usernameFile ? (await readFile(c.usernameFile, "utf8")).trim() : undefined);
    const password =
      c.password ?? (c.passwordFile ? (await readFile(c.passwordFile, "utf8")).replace(/\r?\n$/, "") : undefined);
    if (username === undefined || password === undefined) return undefined;
    return { username, password };
  }
}

/** `promise`, or a rejection with `signal`'s reason as soon as it aborts (the promise itself runs on). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise;
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

function basic(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString("base64")}`;
}
