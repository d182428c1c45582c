/**
 * The embedded metadata store: in-process, bounded by lru-cache so memory stays flat however many repositories
 * pass through. Losing a link only costs an upstream HEAD; losing a tag pointer costs a revalidation; losing a
 * provenance entry costs one verified download from the upstream.
 *
 * With `dir`, tag pointers, links and provenance are also journalled to disk (tag-journal.ts), so a single node that
 * restarts still knows what it can serve while the upstream is unreachable. The journal is replayed through the
 * same LRU bounds, so entries beyond them are dropped at load as they would have been in memory. Missing-records
 * and locks stay in memory only.
 *
 * The disk copy is a restart optimisation, not the truth: a mutation is applied in memory first and waits for
 * its journal line to be written, but a failed write is reported through `onError` instead of failing the call
 * (the memory state is right; the caller's request should not fail because the journal could not keep up).
 */
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { LRUCache } from "lru-cache";
import { supersedes, type MetadataStore, type TagPointer } from "./metadata-store.ts";
import { TagJournal, type JournalLoadReport, type JournalRecord } from "./tag-journal.ts";
import { toError } from "../caught-errors.ts";

export interface EmbeddedMetadataStoreOptions {
  /** Journal tag pointers and links here (the mirror uses `<storage.path>/metadata`); absent: memory only. */
  dir?: string;
  /** Bounds on entries held (and reloaded): tag pointers, repository→digest links, missing-records. */
  maxTags?: number;
  maxLinks?: number;
  maxMissing?: number;
  /** Bound on provenance entries (digest, upstream) held and reloaded; default 1 000 000. */
  maxProvenance?: number;
  /** Journal tuning (see tag-journal.ts): background fsync interval, compaction ratio and floor. */
  syncIntervalMs?: number;
  compactRatio?: number;
  compactMinEntries?: number;
  /** Journal failures that no caller sees (writes, fsync, compaction). Default: a process warning. */
  onError?: (err: Error) => void;
}

/** Above this many lock entries, expired ones are swept before a new one is added, so the map stays small. */
const LOCK_SWEEP_AT = 1_024;
/** Compaction writes provenance in records of at most this many digests, so no journal line grows huge. */
const PROVENANCE_RECORD_DIGESTS = 1_000;

export class EmbeddedMetadataStore implements MetadataStore {
  private readonly tags: LRUCache<string, TagPointer>;
  /** scope → tags with a pointer, for listTags and deleteRepository; kept in step with `tags` by its dispose. */
  private readonly tagsByScope = new Map<string, Set<string>>();
  private readonly links: LRUCache<string, true>;
  /** digest → upstreams that served it. Sets are replaced, never mutated, so each entry's LRU size stays right. */
  private readonly servedBy: LRUCache<string, ReadonlySet<string>>;
  private readonly missing: LRUCache<string, true>;
  private readonly locks = new Map<string, { token: string; expiresAt: number }>();
  private readonly onError: (err: Error) => void;
  /** The journal once loaded (undefined without `dir`); every method waits for it, so none sees a half-loaded store. */
  private readonly opened: Promise<TagJournal | undefined>;

  /**
   * Usable at once; with `dir` the journal loads in the background and the first calls wait for it. Prefer
   * `EmbeddedMetadataStore.open()` with `dir`, which reports a journal that cannot be read at startup.
   */
  constructor(opts: EmbeddedMetadataStoreOptions = {}) {
    // Bounded by count through maxSize (each entry counts 1) rather than `max`: with `max`, lru-cache
    // preallocates arrays for every slot up front (about 30 MiB of heap and typed arrays for a million links,
    // which every full GC then has to scan); with maxSize they grow with what is stored.
    this.tags = new LRUCache({
      maxSize: opts.maxTags ?? 100_000,
      sizeCalculation: () => 1,
      dispose: (_pointer, key, reason) => {
        if (reason !== "set") this.unindexTag(key);
      },
    });
    this.links = new LRUCache({ maxSize: opts.maxLinks ?? 1_000_000, sizeCalculation: () => 1 });
    this.servedBy = new LRUCache({
      maxSize: opts.maxProvenance ?? 1_000_000,
      sizeCalculation: (upstreams) => upstreams.size,
    });
    this.missing = new LRUCache({ max: opts.maxMissing ?? 10_000 });
    this.onError = opts.onError ?? ((err) => process.emitWarning(err));
    const dir = opts.dir;
    this.opened =
      dir === undefined
        ? Promise.resolve(undefined)
        : TagJournal.open({
            dir,
            apply: (record) => this.apply(record),
            snapshot: () => this.snapshot(),
            liveEntries: () => this.tags.size + this.links.size + this.servedBy.calculatedSize,
            syncIntervalMs: opts.syncIntervalMs,
            compactRatio: opts.compactRatio,
            compactMinEntries: opts.compactMinEntries,
            onError: this.onError,
          });
    // Callers see a load failure when they await a method (or open()); it must not also be an unhandled rejection.
    this.opened.catch(() => undefined);
  }

