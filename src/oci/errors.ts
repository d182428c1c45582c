/**
 * The one table of OCI distribution error codes this mirror answers with, and the one renderer of the
 * `{"errors":[...]}` envelope.
 * Spec: https://github.com/opencontainers/distribution-spec/blob/main/spec.md#error-codes
 * Statuses follow the reference registry (distribution `registry/api/errcode/register.go` and
 * `registry/api/v2/errors.go`), plus the two the spec leaves open that a mirror needs (upstream failures).
 */

export const ERROR_TABLE = {
  BLOB_UNKNOWN: { status: 404, message: "blob unknown to registry" },
  BLOB_UPLOAD_INVALID: { status: 400, message: "blob upload invalid" },
  BLOB_UPLOAD_UNKNOWN: { status: 404, message: "blob upload unknown to registry" },
  DIGEST_INVALID: { status: 400, message: "provided digest did not match uploaded content" },
  MANIFEST_BLOB_UNKNOWN: { status: 404, message: "manifest references a manifest or blob unknown to registry" },
  MANIFEST_INVALID: { status: 400, message: "manifest invalid" },
  MANIFEST_UNKNOWN: { status: 404, message: "manifest unknown to registry" },
  NAME_INVALID: { status: 400, message: "invalid repository name" },
  NAME_UNKNOWN: { status: 404, message: "repository name not known to registry" },
  SIZE_INVALID: { status: 400, message: "provided length did not match content length" },
  /** Not in the spec's list; the reference registry's code for a malformed tag. */
  TAG_INVALID: { status: 400, message: "invalid tag" },
  UNAUTHORIZED: { status: 401, message: "authentication required" },
  DENIED: { status: 403, message: "requested access to the resource is denied" },
  UNSUPPORTED: { status: 405, message: "the operation is unsupported" },
  TOOMANYREQUESTS: { status: 429, message: "too many requests" },
  RANGE_INVALID: { status: 416, message: "requested range not satisfiable" },
  /** The upstream answered with something we refuse to pass on (bad digest, oversized manifest, 5xx). */
  UPSTREAM_ERROR: { status: 502, message: "the upstream registry returned an invalid response" },
  /** The upstream could not be reached in time. */
  UNAVAILABLE: { status: 503, message: "the upstream registry is unavailable" },
  UNKNOWN: { status: 500, message: "unknown error" },
} as const satisfies Record<string, { status: number; message: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

/** An error that the HTTP layer renders as an OCI error envelope. */
export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail: unknown;
  /** Extra response headers, e.g. `Retry-After` or `Content-Range` for a 416. */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message?: string,
    opts: { detail?: unknown; headers?: Record<string, string>; status?: number; cause?: unknown } = {},
  ) {
    super(message ?? ERROR_TABLE[code].message, { cause: opts.cause });
    this.name = "RegistryError";
    this.code = code;
    this.status = opts.status ?? ERROR_TABLE[code].status;
    this.detail = opts.detail;
    this.headers = opts.headers ?? {};
  }
}

export interface ErrorEnvelope {
  errors: Array<{ code: string; message: string; detail?: unknown }>;
}

export function renderErrors(errors: RegistryError[]): ErrorEnvelope {
  return {
    errors: errors.map((e) =>
      e.detail === undefined
        ? { code: e.code, message: e.message }
        : { code: e.code, message: e.message, detail: e.detail },
    ),
  };
}
