/**
 * `GET /v2/<name>/tags/list`, passed through to the upstream with `n` and `last`; not cached. The answer is
 * rendered here from the tags the upstream client accepted, never the upstream's body relayed as it came.
 */
import type { Logger } from "pino";
import { RegistryError } from "../oci/errors.ts";
import { isValidTag } from "../oci/reference.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

export class TagsHandler {
  private readonly maxBytes: number;
  private readonly log: Logger;

  constructor(opts: { maxBytes: number; log: Logger }) {
    this.maxBytes = opts.maxBytes;
    this.log = opts.log;
  }

  /** `clientName` is the name as the client wrote it, so pagination links lead back through this mirror. */
  async handle(req: {
    target: ResolvedRepository<UpstreamClient>;
    clientName: string;
    n: string | undefined;
    last: string | undefined;
    ns: string | undefined;
  }): Promise<RegistryResponse> {
    const params = new URLSearchParams();
    if (req.n !== undefined) {
      if (!/^\d{1,6}$/.test(req.n))
        throw new RegistryError("UNSUPPORTED", "n must be a non-negative integer", { status: 400 });
      params.set("n", req.n);
    }
    if (req.last !== undefined) {
      if (!isValidTag(req.last)) throw new RegistryError("TAG_INVALID", "last must be a tag");
      params.set("last", req.last);
    }
    const query = params.size > 0 ? `?${params.toString()}` : "";
    const { upstream, repo } = req.target;
    const result = await upstream.getTags(repo, query, this.maxBytes);
    const body = Buffer.from(JSON.stringify({ name: repo, tags: result.tags }));
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
      "Content-Length": String(body.length),
    };
    const link = result.link !== undefined ? rewriteLink(result.link, req.clientName, req.ns) : undefined;
    if (link === null) {
      // The upstream's header, not the client's request, is at fault: answer the page we have, without a next one.
      this.log.warn(
        { upstream: upstream.name, repo, link: result.link?.slice(0, 500) },
        "upstream sent a malformed Link header on tags/list; treated as absent",
      );
    } else if (link !== undefined) headers.Link = link;
    return { status: 200, headers, body };
  }
}

/**
 * Keeps only the upstream's `n`/`last` from its next-page link and points it at this mirror's path. Undefined
 * when there is no next page; null when the link is malformed (the upstream's URL does not parse).
 */
function rewriteLink(link: string, clientName: string, ns: string | undefined): string | undefined | null {
  const m = /<([^>]*)>\s*;\s*rel="?next"?/.exec(link);
  if (!m) return undefined;
  const target = URL.parse(m[1]!, "http://upstream.invalid");
  if (target === null) return null;
  const params = new URLSearchParams();
  for (const key of ["n", "last"]) {
    const value = target.searchParams.get(key);
    if (value !== null) params.set(key, value);
  }
  if (ns !== undefined) params.set("ns", ns);
  return `</v2/${clientName}/tags/list?${params.toString()}>; rel="next"`;
}
