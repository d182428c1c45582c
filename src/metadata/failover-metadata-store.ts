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
 * the mirror is idle.
 *
 * The two copies are merged, never simply overwritten, when Redis is back:
 * - Tag pointers are ordered (`supersedes`): whichever copy was checked later wins, in both directions. A newer
 *   local pointer (revalidated while Redis was away) is served and written to Redis, whose putTag refuses it if
 *   another replica has stored a newer one meanwhile; a newer Redis pointer replaces the local copy.
 * - Tags and links this replica wrote that Redis did not take (degraded, or the write failed) are remembered, up
 *   to `maxUnsynced`, and replayed to Redis from the fallback's current state once it answers again; until then
 *   Redis's "no" for one of them is answered by the fallback. Beyond the bound the oldest are not replayed: a
 *   link then costs an upstream HEAD, a tag its Redis copy is merged as above when read.
 * - Redis having no pointer at all is honoured (another replica deleted it, or it expired), except for a tag
 *   awaiting replay. Deletions and missing-records made while degraded are not replayed: another replica then
 *   serves its older pointer until its revalidation finds the tag gone, never wrong content, because the caches
 *   check the blob store.
 *
 * Give the client failFastRedisOptions(): with ioredis's defaults, commands queue while it is disconnected.
 */
import { timerDelay } from "../config/timer-delay.ts";
import { supersedes, type MetadataStore, type TagPointer } from "./metadata-store.ts";
import type { RedisMetadataStore } from "./redis-metadata-store.ts";
import { errorMessage } from "../caught-errors.ts";

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
  /** Most writes Redis did not take that are remembered for replay; default MAX_UNSYNCED. */
  maxUnsynced?: number;
}

/** Lock tokens say which store issued them, so unlock goes to the same one whatever the state is now. */
const REMOTE_TOKEN = "redis:";
const LOCAL_TOKEN = "local:";
/** Writes Redis did not take that are remembered for replay (tags and links); beyond it the oldest are dropped. */
const MAX_UNSYNCED = 100_000;

/** A tag or link written to the fallback only. The object's identity marks one write (see replay). */
type Unsynced =
  | { kind: "tag"; upstream: string; repo: string; tag: string }
  | { kind: "link"; upstream: string; repo: string; digest: string };

export class FailoverMetadataStore implements MetadataStore {
  private readonly primary: RedisMetadataStore;
  private readonly fallback: MetadataStore;
  private readonly timeoutMs: number;
  private readonly maxUnsynced: number;
  private readonly timer: NodeJS.Timeout;
  private readonly listeners = new Set<(change: MetadataStoreStateChange) => void>();
  private readonly detach: () => void;
  private current: MetadataStoreState;
  private why: string;
  private probing: Promise<void> | undefined;
  /** Tags and links Redis has not taken, oldest first, by unsyncedKey. */
  private readonly unsynced = new Map<string, Unsynced>();
  private replaying: Promise<void> | undefined;
  private closed = false;

  constructor(opts: FailoverMetadataStoreOptions) {
    this.primary = opts.primary;
    this.fallback = opts.fallback;
    this.timeoutMs = opts.timeoutMs ?? 500;
    this.maxUnsynced = opts.maxUnsynced ?? MAX_UNSYNCED;
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
    const unsynced: Unsynced = { kind: "tag", upstream, repo, tag };
    if (pointer === undefined && !this.unsynced.has(unsyncedKey(unsynced))) return undefined;
    const local = await this.fallback.getTag(upstream, repo, tag);
    if (local !== undefined && (pointer === undefined || !supersedes(pointer, local))) {
      // Checked later than what Redis holds: written here while Redis was away. It wins, and Redis learns it.
      await this.fromPrimary("putTag", (s) => s.putTag(upstream, repo, tag, local));
      return local;
    }
    if (
      pointer !== undefined &&
      (local?.digest !== pointer.digest ||
        local.mediaType !== pointer.mediaType ||
        local.checkedAt !== pointer.checkedAt)
    ) {
      await this.fallback.putTag(upstream, repo, tag, pointer);
    }
    return pointer;
  }

  async putTag(upstream: string, repo: string, tag: string, pointer: TagPointer): Promise<void> {
    const synced = await this.toBoth("putTag", (s) => s.putTag(upstream, repo, tag, pointer));
    if (!synced) this.remember({ kind: "tag", upstream, repo, tag });
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
    if (remote.value) {
      if (!(await this.fallback.hasLink(upstream, repo, digest)))
        await this.fallback.addLinks(upstream, repo, [digest]);
      return true;
    }
    // Recorded here while Redis was away and not replayed yet: the local copy knows.
    if (this.unsynced.has(unsyncedKey({ kind: "link", upstream, repo, digest })))
      return this.fallback.hasLink(upstream, repo, digest);
    return false;
  }

