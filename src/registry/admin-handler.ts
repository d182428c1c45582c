/**
 * Operator actions on the cache (docs/admin-api.md): list what is cached, purge a tag, a repository or a
 * digest, refresh a tag now, prefetch an image, cache totals, and import a bundle / list an inventory for
 * air-gapped transfer (docs/air-gapped-transfer.md). Input is validated with the same grammar as
 * registry requests, and the upstream must be one the configuration names.
 */
import type { BlobStore } from "../storage/blob-store.ts";
import type { Janitor } from "../cache/janitor.ts";
import type { ManifestCache } from "../cache/manifest-cache.ts";
import type { ManifestStore } from "../storage/manifest-store.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import type { JobStatus, Prefetcher } from "../cache/prefetcher.ts";
import { RegistryError } from "../oci/errors.ts";
import { UpstreamResolver } from "../config/upstream-resolver.ts";
import { assertDigest } from "../oci/digest.ts";
import { assertName, isValidTag } from "../oci/reference.ts";
import type { Importer, ImportReport } from "../transfer/importer.ts";
import { takeInventory, type Inventory } from "../transfer/inventory.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { TrafficReport, TrafficTotals } from "../observability/traffic-totals.ts";

export interface TagTarget {
  upstream: string;
  repository: string;
  tag?: string | undefined;
}

export class AdminHandler {
  private readonly upstreams: ReadonlyMap<string, UpstreamClient>;
  private readonly resolver: UpstreamResolver<UpstreamClient>;
  private readonly manifests: ManifestCache;
  private readonly manifestStore: ManifestStore;
  private readonly store: BlobStore;
  private readonly metadata: MetadataStore;
  private readonly janitor: Janitor;
  private readonly prefetcher: Prefetcher;
  private readonly importer: Importer | undefined;
  private readonly traffic: TrafficTotals | undefined;

  constructor(opts: {
    upstreams: readonly UpstreamClient[];
    manifests: ManifestCache;
    manifestStore: ManifestStore;
    store: BlobStore;
    metadata: MetadataStore;
    janitor: Janitor;
    prefetcher: Prefetcher;
    importer?: Importer;
    traffic?: TrafficTotals;
  }) {
    this.upstreams = new Map(opts.upstreams.map((u) => [u.name, u]));
    this.resolver = new UpstreamResolver(opts.upstreams);
    this.manifests = opts.manifests;
    this.manifestStore = opts.manifestStore;
    this.store = opts.store;
    this.metadata = opts.metadata;
    this.janitor = opts.janitor;
    this.prefetcher = opts.prefetcher;
    this.importer = opts.importer;
    this.traffic = opts.traffic;
  }

  /** A bundle (tar stream) into the cache; `?pin=true` pins what it imports. Answers with the import report. */
  async import(bundle: AsyncIterable<Buffer>, query: URLSearchParams): Promise<ImportReport> {
    if (!this.importer) throw new RegistryError("UNSUPPORTED", "this mirror cannot import bundles", { status: 404 });
    const pin = query.get("pin");
    if (pin !== null && !["true", "false", "1", "0"].includes(pin))
      throw new RegistryError("UNSUPPORTED", "pin must be true or false", { status: 400 });
    return this.importer.import(bundle, { pin: pin === "true" || pin === "1" });
  }

  /** What the mirror holds (docs/air-gapped-transfer.md): the input of a delta export. */
  async inventory(): Promise<Inventory> {
    return takeInventory({ store: this.store, metadata: this.metadata, upstreams: [...this.upstreams.keys()] });
  }

  async purge(body: unknown): Promise<{ purged: TagTarget }> {
    const target = this.parse(body, false);
    await this.manifests.purge(this.upstreams.get(target.upstream)!, target.repository, target.tag);
    return { purged: target };
  }

  async refresh(body: unknown): Promise<{ refreshed: TagTarget; digest: string; mediaType: string; source: string }> {
    const target = this.parse(body, true);
    const { manifest, source } = await this.manifests.refresh(
      this.upstreams.get(target.upstream)!,
      target.repository,
      target.tag!,
    );
    return { refreshed: target, digest: manifest.digest, mediaType: manifest.mediaType, source };
  }

  /** What the cache holds, and the traffic totals (docs/metrics.md#totals) since start and in all. */
  async totals(): Promise<{
    bytes: number;
    objects: number;
    maxSize: number | null;
    writable: boolean;
    traffic?: TrafficReport;
  }> {
    const s = this.janitor.state;
    return {
      bytes: s.bytes,
      objects: s.objects,
      maxSize: s.maxSize ?? null,
      writable: s.writable,
      ...(this.traffic ? { traffic: await this.traffic.report() } : {}),
    };
  }

