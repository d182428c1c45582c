/**
 * The start-up check of each upstream: once the mirror listens, one `GET /v2/` to every upstream that is not
 * offline, with the answer logged. It tells the operator in the first minute what a failed pull would tell them
 * later: an upstream that cannot be reached (DNS, firewall, proxy, TLS), or a URL that is not a registry's API
 * endpoint (`https://docker.io` instead of `https://registry-1.docker.io`). It also leaves a connection open in
 * the upstream's pool, with its TLS session and HTTP parser ready, so the first pull after a start does not pay
 * for them.
 *
 * The check never holds the mirror back: it runs after `listen()`, a failure is a warn line and nothing else
 * (cached content is served either way, and the upstream's health state is left to real pulls), and shutdown
 * aborts a check still waiting. It is not counted in the upstream request metrics, which count pulls' traffic.
 */
import type { Logger } from "pino";
import { RegistryError } from "../oci/errors.ts";
import type { UpstreamClient } from "./upstream-client.ts";

/** The longest a check waits for an answer (or less, with a shorter `timeouts.total`). */
export const CHECK_TIMEOUT_MS = 30_000;

/** Checks every upstream that is not offline, at once; resolves when all have ended (it never rejects). */
export async function checkUpstreams(
  upstreams: readonly UpstreamClient[],
  log: Logger,
  signal: AbortSignal,
): Promise<void> {
  await Promise.all(upstreams.filter((u) => !u.config.offline).map((u) => checkUpstream(u, log, signal)));
}

async function checkUpstream(upstream: UpstreamClient, log: Logger, stop: AbortSignal): Promise<void> {
  const timeoutMs = Math.min(CHECK_TIMEOUT_MS, upstream.config.timeouts.total);
  const timeout = AbortSignal.timeout(timeoutMs);
  const started = performance.now();
  const fields = { upstream: upstream.name, url: upstream.config.url };
  try {
    const answer = await upstream.checkBase(AbortSignal.any([stop, timeout]));
    const ms = Math.round(performance.now() - started);
    const { status } = answer;
    if (status === 200 || status === 401) {
      log.info(
        {
          ...fields,
          status,
          ms,
          // Docker-Distribution-API-Version (registry/2.0), which distribution-based registries send.
          ...(answer.apiVersion !== undefined ? { apiVersion: answer.apiVersion } : {}),
          ...(answer.challenge !== undefined ? { auth: answer.challenge } : {}),
        },
        "upstream answers",
      );
    } else if (status === 404) {
      log.warn(
        { ...fields, status, ms },
        "upstream answered 404 to GET /v2/: its url is not a registry's API endpoint, so pulls through it will fail",
      );
    } else {
      log.warn({ ...fields, status, ms }, `upstream answered ${status} to GET /v2/`);
    }
  } catch (err) {
    if (stop.aborted) return; // shutting down: nothing to tell
    const reason = timeout.aborted ? `no answer within ${timeoutMs} ms` : describe(err);
    log.warn(
      { ...fields, reason },
      "upstream not reachable at start-up: content not in the cache cannot be fetched from it until it answers",
    );
  }
}

/** The error and what caused it ("… failed: unable to verify the first certificate"), in one line. */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err instanceof RegistryError && err.cause instanceof Error ? err.cause.message : undefined;
  return cause !== undefined && cause !== "" && !err.message.includes(cause) ? `${err.message}: ${cause}` : err.message;
}
