/**
 * `GET /v2/<name>/tags/list`, per the distribution spec: lexical order, `n`, `last` and a `Link` to the next page
 * (oci/pagination.ts). The mirror reads the upstream's whole list (every page of it, upstream-client.ts) and pages
 * it itself, so the order and the paging are the spec's whatever the upstream does. The answer is rendered here
 * from the tags the upstream client accepted, never the upstream's body relayed as it came.
 *
 * When the upstream cannot answer (down, timing out, 5xx, 429, or offline by configuration) the tags the mirror
 * holds pointers for answer instead, paged the same way and marked stale (`X-Mirror-Cache: stale` and a
 * `Warning`, as for manifests); an upstream that has not answered within `revalidateTimeout` counts as one that
 * cannot, when there are cached tags to answer with. An upstream 404 stands: cached tags are not served for a repository the upstream
 * says does not exist. Nothing is cached from a tag list itself.
 */
import type { Logger } from "pino";
import { confirmationLate, LATE, settleWithin } from "../cache/answer-deadline.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import { RegistryError } from "../oci/errors.ts";
import { isValidTag } from "../oci/reference.ts";
import { nextPageLink, paginate, type PageRequest } from "../oci/pagination.ts";
import type { RegistryResponse } from "./response.ts";
import type { ResolvedRepository } from "../config/upstream-resolver.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import { isUpstreamUnwell } from "../upstream/upstream-errors.ts";

export class TagsHandler {
  private readonly maxBytes: number;
  private readonly metadata: MetadataStore;
  private readonly log: Logger;

  constructor(opts: { maxBytes: number; metadata: MetadataStore; log: Logger }) {
    this.maxBytes = opts.maxBytes;
    this.metadata = opts.metadata;
    this.log = opts.log;
  }

  /**
   * `page` is the validated `n`/`last` (distribution-request.ts); `clientName` the name as the client wrote it,
   * so the next-page link leads back through this mirror by the same route, with containerd's `ns` kept.
   */
  async handle(req: {
    target: ResolvedRepository<UpstreamClient>;
    clientName: string;
    page: PageRequest;
    ns: string | undefined;
  }): Promise<RegistryResponse> {
    const { upstream, repo } = req.target;
    let tags: string[];
    let stale = false;
    // Only tags: the store also keeps pointers that are none beside them (referrers lists, referrers-cache.ts).
    const cached = (await this.metadata.listTags(upstream.name, repo)).filter(isValidTag);
    try {
      const fetching = upstream.getTags(repo, this.maxBytes);
      // With tags to answer from, the upstream gets revalidateTimeout, as for a tag (answer-deadline.ts).
      const outcome =
        cached.length > 0 ? await settleWithin(fetching, upstream.config.revalidateTimeout) : await fetching;
      if (outcome === LATE) throw confirmationLate(upstream, `the tags of ${repo}`);
      tags = outcome;
    } catch (err) {
      if (!isUpstreamUnwell(err)) throw err;
      if (cached.length === 0) {
        if (upstream.config.offline && err.code === "UNAVAILABLE")
          throw new RegistryError(
            "NAME_UNKNOWN",
            `no tags of ${repo} are cached, and upstream ${upstream.name} is offline`,
            { detail: { upstream: upstream.name, offline: true } },
          );
        throw err;
      }
      this.log.info(
        { upstream: upstream.name, repo, code: err.code, reason: err.message },
        "tags/list answered from the cached tags: the upstream could not answer",
      );
      tags = cached;
      stale = true;
    }
    const page = paginate(tags, req.page);
    const body = Buffer.from(JSON.stringify({ name: repo, tags: page.entries }));
    const headers: Record<string, string> = {
      "Content-Type": "application/json",
      "Content-Length": String(body.length),
      "X-Mirror-Cache": stale ? "stale" : "miss",
      ...(stale ? { Warning: '110 - "Response is Stale"' } : {}),
    };
    if (page.next !== undefined)
      headers.Link = nextPageLink(
        `/v2/${req.clientName}/tags/list`,
        page.next,
        req.ns !== undefined ? { ns: req.ns } : {},
      );
    return { status: 200, headers, body, cache: stale ? "stale" : "miss" };
  }
}
