/**
 * Paging of the two list endpoints, `tags/list` and `_catalog`, as the distribution spec defines it
 * (spec.md, "Listing Tags"): the list in lexical order, `n` the most entries of a page, `last` the entry the page
 * starts strictly after, and a `Link: <...>; rel="next"` header only when entries follow the page. `n=0` is an
 * empty page without a link; without `n` the page holds every entry (after `last`, if given).
 *
 * Lexical order is plain code-unit order (JavaScript's default string comparison), which for the ASCII names and
 * tags the grammar allows is the byte order of Go's `sort.Strings` that the spec names.
 */
import { RegistryError } from "./errors.ts";

/**
 * The largest page the mirror answers: a larger `n` is clamped to it, and the answer then carries a `Link` to the
 * rest (the spec allows fewer than `n` entries when a `Link` is provided).
 */
export const MAX_PAGE_SIZE = 10_000;

export interface PageRequest {
  /** Most entries of the page (already clamped to MAX_PAGE_SIZE); undefined: all of them. */
  readonly n: number | undefined;
  /** The page starts strictly after this entry. */
  readonly last: string | undefined;
}

export interface Page {
  readonly entries: string[];
  /** The query of the next page (`n`, `last`), when entries follow this one. */
  readonly next: { n: number; last: string } | undefined;
}

/**
 * Validates the raw `n` and `last` query values. `n` must be a non-negative decimal integer (UNSUPPORTED with
 * status 400 otherwise: the spec has no error code of its own for it); `last` must pass `isEntry`, or `lastError`
 * is thrown (TAG_INVALID for tags, NAME_INVALID for repository names).
 */
export function parsePageRequest(
  raw: { n: string | undefined; last: string | undefined },
  isEntry: (value: string) => boolean,
  lastError: (value: string) => RegistryError,
): PageRequest {
  let n: number | undefined;
  if (raw.n !== undefined) {
    if (!/^\d+$/.test(raw.n))
      throw new RegistryError(
        "UNSUPPORTED",
        `n must be a non-negative integer: ${JSON.stringify(raw.n.slice(0, 50))}`,
        {
          status: 400,
        },
      );
    // Compared as text first, so a thousand digits clamp instead of becoming Infinity or losing precision.
    const digits = raw.n.replace(/^0+(?=\d)/, "");
    n = digits.length > String(MAX_PAGE_SIZE).length ? MAX_PAGE_SIZE : Math.min(Number(digits), MAX_PAGE_SIZE);
  }
  if (raw.last !== undefined && !isEntry(raw.last)) throw lastError(raw.last);
  return { n, last: raw.last };
}

/** Sorts and deduplicates `entries`, then cuts the page `req` asks for. */
export function paginate(entries: Iterable<string>, req: PageRequest): Page {
  const sorted = [...new Set(entries)].sort();
  const start = req.last === undefined ? 0 : firstAfter(sorted, req.last);
  if (req.n === undefined) return { entries: sorted.slice(start), next: undefined };
  const page = sorted.slice(start, start + req.n);
  const more = req.n > 0 && start + req.n < sorted.length;
  return { entries: page, next: more ? { n: req.n, last: page[page.length - 1]! } : undefined };
}

/**
 * The `Link` header of a next page: `path` is this mirror's own path of the endpoint (as the client wrote it, so
 * the link leads back through the same route), `extra` further query parameters to keep (containerd's `ns`).
 */
export function nextPageLink(
  path: string,
  next: { n: number; last: string },
  extra: Record<string, string> = {},
): string {
  const query = new URLSearchParams({ n: String(next.n), last: next.last, ...extra });
  return `<${path}?${query.toString()}>; rel="next"`;
}

/** Index of the first entry of sorted `list` that sorts strictly after `last` (binary search). */
function firstAfter(list: readonly string[], last: string): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid]! <= last) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