  /** Creates the store and, with `dir`, waits until the journal is loaded; throws if it cannot be read. */
  static async open(opts: EmbeddedMetadataStoreOptions = {}): Promise<EmbeddedMetadataStore> {
    const store = new EmbeddedMetadataStore(opts);
    await store.opened;
    return store;
  }

  /** What loading the journal found (undefined without `dir`), for a startup log line. */
  async loadReport(): Promise<JournalLoadReport | undefined> {
    return (await this.opened)?.loaded;
  }

  async getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined> {
    await this.opened;
    const pointer = this.tags.get(itemKey(upstream, repo, tag));
    return pointer && { ...pointer };
  }

  async putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void> {
    const journal = await this.opened;
    const { digest, mediaType, checkedAt } = pointer;
    const known = this.tags.get(itemKey(upstream, repo, tag));
    // Never back in time (`supersedes`); and an identical pointer is not journalled again.
    if (!supersedes(pointer, known)) return;
    if (known && known.digest === digest && known.mediaType === mediaType && known.checkedAt === checkedAt) return;
    await this.record(journal, { op: "tag", upstream, repo, tag, pointer: { digest, mediaType, checkedAt } });
  }

  async deleteTag(upstream: string, repo: string, tag: string): Promise<void> {
    // Journalled even when absent here: the journal may still hold a pointer the LRU has dropped.
    await this.record(await this.opened, { op: "untag", upstream, repo, tag });
  }

  async listTags(upstream: string, repo: string): Promise<string[]> {
    await this.opened;
    return [...(this.tagsByScope.get(scopeKey(upstream, repo)) ?? [])];
  }

  async listRepositories(upstream: string): Promise<string[]> {
    await this.opened;
    const repos: string[] = [];
    for (const scope of this.tagsByScope.keys()) {
      const separator = scope.indexOf("\u0000");
      if (scope.slice(0, separator) === upstream) repos.push(scope.slice(separator + 1));
    }
    return repos;
  }

  async hasLink(upstream: string, repo: string, digest: string): Promise<boolean> {
    await this.opened;
    return this.links.get(itemKey(upstream, repo, digest)) === true;
  }

  async addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void> {
    const journal = await this.opened;
    // Only new links are journalled: the caches re-add the same links on every revalidation.
    const fresh = [...new Set(digests)].filter((digest) => !this.links.has(itemKey(upstream, repo, digest)));
    for (const digest of digests) this.links.get(itemKey(upstream, repo, digest)); // refresh recency of known ones
    if (fresh.length > 0) await this.record(journal, { op: "link", upstream, repo, digests: fresh });
  }

  async addProvenance(upstream: string, digests: readonly string[]): Promise<void> {
    const journal = await this.opened;
    // As with links, only what is new is journalled; known entries just become recent again.
    const fresh = [...new Set(digests)].filter((digest) => this.servedBy.get(digest)?.has(upstream) !== true);
    if (fresh.length > 0) await this.record(journal, { op: "provenance", upstream, digests: fresh });
  }

  async provenance(digest: string): Promise<string[]> {
    await this.opened;
    return [...(this.servedBy.get(digest) ?? [])];
  }

  async putMissing(upstream: string, repo: string, reference: string, ttlMs: number): Promise<void> {
    await this.opened;
    const key = itemKey(upstream, repo, reference);
    if (ttlMs > 0) this.missing.set(key, true, { ttl: ttlMs });
    else this.missing.delete(key);
  }

  async isMissing(upstream: string, repo: string, reference: string): Promise<boolean> {
    await this.opened;
    return this.missing.get(itemKey(upstream, repo, reference)) === true;
  }

  async clearMissing(upstream: string, repo: string, reference: string): Promise<void> {
    await this.opened;
    this.missing.delete(itemKey(upstream, repo, reference));
  }

  async tryLock(name: string, ttlMs: number): Promise<string | undefined> {
    await this.opened;
    // Monotonic: a wall-clock step must not release or extend locks.
    const now = performance.now();
    const held = this.locks.get(name);
    if (held && held.expiresAt > now) return undefined;
    if (this.locks.size >= LOCK_SWEEP_AT) {
      for (const [other, lock] of this.locks) if (lock.expiresAt <= now) this.locks.delete(other);
    }
    const token = randomUUID();
    this.locks.set(name, { token, expiresAt: now + ttlMs });
    return token;
  }

  async unlock(name: string, token: string): Promise<void> {
    await this.opened;
    if (this.locks.get(name)?.token === token) this.locks.delete(name);
  }

  async deleteRepository(upstream: string, repo: string): Promise<void> {
    const journal = await this.opened;
    const prefix = `${scopeKey(upstream, repo)}\u0000`;
    const doomedMissing: string[] = [];
    for (const key of this.missing.keys()) if (key.startsWith(prefix)) doomedMissing.push(key);
    for (const key of doomedMissing) this.missing.delete(key);
    await this.record(journal, { op: "purge", upstream, repo });
  }

