/**
 * Parses a `/v2/...` request once, before any I/O, into an immutable validated value. Bad input becomes an OCI
 * error here (`NAME_INVALID`, `DIGEST_INVALID`, `UNSUPPORTED`; `MANIFEST_UNKNOWN` for a manifest reference that
 * cannot exist), never a bare 404 later.
 * Paths are matched undecoded: no valid name, tag or digest contains `%`, so encoded slashes or dots cannot
 * smuggle anything past the grammar.
 */
import { RegistryError } from "../oci/errors.ts";
import { AcceptSet } from "../oci/media-types.ts";
import { parseRange, type ByteRangeSpec } from "../oci/range.ts";
import { parsePageRequest, type PageRequest } from "../oci/pagination.ts";
import { isValidName, isValidTag, parseManifestReference, type ManifestReference } from "../oci/reference.ts";
import { assertDigest } from "../oci/digest.ts";
import { assertArtifactType } from "../oci/referrers.ts";

interface Common {
  method: "GET" | "HEAD";
  /** The repository path as the client wrote it (may carry an upstream prefix). */
  name: string;
  /** containerd's `?ns=` registry host. */
  ns: string | undefined;
}

export type DistributionRequest =
  | (Common & { kind: "manifest"; reference: ManifestReference; accept: AcceptSet })
  | (Common & { kind: "blob"; digest: string; range: ByteRangeSpec | undefined })
  | (Common & { kind: "tags"; page: PageRequest })
  | (Common & { kind: "referrers"; digest: string; artifactType: string | undefined });

/** What is read of a query string (a URLSearchParams, or NO_QUERY when there is none). */
export interface QueryParams {
  get(name: string): string | null;
}

/** The query of a request without one: nothing to parse (most requests have no query string). */
export const NO_QUERY: QueryParams = { get: () => null };

export interface RawRequest {
  method: string;
  /** URL path, not percent-decoded. */
  path: string;
  query: QueryParams;
  headers: Record<string, string | string[] | undefined>;
}

const ROUTES: ReadonlyArray<{ re: RegExp; kind: "manifest" | "blob" | "tags" | "upload" | "referrers" }> = [
  { re: /^\/v2\/(.+)\/manifests\/([^/]+)$/, kind: "manifest" },
  { re: /^\/v2\/(.+)\/blobs\/uploads(?:\/.*)?$/, kind: "upload" },
  { re: /^\/v2\/(.+)\/blobs\/([^/]+)$/, kind: "blob" },
  { re: /^\/v2\/(.+)\/tags\/list$/, kind: "tags" },
  { re: /^\/v2\/(.+)\/referrers\/([^/]+)$/, kind: "referrers" },
];

/** Returns `undefined` when the path is not a distribution endpoint at all. */
export function parseDistributionRequest(raw: RawRequest): DistributionRequest | undefined {
  const route = matchRoute(raw.path);
  if (route === undefined) return undefined;
  if (route.kind === "upload" || (raw.method !== "GET" && raw.method !== "HEAD")) {
    throw new RegistryError(
      "UNSUPPORTED",
      `${raw.method} is not supported: this registry is a read-only pull-through mirror`,
      {
        headers: { Allow: route.kind === "tags" || route.kind === "referrers" ? "GET" : "GET, HEAD" },
      },
    );
  }
  const method = raw.method;
  const name = route.m[1]!;
  if (name.includes("%") || !isValidName(name)) {
    throw new RegistryError("NAME_INVALID", `invalid repository name: ${JSON.stringify(name.slice(0, 300))}`);
  }
  const ns = raw.query.get("ns") ?? undefined;
  const common = { method, name, ns } as const;
  switch (route.kind) {
    case "manifest":
      return {
        ...common,
        kind: "manifest",
        reference: manifestReferenceOf(route.m[2]!),
        accept: AcceptSet.parse(raw.headers.accept),
      };
    case "blob": {
      const digest = route.m[2]!;
      assertDigest(digest);
      const range = raw.headers.range;
      return { ...common, kind: "blob", digest, range: parseRange(Array.isArray(range) ? undefined : range) };
    }
    case "tags":
      if (method !== "GET")
        throw new RegistryError("UNSUPPORTED", "tags/list answers GET only", { headers: { Allow: "GET" } });
      return { ...common, kind: "tags", page: parsePageRequest(listQuery(raw.query), isValidTag, tagInvalid) };
    case "referrers": {
      // https://github.com/opencontainers/distribution-spec/blob/main/spec.md#listing-referrers (GET only)
      if (method !== "GET")
        throw new RegistryError("UNSUPPORTED", "referrers answers GET only", { headers: { Allow: "GET" } });
      const digest = route.m[2]!;
      assertDigest(digest);
      const artifactType = raw.query.get("artifactType") ?? undefined;
      if (artifactType !== undefined) assertArtifactType(artifactType);
      return { ...common, kind: "referrers", digest, artifactType };
    }
  }
}

/** The first route whose pattern matches `path`, with its match. */
function matchRoute(path: string): { kind: (typeof ROUTES)[number]["kind"]; m: RegExpExecArray } | undefined {
  for (const { re, kind } of ROUTES) {
    const m = re.exec(path);
    if (m !== null) return { kind, m };
  }
  return undefined;
}

/**
 * A manifest reference that is neither a valid tag nor a digest of a supported form names a manifest that cannot
 * exist: 404 MANIFEST_UNKNOWN, as the distribution spec's conformance suite expects (it asks for
 * `.INVALID_MANIFEST_NAME`), and never a request to the upstream.
 */
function manifestReferenceOf(value: string): ManifestReference {
  try {
    return parseManifestReference(value);
  } catch (err) {
    if (!(err instanceof RegistryError)) throw err;
    throw new RegistryError("MANIFEST_UNKNOWN", `no manifest can be named ${JSON.stringify(value.slice(0, 300))}`, {
      detail: { reason: err.message },
    });
  }
}

const tagInvalid = (last: string) =>
  new RegistryError("TAG_INVALID", `last must be a tag: ${JSON.stringify(last.slice(0, 300))}`);

/** The raw `n` and `last` of a list endpoint's query (tags/list, _catalog). */
export function listQuery(query: QueryParams): { n: string | undefined; last: string | undefined } {
  return { n: query.get("n") ?? undefined, last: query.get("last") ?? undefined };
}
