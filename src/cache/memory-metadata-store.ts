/**
 * The embedded metadata store: in-process, bounded by lru-cache so memory stays flat however many repositories
 * pass through. Losing a link only costs an upstream HEAD; losing a tag pointer costs a revalidation.
 * (Persisting tag pointers to disk, for offline restarts, is the freshness issue's part of this store.)
 */
import { LRUCache } from "lru-cache";
import type { MetadataStore, TagPointer } from "./metadata-store.ts";

export class MemoryMetadataStore implements MetadataStore {
  private readonly tags: LRUCache<string, TagPointer>;
  private readonly links: LRUCache<string, true>;

  constructor(opts: { maxTags?: number; maxLinks?: number } = {}) {
    this.tags = new LRUCache({ max: opts.maxTags ?? 100_000 });
    this.links = new LRUCache({ max: opts.maxLinks ?? 1_000_000 });
  }

  async getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined> {
    return this.tags.get(key(upstream, repo, tag));
  }

  async putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void> {
    this.tags.set(key(upstream, repo, tag), { ...pointer });
  }

  async deleteTag(upstream: string, repo: string, tag: string): Promise<void> {
    this.tags.delete(key(upstream, repo, tag));
  }

  async hasLink(upstream: string, repo: string, digest: string): Promise<boolean> {
    return this.links.get(key(upstream, repo, digest)) === true;
  }

  async addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void> {
    for (const digest of digests) this.links.set(key(upstream, repo, digest), true);
  }

  async close(): Promise<void> {}
}

/** NUL cannot occur in upstream names, repository names, tags or digests, so keys cannot collide. */
function key(upstream: string, repo: string, item: string): string {
  return `${upstream}\u0000${repo}\u0000${item}`;
}