  /** Waits for journal writes, fsyncs and closes the journal. Idempotent. */
  async close(): Promise<void> {
    const journal = await this.opened.catch(() => undefined);
    await journal?.close();
  }

  /** Applies a mutation in memory, then waits for its journal line. */
  private async record(journal: TagJournal | undefined, record: JournalRecord): Promise<void> {
    this.apply(record);
    if (journal === undefined) return;
    try {
      await journal.append(record);
    } catch (err) {
      this.onError(toError(err));
    }
  }

  private apply(record: JournalRecord): void {
    if (record.op === "provenance") {
      for (const digest of record.digests) {
        const known = this.servedBy.peek(digest);
        this.servedBy.set(digest, known?.has(record.upstream) ? known : new Set([...(known ?? []), record.upstream]));
      }
      return;
    }
    const { upstream, repo } = record;
    switch (record.op) {
      case "tag": {
        const key = itemKey(upstream, repo, record.tag);
        // The same rule when the journal is replayed: a line older than the pointer already loaded is history.
        if (!supersedes(record.pointer, this.tags.peek(key))) return;
        this.tags.set(key, { ...record.pointer });
        const scope = scopeKey(upstream, repo);
        let tags = this.tagsByScope.get(scope);
        if (tags === undefined) this.tagsByScope.set(scope, (tags = new Set()));
        tags.add(record.tag);
        return;
      }
      case "untag":
        this.tags.delete(itemKey(upstream, repo, record.tag));
        return;
      case "link":
        for (const digest of record.digests) this.links.set(itemKey(upstream, repo, digest), true);
        return;
      case "purge": {
        const scope = scopeKey(upstream, repo);
        for (const tag of [...(this.tagsByScope.get(scope) ?? [])]) this.tags.delete(itemKey(upstream, repo, tag));
        // A full scan, but purge is a rare administrative act and links carry no per-repository index.
        const prefix = `${scope}\u0000`;
        const doomed: string[] = [];
        for (const key of this.links.keys()) if (key.startsWith(prefix)) doomed.push(key);
        for (const key of doomed) this.links.delete(key);
        return;
      }
    }
  }

  /** The journalled state as records: a pointer per tag, one link record per repository, provenance per upstream. */
  private *snapshot(): Generator<JournalRecord> {
    // Oldest first, so replaying the compacted journal through the LRU keeps the same entries on top.
    for (const key of this.tags.rkeys()) {
      const pointer = this.tags.peek(key);
      if (pointer === undefined) continue;
      const { upstream, repo, item } = splitKey(key);
      yield { op: "tag", upstream, repo, tag: item, pointer };
    }
    const byScope = new Map<string, { upstream: string; repo: string; digests: string[] }>();
    for (const key of this.links.rkeys()) {
      const { upstream, repo, item } = splitKey(key);
      const scope = scopeKey(upstream, repo);
      let group = byScope.get(scope);
      if (group === undefined) byScope.set(scope, (group = { upstream, repo, digests: [] }));
      group.digests.push(item);
    }
    for (const { upstream, repo, digests } of byScope.values()) yield { op: "link", upstream, repo, digests };
    const byUpstream = new Map<string, string[]>();
    for (const digest of this.servedBy.rkeys()) {
      for (const upstream of this.servedBy.peek(digest) ?? []) {
        let digests = byUpstream.get(upstream);
        if (digests === undefined) byUpstream.set(upstream, (digests = []));
        digests.push(digest);
      }
    }
    for (const [upstream, digests] of byUpstream) {
      for (let i = 0; i < digests.length; i += PROVENANCE_RECORD_DIGESTS)
        yield { op: "provenance", upstream, digests: digests.slice(i, i + PROVENANCE_RECORD_DIGESTS) };
    }
  }

  private unindexTag(key: string): void {
    const { upstream, repo, item } = splitKey(key);
    const scope = scopeKey(upstream, repo);
    const tags = this.tagsByScope.get(scope);
    if (tags === undefined) return;
    tags.delete(item);
    if (tags.size === 0) this.tagsByScope.delete(scope);
  }
}

/** NUL cannot occur in upstream names, repository names, tags or digests, so keys cannot collide. */
function scopeKey(upstream: string, repo: string): string {
  return `${upstream}\u0000${repo}`;
}

function itemKey(upstream: string, repo: string, item: string): string {
  return `${upstream}\u0000${repo}\u0000${item}`;
}

function splitKey(key: string): { upstream: string; repo: string; item: string } {
  const first = key.indexOf("\u0000");
  const last = key.lastIndexOf("\u0000");
  return { upstream: key.slice(0, first), repo: key.slice(first + 1, last), item: key.slice(last + 1) };
}
