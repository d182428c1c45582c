/**
 * Manifest media types and `Accept` negotiation.
 * Clients differ: dockerd and containers/image send several separate Accept headers,
 * containerd one comma-joined header ending in `*\/*`. Both are treated as one set of media ranges.
 */

export const MediaType = {
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociIndex: "application/vnd.oci.image.index.v1+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerSchema1Signed: "application/vnd.docker.distribution.manifest.v1+prettyjws",
  dockerSchema1: "application/vnd.docker.distribution.manifest.v1+json",
} as const;

/** What the mirror asks every upstream for: every manifest and index type, so one cached copy serves all clients. */
export const UPSTREAM_MANIFEST_ACCEPT = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerManifestList,
  MediaType.dockerManifest,
  MediaType.dockerSchema1Signed,
  MediaType.dockerSchema1,
].join(", ");

/**
 * Parsed Accept headers by their text, and per set what it decided for each media type: a client sends the same
 * header with every request, and the cached manifests have a handful of media types, so a manifest hit then parses
 * nothing. Both are bounded (the header is the client's to choose): the oldest parse goes first; headers longer
 * than MEMO_MAX_LENGTH are parsed every time.
 */
const MEMO_MAX_ENTRIES = 64;
const MEMO_MAX_LENGTH = 1024;
const parsedHeaders = new Map<string, AcceptSet>();

/**
 * A set of media ranges parsed from one or more Accept headers. Its answers never change (`decided` only remembers
 * them), so one instance serves every request that sent the same header.
 */
export class AcceptSet {
  /** `undefined` means no Accept header at all, which (RFC 9110 §12.5.1) accepts any type. */
  private readonly ranges: ReadonlyArray<{ type: string; subtype: string; q: number }> | undefined;
  private readonly decided = new Map<string, boolean>();

  private constructor(ranges: Array<{ type: string; subtype: string; q: number }> | undefined) {
    this.ranges = ranges;
  }

  static parse(headers: string | string[] | undefined): AcceptSet {
    if (typeof headers !== "string" || headers.length > MEMO_MAX_LENGTH) return AcceptSet.parseList(headers);
    let set = parsedHeaders.get(headers);
    if (set === undefined) {
      set = AcceptSet.parseList(headers);
      if (parsedHeaders.size >= MEMO_MAX_ENTRIES) parsedHeaders.delete(parsedHeaders.keys().next().value!);
      parsedHeaders.set(headers, set);
    }
    return set;
  }

  private static parseList(headers: string | string[] | undefined): AcceptSet {
    if (headers === undefined) return new AcceptSet(undefined);
    const list = Array.isArray(headers) ? headers : [headers];
    const ranges: Array<{ type: string; subtype: string; q: number }> = [];
    for (const header of list) {
      for (const item of header.split(",")) {
        const [range = "", ...params] = item.split(";").map((s) => s.trim());
        if (range === "") continue;
        const slash = range.indexOf("/");
        if (slash <= 0) continue;
        let q = 1;
        for (const param of params) {
          const [k, v] = param.split("=").map((s) => s.trim());
          if (k?.toLowerCase() === "q" && v !== undefined) {
            const parsed = Number(v);
            if (Number.isFinite(parsed)) q = parsed;
          }
        }
        ranges.push({ type: range.slice(0, slash).toLowerCase(), subtype: range.slice(slash + 1).toLowerCase(), q });
      }
    }
    // An Accept header with nothing usable in it is treated as absent rather than as "accepts nothing".
    return new AcceptSet(ranges.length > 0 ? ranges : undefined);
  }

  /** Whether a response of `mediaType` may be sent to this client. */
  accepts(mediaType: string): boolean {
    if (this.ranges === undefined) return true;
    let accepted = this.decided.get(mediaType);
    if (accepted === undefined) {
      accepted = this.decide(mediaType);
      if (this.decided.size < MEMO_MAX_ENTRIES) this.decided.set(mediaType, accepted);
    }
    return accepted;
  }

  private decide(mediaType: string): boolean {
    const ranges = this.ranges ?? [];
    const [type = "", subtype = ""] = mediaType.toLowerCase().split(";")[0]!.trim().split("/");
    let best: { specificity: number; q: number } | undefined;
    for (const r of ranges) {
      let specificity: number;
      if (r.type === type && r.subtype === subtype) specificity = 2;
      else if (r.type === type && r.subtype === "*") specificity = 1;
      else if (r.type === "*" && r.subtype === "*") specificity = 0;
      else continue;
      if (best === undefined || specificity > best.specificity) best = { specificity, q: r.q };
    }
    return best !== undefined && best.q > 0;
  }

  toString(): string {
    return this.ranges === undefined
      ? "*/*"
      : this.ranges.map((r) => `${r.type}/${r.subtype}${r.q === 1 ? "" : `;q=${r.q}`}`).join(", ");
  }
}

/** Media types whose JSON lists child manifests (`manifests`) rather than layers. */
export function isIndexType(mediaType: string): boolean {
  return mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList;
}