  async addLinks(upstream: string, repo: string, digests: readonly string[]): Promise<void> {
    const synced = await this.toBoth("addLinks", (s) => s.addLinks(upstream, repo, digests));
    if (!synced) for (const digest of digests) this.remember({ kind: "link", upstream, repo, digest });
  }

  async addProvenance(upstream: string, digests: readonly string[]): Promise<void> {
    await this.toBoth("addProvenance", (s) => s.addProvenance(upstream, digests));
  }

  async provenance(digest: string): Promise<string[]> {
    const remote = await this.fromPrimary("provenance", (s) => s.provenance(digest));
    if (!remote.ok) return this.fallback.provenance(digest);
    const local = await this.fallback.provenance(digest);
    const unknownHere = remote.value.filter((upstream) => !local.includes(upstream));
    for (const upstream of unknownHere) await this.fallback.addProvenance(upstream, [digest]);
    return remote.value;
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
    if (token.startsWith(REMOTE_TOKEN))
      await this.fromPrimary("unlock", (s) => s.unlock(name, token.slice(REMOTE_TOKEN.length)));
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
    await this.replaying;
    await Promise.all([this.primary.close(), this.fallback.close()]);
  }

  /** Redis's answer when ok and it answers in time; otherwise `ok: false`, having switched to degraded. */
  private async fromPrimary<T>(
    op: string,
    call: (s: RedisMetadataStore) => Promise<T>,
  ): Promise<{ ok: true; value: T } | { ok: false }> {
    if (this.current !== "ok") return { ok: false };
    try {
      return { ok: true, value: await this.bounded(op, call(this.primary)) };
    } catch (err) {
      this.degrade(errorMessage(err));
      return { ok: false };
    }
  }

  /** Writes to both stores; true if Redis took the write too. */
  private async toBoth(op: string, call: (s: MetadataStore) => Promise<void>): Promise<boolean> {
    const [, remote] = await Promise.all([call(this.fallback), this.fromPrimary(op, call)]);
    return remote.ok;
  }

  /** Notes a write only the fallback took, for replay; the newest are kept when over `maxUnsynced`. */
  private remember(write: Unsynced): void {
    const key = unsyncedKey(write);
    this.unsynced.delete(key);
    this.unsynced.set(key, write);
    if (this.unsynced.size > this.maxUnsynced) this.unsynced.delete(this.unsynced.keys().next().value!);
  }

  /**
   * Writes what the fallback now holds for every remembered tag and link to Redis (putTag orders the tags there),
   * oldest first; stops when Redis fails again, leaving the rest for the next recovery. An entry is forgotten
   * only if no newer write of the same tag or link replaced it meanwhile. Ends once a pass finds nothing left:
   * new entries only come from failed Redis writes, which switch to degraded and so end the loop.
   */
  private async replay(): Promise<void> {
    while (this.unsynced.size > 0 && this.current === "ok" && !this.closed) {
      for (const [key, write] of [...this.unsynced]) {
        if (this.current !== "ok" || this.closed) return;
        let synced = true;
        if (write.kind === "tag") {
          const local = await this.fallback.getTag(write.upstream, write.repo, write.tag);
          if (local !== undefined)
            synced = (await this.fromPrimary("putTag", (s) => s.putTag(write.upstream, write.repo, write.tag, local)))
              .ok;
        } else if (await this.fallback.hasLink(write.upstream, write.repo, write.digest)) {
          synced = (await this.fromPrimary("addLinks", (s) => s.addLinks(write.upstream, write.repo, [write.digest])))
            .ok;
        }
        if (!synced) return;
        if (this.unsynced.get(key) === write) this.unsynced.delete(key);
      }
    }
  }

  private async bounded<T>(op: string, work: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`redis ${op} took longer than ${this.timeoutMs} ms`)),
        timerDelay(this.timeoutMs),
      );
    });
    try {
      return await Promise.race([
        work.catch((err: unknown) => {
          throw new Error(`redis ${op} failed: ${errorMessage(err)}`, { cause: err });
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
        (err: unknown) => this.degrade(errorMessage(err)),
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
    if (state === "ok" && this.unsynced.size > 0) {
      // Fallback errors end the replay; what is left waits for the next recovery.
      this.replaying ??= this.replay()
        .catch(() => undefined)
        .finally(() => {
          this.replaying = undefined;
        });
    }
    for (const listener of this.listeners) {
      try {
        listener({ state, reason });
      } catch {
        // A failing metrics hook must not break the store.
      }
    }
  }
}

function unsyncedKey(write: Unsynced): string {
  const item = write.kind === "tag" ? write.tag : write.digest;
  return `${write.kind}\u0000${write.upstream}\u0000${write.repo}\u0000${item}`;
}
