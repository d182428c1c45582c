/**
 * The one place where upstream failures become OCI errors: by HTTP status for answers, by undici/Node error
 * code for transport failures. Upstream error bodies are read with a byte cap, and only their OCI error codes
 * are passed on (as `detail`), never arbitrary upstream text.
 */
import type { Readable } from "node:stream";
import { RegistryError, type ErrorCode } from "../oci/errors.ts";
import { readCappedBody } from "./response-body.ts";

/** Transport failures that mean "the upstream could not be reached or did not answer in time". */
const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EAI_AGAIN",
  "ETIMEDOUT",
  "EPIPE",
  "UND_ERR_CONNECT_TIMEOUT",
  "UND_ERR_HEADERS_TIMEOUT",
  "UND_ERR_BODY_TIMEOUT",
  "UND_ERR_SOCKET",
  "UND_ERR_CLOSED",
  "UND_ERR_DESTROYED",
]);

const ERROR_BODY_CAP = 16 * 1024;

/** Maps a non-success upstream answer. `notFound` is the code a 404 means for this request. */
export async function upstreamStatusError(
  upstream: string,
  status: number,
  headers: Record<string, string | string[] | undefined>,
  body: Readable,
  notFound: ErrorCode,
): Promise<RegistryError> {
  const upstreamCodes = await readErrorCodes(body);
  const detail = { upstream, status, ...(upstreamCodes.length > 0 ? { upstreamErrors: upstreamCodes } : {}) };
  if (status === 404) return new RegistryError(notFound, undefined, { detail });
  if (status === 401)
    return new RegistryError("UNAUTHORIZED", `upstream ${upstream} requires authentication`, { detail });
  if (status === 403) return new RegistryError("DENIED", `upstream ${upstream} denied access`, { detail });
  // A rate limit or a temporary unavailability is passed on as such, with the upstream's Retry-After: a client
  // that waits as long as the upstream asked is not one to answer 502 (a fault of the upstream, not of time).
  const retryAfter = headerValue(headers, "retry-after");
  const retryHeaders: Record<string, string> = retryAfter !== undefined ? { "Retry-After": retryAfter } : {};
  if (status === 429)
    return new RegistryError("TOOMANYREQUESTS", `upstream ${upstream} is rate limiting`, {
      detail,
      headers: retryHeaders,
    });
  if (status === 503)
    return new RegistryError("UNAVAILABLE", `upstream ${upstream} answered ${status}`, {
      detail,
      headers: retryHeaders,
    });
  return new RegistryError("UPSTREAM_ERROR", `upstream ${upstream} answered ${status}`, { detail });
}

/**
 * Maps a thrown transport error (or passes a RegistryError through), whether it came before the response or
 * while reading its body. `service` names what failed in the message: the upstream itself by default, or e.g.
 * its token service.
 */
export function upstreamFailure(upstream: string, err: unknown, service = `upstream ${upstream}`): RegistryError {
  if (err instanceof RegistryError) return err;
  const code = (err as { code?: string } | undefined)?.code;
  const cause = err instanceof Error ? err : undefined;
  if (code !== undefined && UNAVAILABLE_CODES.has(code)) {
    return new RegistryError("UNAVAILABLE", `${service} is unavailable (${code})`, {
      detail: { upstream, code },
      cause,
    });
  }
  if ((err as Error | undefined)?.name === "AbortError" || code === "UND_ERR_ABORTED") {
    return new RegistryError("UNAVAILABLE", `request to ${service} was aborted`, { detail: { upstream }, cause });
  }
  return new RegistryError("UPSTREAM_ERROR", `request to ${service} failed`, { detail: { upstream, code }, cause });
}

export function headerValue(headers: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The OCI error codes of an error body, if it has any: an empty list for a body that is not an OCI error
 * envelope, breaks off, or is larger than ERROR_BODY_CAP (not read past the cap).
 */
async function readErrorCodes(body: Readable): Promise<string[]> {
  let bytes: Buffer;
  try {
    bytes = await readCappedBody(body, ERROR_BODY_CAP, () => new Error(`error body over ${ERROR_BODY_CAP} bytes`));
  } catch {
    return [];
  }
  try {
    const parsed = JSON.parse(bytes.toString("utf8")) as { errors?: Array<{ code?: unknown }> };
    return (parsed.errors ?? [])
      .map((e) => e.code)
      .filter((c): c is string => typeof c === "string")
      .slice(0, 5);
  } catch {
    return [];
  }
}

/**
 * Failures that say the upstream is unwell (unreachable, timing out, 5xx, rate-limiting), not that the content is
 * gone: what the cache already holds may still answer, marked stale.
 */
export function isUpstreamUnwell(err: unknown): err is RegistryError {
  return (
    err instanceof RegistryError &&
    (err.code === "UNAVAILABLE" || err.code === "UPSTREAM_ERROR" || err.code === "TOOMANYREQUESTS")
  );
}
