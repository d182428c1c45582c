/**
 * Single byte-range requests, as blobs support them (RFC 9110 §14).
 * Multiple ranges are not supported: like the reference registry we answer them with the full content, which the
 * RFC allows. A syntactically invalid Range header is ignored (RFC 9110 §14.2), an unsatisfiable one gives 416.
 */

export type ByteRangeSpec =
  | { kind: "from"; start: number; end: number | undefined } // bytes=start-[end]
  | { kind: "suffix"; length: number }; // bytes=-length

const RANGE_RE = /^bytes=(\d{0,15})-(\d{0,15})$/;

/** Parses a Range header; `undefined` when absent, invalid or multi-range (serve the whole blob). */
export function parseRange(header: string | undefined): ByteRangeSpec | undefined {
  if (header === undefined) return undefined;
  const m = RANGE_RE.exec(header.trim());
  if (!m) return undefined;
  const [, a = "", b = ""] = m;
  if (a === "" && b === "") return undefined;
  if (a === "") return { kind: "suffix", length: Number(b) };
  const start = Number(a);
  const end = b === "" ? undefined : Number(b);
  if (end !== undefined && end < start) return undefined;
  return { kind: "from", start, end };
}

/** Inclusive byte positions to send, or `"unsatisfiable"`. */
export type ResolvedRange = { start: number; end: number } | "unsatisfiable";

export function resolveRange(spec: ByteRangeSpec, size: number): ResolvedRange {
  if (spec.kind === "suffix") {
    if (spec.length === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - spec.length), end: size - 1 };
  }
  if (spec.start >= size) return "unsatisfiable";
  return { start: spec.start, end: Math.min(spec.end ?? size - 1, size - 1) };
}
