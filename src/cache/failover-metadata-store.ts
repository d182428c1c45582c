/**
 * Redis as the shared metadata store, with the embedded store as a fallback so that Redis going away (down, or
 * too slow to wait for) degrades the mirror to single-replica behaviour instead of failing requests.
 *
 * - ok: reads come from Redis, bounded by `timeoutMs`; positive answers are copied into the fallback when it
 *   lacks them, so what this replica has seen is on its disk for the next outage. Writes go to both.
 * - degraded: every call is answered by the fallback alone, with no Redis round trip, so a dead Redis costs
 *   nothing per request. Locks are taken locally: single-replica semantics, which is what advisory locks allow.
 *
 * Any Redis failure (error, timeout, lost connection) switches to degraded; nothing Redis does is ever thrown
 * to the caller. Errors of the fallback itself are. A PING every `probeIntervalMs` (and on every reconnect,
 * which ioredis keeps attempting) switches back to ok once Redis answers; it also notices a hung Redis while
 * the mirror is idle. Writes made while degraded are not replayed to Redis: other replicas may then hold older
 * pointers, which costs them a revalidation, never wrong content, because the caches check the blob store.
 *
 * Give the client failFastRedisOptions(): with ioredis's defaults, commands queue while it is disconnected.
 */
import type { MetadataStore, TagPointer } from "./metadata-store.ts";
import type { RedisMetadataStore } from "./redis-metadata-store.ts";

export type MetadataStoreState = "ok" | "degraded";

export interface MetadataStoreStateChange {
  state: MetadataStoreState;
  /** Why: the Redis failure that caused degradation, or what brought it back. */
  reason: string;
}

export interface FailoverMetadataStoreOptions {
  primary: RedisMetadataStore;
  fallback: MetadataStore;
  /** Longest wait for any Redis call before answering from the fallback; default 500 ms. */
  timeoutMs?: number;
  /** Health PING interval, in both states; default 1 s. */
  probeIntervalMs?: number;
}

/** Lock tokens say which store issued them, so unlock goes to the same one whatever the state is now. */
const REMOTE_TOKEN = "redis:";
const LOCAL_TOKEN = "local:";

export class FailoverMetadataStore implements MetadataStore {
  private readonly primary: RedisMetadataStore;
  private readonly fallback: MetadataStore;
  private readonly timeoutMs: number;
  private readonly timer: NodeJS.Timeout;
  private readonly listeners = new Set<(change: MetadataStoreStateChange) => void>();
  private readonly detach: () => void;
  private current: MetadataStoreState;
  private why: string;
  private probing: Promise<void> | undefined;
  private closed = false;

  constructor(opts: FailoverMetadataStoreOptions) {
    this.primary = opts.primary;
    this.fallback = opts.fallback;
    this.timeoutMs = opts.timeoutMs ?? 500;
    const client = this.primary.client;
    // Optimistic only if the connection is up; otherwise the first successful probe says so.
    this.current = client.status === "ready" ? "ok" : "degraded";
    this.why = this.current === "ok" ? "redis is answering" : `redis connection is ${client.status}`;

    const onReady = () => void this.probe();
    const onClose = () => this.degrade("redis connection closed");
    // Also keeps ioredis from printing "Unhandled error event" for every failed reconnect.
    const onError = (err: Error) => this.degrade(`redis error: ${err.message}`);
    client.on("ready", onReady);
    client.on("close", onClose);
    client.on("error", onError);
    this.detach = () => {
      client.off("ready", onReady);
      client.off("close", onClose);
      client.off("error", onError);
    };
    this.timer = setInterval(() => void this.probe(), opts.probeIntervalMs ?? 1_000);
    this.timer.unref();
    if (this.current === "degraded") void this.probe();
  }

  get state(): MetadataStoreState {
    return this.current;
  }

  get reason(): string {
    return this.why;
  }