  async repositories(
    query: URLSearchParams,
  ): Promise<{ repositories: Array<{ upstream: string; repository: string; tags: number }> }> {
    const only = query.get("upstream");
    if (only !== null) this.upstream(only);
    const out: Array<{ upstream: string; repository: string; tags: number }> = [];
    for (const name of only !== null ? [only] : [...this.upstreams.keys()]) {
      for (const repository of (await this.metadata.listRepositories(name)).sort()) {
        out.push({
          upstream: name,
          repository,
          tags: (await this.metadata.listTags(name, repository)).filter(isValidTag).length,
        });
      }
    }
    return { repositories: out };
  }

  async tags(query: URLSearchParams): Promise<{
    tags: Array<{
      tag: string;
      digest: string;
      mediaType: string;
      checkedAt: string;
      cached: boolean;
      size: number | null;
    }>;
  }> {
    const upstream = this.upstream(query.get("upstream") ?? "").name;
    const repository = query.get("repository") ?? "";
    assertName(repository);
    const out = [];
    for (const tag of (await this.metadata.listTags(upstream, repository)).filter(isValidTag).sort()) {
      const p = await this.metadata.getTag(upstream, repository, tag);
      if (!p) continue;
      const size = this.store.index.sizeOf(p.digest);
      out.push({
        tag,
        digest: p.digest,
        mediaType: p.mediaType,
        checkedAt: new Date(p.checkedAt).toISOString(),
        cached: size !== undefined,
        size: size ?? null,
      });
    }
    return { tags: out };
  }

  blobs(query: URLSearchParams): { total: number; blobs: Array<{ digest: string; size: number; lastAccess: string }> } {
    const limit = Math.min(Math.max(Number(query.get("limit") ?? 100) || 100, 1), 10_000);
    const out: Array<{ digest: string; size: number; lastAccess: string }> = [];
    for (const entry of this.store.index.mostRecentlyUsed()) {
      if (out.length >= limit) break;
      out.push({ digest: entry.digest, size: entry.size, lastAccess: new Date(entry.lastAccess).toISOString() });
    }
    return { total: this.store.index.objects, blobs: out };
  }

  async deleteBlob(digest: string): Promise<{ deleted: string; bytes: number }> {
    assertDigest(digest);
    const size = this.store.index.sizeOf(digest);
    if (size === undefined) throw new RegistryError("BLOB_UNKNOWN", `${digest} is not cached`);
    await this.store.delete(digest);
    await this.manifestStore.forget(digest);
    return { deleted: digest, bytes: size };
  }

  /**
   * `{"reference": "docker.io/library/alpine:3.20", "platforms": ["linux/amd64"]}` (platforms optional); the
   * reference as `mirror export` reads it (`alpine:3.20` is the default upstream's).
   */
  prefetch(body: unknown): JobStatus {
    const b = (body ?? {}) as { reference?: unknown; platforms?: unknown };
    if (typeof b.reference !== "string")
      throw new RegistryError("NAME_INVALID", "reference is required, e.g. docker.io/library/alpine:3.20");
    const platforms = b.platforms === undefined ? [] : b.platforms;
    if (
      !Array.isArray(platforms) ||
      !platforms.every((p) => typeof p === "string" && /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/.test(p))
    ) {
      throw new RegistryError("UNSUPPORTED", 'platforms must be a list like ["linux/amd64", "linux/arm64/v8"]', {
        status: 400,
      });
    }
    // The grammar of `mirror export` and of docker: a name without a configured upstream is the default one's.
    const { upstream, repository, reference } = this.resolver.reference(b.reference);
    return this.prefetcher.start({ upstream, repository, reference, platforms: platforms as string[] });
  }

  job(id: string): JobStatus {
    const job = this.prefetcher.status(id);
    if (!job) throw new RegistryError("UNSUPPORTED", `no job ${id.slice(0, 64)}`, { status: 404 });
    return job;
  }

  private upstream(name: string): UpstreamClient {
    const upstream = this.upstreams.get(name);
    if (!upstream)
      throw new RegistryError(
        "NAME_UNKNOWN",
        `upstream must name a configured upstream (${[...this.upstreams.keys()].join(", ")})`,
      );
    return upstream;
  }

  private parse(body: unknown, tagRequired: boolean): TagTarget {
    const b = (body ?? {}) as Record<string, unknown>;
    const upstream = this.upstream(typeof b.upstream === "string" ? b.upstream : "").name;
    const repository = typeof b.repository === "string" ? b.repository : undefined;
    const tag = typeof b.tag === "string" ? b.tag : undefined;
    if (repository === undefined)
      throw new RegistryError("NAME_INVALID", "repository is required, as the upstream names it (e.g. library/alpine)");
    assertName(repository);
    if (tag !== undefined && !isValidTag(tag))
      throw new RegistryError("TAG_INVALID", `invalid tag: ${JSON.stringify(tag.slice(0, 200))}`);
    if (tagRequired && tag === undefined) throw new RegistryError("TAG_INVALID", "tag is required");
    return { upstream, repository, tag };
  }
}
