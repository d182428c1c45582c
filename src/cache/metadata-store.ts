/**
 * What the mirror knows about content beyond the bytes themselves: tag → digest pointers (with when they were
 * last confirmed upstream) and which repository references which digest. One interface, so the embedded store
 * and the Redis store (a later step) are interchangeable and pass one conformance suite.
 *
 * Links exist because blobs are stored once across repositories and upstreams, but a cached blob may only be
 * served under a repository known to reference it: otherwise anyone who knows a digest could read content of a
 * private repository through any other name. A missing link is never fatal: the caller confirms with an
 * upstream HEAD and records the link.
 */

export interface TagPointer {
  digest: string;
  mediaType: string;
  /** When the upstream last confirmed this pointer (ms since the epoch). */
  checkedAt: number;
}

export interface MetadataStore {
  getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined>;
  putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void>;
  deleteTag(upstream: string, repo: string, tag: string): Promise<void>;
  hasLink(upstream: string, repo: string, digest: string): Promise<boolean>;
  addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void>;
  close(): Promise<void>;
}