  /** Calls `listener` on every change of state (not on every new reason); returns the unsubscribe function. */
  onStateChange(listener: (change: MetadataStoreStateChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async getTag(upstream: string, repo: string, tag: string): Promise<TagPointer | undefined> {
    const remote = await this.fromPrimary("getTag", (s) => s.getTag(upstream, repo, tag));
    if (!remote.ok) return this.fallback.getTag(upstream, repo, tag);
    const pointer = remote.value;
    if (pointer !== undefined) {
      const local = await this.fallback.getTag(upstream, repo, tag);
      if (local?.digest !== pointer.digest || local.mediaType !== pointer.mediaType || local.checkedAt !== pointer.checkedAt) {
        await this.fallback.putTag(upstream, repo, tag, pointer);
      }
    }
    return pointer;
  }

  async putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void> {
    await this.toBoth("putTag", (s) => s.putTag(upstream, repo, tag, pointer));
  }

  async deleteTag(upstream: string, repo: string, tag: string): Promise<void> {
    await this.toBoth("deleteTag", (s) => s.deleteTag(upstream, repo, tag));
  }

  async listTags(upstream: string, repo: string): Promise<string[]> {
    const remote = await this.fromPrimary("listTags", (s) => s.listTags(upstream, repo));
    return remote.ok ? remote.value : this.fallback.listTags(upstream, repo);
  }

  async listRepositories(upstream: string): Promise<string[]> {
    const remote = await this.fromPrimary("listRepositories", (s) => s.listRepositories(upstream));
    return remote.ok ? remote.value : this.fallback.listRepositories(upstream);
  }

  async hasLink(upstream: string, repo: string, digest: string): Promise<boolean> {
    const remote = await this.fromPrimary("hasLink", (s) => s.hasLink(upstream, repo, digest));
    if (!remote.ok) return this.fallback.hasLink(upstream, repo, digest);
    if (remote.value && !(await this.fallback.hasLink(upstream, repo, digest))) await this.fallback.addLinks(upstream, repo, [digest]);
    return remote.value;
  }

  async addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void> {
    await this.toBoth("addLinks", (s) => s.addLinks(upstream, repo, digests));
  }

  async putMissing(upstream: string, repo: string, reference: string, ttlMs: number): Promise<void> {
    await this.toBoth("putMissing", (s) => s.putMissing(upstream, repo, reference, ttlMs));
  }

  async isMissing(upstream: string, repo: string, reference: string): Promise<boolean> {
    const remote = await this.fromPrimary("isMissing", (s) => s.isMissing(upstream, repo, reference));
    return remote.ok ? remote.value : this.fallback.isMissing(upstream, repo, reference);
  }

  async clearMissing(upstream: string, repo: string, reference: string): Promise<void> {
    await this.toBoth("clearMissing", (s) => s.clearMissing(upstream, repo, reference));
  }

  async tryLock(name: string, ttlMs: number): Promise<string | undefined> {
    const remote = await this.fromPrimary("tryLock", (s) => s.tryLock(name, ttlMs));
    if (remote.ok) return remote.value === undefined ? undefined : REMOTE_TOKEN + remote.value;
    const local = await this.fallback.tryLock(name, ttlMs);
    return local === undefined ? undefined : LOCAL_TOKEN + local;
  }

  async unlock(name: string, token: string): Promise<void> {
    if (token.startsWith(LOCAL_TOKEN)) return this.fallback.unlock(name, token.slice(LOCAL_TOKEN.length));
    // A Redis lock left while degraded is not chased: it expires by itself.
    if (token.startsWith(REMOTE_TOKEN)) await this.fromPrimary("unlock", (s) => s.unlock(name, token.slice(REMOTE_TOKEN.length)));
  }

  async deleteRepository(upstream: string, repo: string): Promise<void> {
    await this.toBoth("deleteRepository", (s) => s.deleteRepository(upstream, repo));
  }

  /** Stops probing and closes both stores (the Redis client stays open: it is the caller's). Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.detach();
    await this.probing;
    await Promise.all([this.primary.close(), this.fallback.close()]);
  }

  /** Redis's answer when ok and it answers in time; otherwise `ok: false`, having switched to degraded. */
  private async fromPrimary<T>(op: string, call: (s: RedisMetadataStore) => Promise<T>): Promise<{ ok: true; value: T } | { ok: false }> {
    if (this.current !== "ok") return { ok: false };
    try {
      return { ok: true, value: await this.bounded(op, call(this.primary)) };
    } catch (err) {
      this.degrade(err instanceof Error ? err.message : String(err));
      return { ok: false };
    }
  }

  private async toBoth(op: string, call: (s: MetadataStore) => Promise<void>): Promise<void> {
    await Promise.all([call(this.fallback), this.fromPrimary(op, call)]);
  }

  private async bounded<T>(op: string, work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`redis ${op} took longer than ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    try {
      return await Promise.race([
        work.catch((err: unknown) => {
          throw new Error(`redis ${op} failed: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
        }),
        timeout,
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  private probe(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.probing ??= this.bounded("PING", this.primary.ping())
      .then(
        () => this.setState("ok", "redis is answering"),
        (err: unknown) => this.degrade(err instanceof Error ? err.message : String(err)),
      )
      .finally(() => {
        this.probing = undefined;
      });
    return this.probing;
  }

  private degrade(reason: string): void {
    this.setState("degraded", reason);
  }

  private setState(state: MetadataStoreState, reason: string): void {
    if (this.closed) return;
    const changed = state !== this.current;
    this.current = state;
    // While degraded the reason follows the latest failure (e.g. "closed", then "ECONNREFUSED" on each retry).
    if (changed || state === "degraded") this.why = reason;
    if (!changed) return;
    for (const listener of this.listeners) {
      try {
        listener({ state, reason });
      } catch {
        // A failing metrics hook must not break the store.
      }
    }
  }
}
