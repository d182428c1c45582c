/**
 * Operator actions on the cache (docs/admin-api.md): list what is cached, purge a tag, a repository or a
 * digest, refresh a tag now, prefetch an image, cache totals, and import a bundle / list an inventory for
 * air-gapped transfer (docs/air-gapped-transfer.md). Input is validated with the same grammar as
 * registry requests, and the upstream must be one the configuration names.
 */
import type { ContentStore } from "../storage/content-store.ts";
import type { Janitor } from "../cache/janitor.ts";
import type { ManifestCache } from "../cache/manifest-cache.ts";
import type { ManifestStore } from "../storage/manifest-store.ts";
import type { MetadataStore } from "../metadata/metadata-store.ts";
import type { JobStatus, Prefetcher } from "../cache/prefetcher.ts";
import type { WarmupSets, WarmupSetStatus } from "../cache/warmup.ts";
import { RegistryError } from "../oci/errors.ts";
import { UpstreamResolver } from "../config/upstream-resolver.ts";
import { assertDigest } from "../oci/digest.ts";
import { assertName, isValidTag } from "../oci/reference.ts";
import type { Exporter, ExportPlan } from "../transfer/exporter.ts";
import type { Importer, ImportReport } from "../transfer/importer.ts";
import { inventoryFrom, takeInventory, type Inventory } from "../transfer/inventory.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { TrafficReport, TrafficTotals } from "../observability/traffic-totals.ts";
import type { PinEntry, PinList } from "../storage/pin-list.ts";
import { errorMessage } from "../caught-errors.ts";

export interface TagTarget {
  upstream: string;
  repository: string;
  tag?: string | undefined;
}

/** What `/admin/v1/export` is asked for, validated: the options of `mirror export`. */
export interface ExportRequest {
  references: string[];
  platforms: string[];
  referrers: boolean;
  /** Digest → size of the blobs the destination holds (its inventory): left out of the bundle. */
  exclude: Map<string, number> | undefined;
}

/** A bundle ready to stream: everything it holds is decided, so its length is known before the first byte. */
export interface ExportBundle {
  size: number;
  chunks: AsyncIterable<Buffer>;
}

/** References one export request may name (each is resolved, manifests fetched, before the first byte). */
const MAX_EXPORT_REFERENCES = 1000;
const PLATFORM = /^[a-z0-9]+\/[a-z0-9_]+(?:\/[a-z0-9]+)?$/;

export class AdminHandler {
  private readonly upstreams: ReadonlyMap<string, UpstreamClient>;
  private readonly resolver: UpstreamResolver<UpstreamClient>;
  private readonly manifests: ManifestCache;
  private readonly manifestStore: ManifestStore;
  private readonly store: ContentStore;
  private readonly metadata: MetadataStore;
  private readonly janitor: Janitor;
  private readonly prefetcher: Prefetcher;
  private readonly importer: Importer | undefined;
  private readonly exporter: Exporter | undefined;
  private readonly traffic: TrafficTotals | undefined;
  private readonly pinList: PinList | undefined;
  private readonly warmup: WarmupSets | undefined;

  constructor(opts: {
    upstreams: readonly UpstreamClient[];
    manifests: ManifestCache;
    manifestStore: ManifestStore;
    store: ContentStore;
    metadata: MetadataStore;
    janitor: Janitor;
    prefetcher: Prefetcher;
    importer?: Importer;
    /** Writes bundles from this mirror's caches (`/admin/v1/export`); absent: the endpoint answers 404. */
    exporter?: Exporter;
    traffic?: TrafficTotals;
    /** The run-time pins (`<storage.path>/pins.json`, as `mirror import --pin` writes): `/admin/v1/pin`, `unpin`, `pins`. */
    pins?: PinList;
    /** The configured warm-up sets (`/admin/v1/warmup`). */
    warmup?: WarmupSets;
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
    this.exporter = opts.exporter;
    this.traffic = opts.traffic;
    this.pinList = opts.pins;
    this.warmup = opts.warmup;
  }

  /** `GET /admin/v1/warmup`: every warm-up set, with its last run's per-image results. */
  warmupSets(): { sets: WarmupSetStatus[] } {
    return { sets: this.warmup?.list() ?? [] };
  }

  /** `GET /admin/v1/warmup/<name>`: one set. */
  warmupSet(name: string): WarmupSetStatus {
    const set = this.warmup?.get(name);
    if (set === undefined) throw noWarmupSet(name);
    return set;
  }

  /** `POST /admin/v1/warmup/<name>`: runs the set now, or says which run is already going (runs never overlap). */
  runWarmup(name: string): { set: string; started: boolean; run: number } {
    const started = this.warmup?.runNow(name);
    if (started === undefined) throw noWarmupSet(name);
    return { set: name, ...started };
  }

  /** `GET /admin/v1/export?reference=…&reference=…[&platform=os/arch…][&referrers=false]` (no delta: see exportBody). */
  exportQuery(query: URLSearchParams): ExportRequest {
    const referrers = query.get("referrers");
    if (referrers !== null && !["true", "false", "1", "0"].includes(referrers))
      throw new RegistryError("UNSUPPORTED", "referrers must be true or false", { status: 400 });
    return this.exportRequest({
      references: query.getAll("reference"),
      platforms: query.getAll("platform"),
      referrers: referrers === null || referrers === "true" || referrers === "1",
    });
  }

  /**
   * `POST /admin/v1/export` with `{"references": [...], "platforms"?: [...], "referrers"?: bool,
   * "excludeListing"?: <the destination's inventory>}`: the options of `mirror export`, a delta included.
   */
  exportBody(body: unknown): ExportRequest {
    const b = (body ?? {}) as Record<string, unknown>;
    if (b.referrers !== undefined && typeof b.referrers !== "boolean")
      throw new RegistryError("UNSUPPORTED", "referrers must be true or false", { status: 400 });
    let exclude: Map<string, number> | undefined;
    if (b.excludeListing !== undefined) {
      let listing: Inventory;
      try {
        listing = inventoryFrom(b.excludeListing, "excludeListing");
      } catch (err) {
        throw new RegistryError("UNSUPPORTED", errorMessage(err), { status: 400 });
      }
      exclude = new Map(listing.blobs.map((blob) => [blob.digest, blob.size]));
    }
    return {
      ...this.exportRequest({
        references: b.references,
        platforms: b.platforms ?? [],
        referrers: b.referrers !== false,
      }),
      exclude,
    };
  }

  private exportRequest(r: { references: unknown; platforms: unknown; referrers: boolean }): ExportRequest {
    const { references, platforms } = r;
    if (
      !Array.isArray(references) ||
      references.length === 0 ||
      !references.every((ref) => typeof ref === "string" && ref !== "")
    )
      throw new RegistryError(
        "NAME_INVALID",
        "one reference or more is required, e.g. docker.io/library/alpine:3.20 (reference=… in the query, or references: [...] in the body)",
      );
    if (references.length > MAX_EXPORT_REFERENCES)
      throw new RegistryError("UNSUPPORTED", `at most ${MAX_EXPORT_REFERENCES} references per export`, {
        status: 400,
      });
    if (!Array.isArray(platforms) || !platforms.every((p) => typeof p === "string" && PLATFORM.test(p)))
      throw new RegistryError("UNSUPPORTED", 'platforms must be a list like ["linux/amd64", "linux/arm64/v8"]', {
        status: 400,
      });
    return {
      references: references as string[],
      platforms: platforms as string[],
      referrers: r.referrers,
      exclude: undefined,
    };
  }

  /**
   * Plans a bundle through this mirror's caches (every manifest fetched or read now, so an unknown reference is
   * an error answered before any byte), then hands out its chunks: blobs are read from the cache or filled
   * through it as the stream is consumed, exactly as `mirror export` does on a data directory.
   */
  async exportBundle(request: ExportRequest): Promise<ExportBundle> {
    const exporter = this.exporter;
    if (!exporter) throw new RegistryError("UNSUPPORTED", "this mirror cannot export bundles", { status: 404 });
    let plan: ExportPlan;
    try {
      plan = await exporter.plan(request.references, {
        platforms: request.platforms,
        exclude: request.exclude,
        referrers: request.referrers,
      });
    } catch (err) {
      throw exportError(err);
    }
    return { size: exporter.size(plan), chunks: exporter.write(plan) };
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
    await this.store.index.complete; // answered from the whole index (store-scan.ts: a scan in the background)
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
    await this.store.index.complete;
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

  async blobs(
    query: URLSearchParams,
  ): Promise<{ total: number; blobs: Array<{ digest: string; size: number; lastAccess: string }> }> {
    await this.store.index.complete;
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
    await this.store.index.complete;
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

  /** The run-time pins in force (`pins.json`); configured pins (`storage.pinned`) are in the config. */
  async pins(): Promise<{ pins: PinEntry[] }> {
    return { pins: await this.pinFile().list() };
  }

  /**
   * `{"upstream", "repository", "tag"}`: pins the content the cached tag points at now, recorded as
   * `<upstream>/<repository>:<tag>` exactly as `mirror import --pin` does (pinning again moves the pin to the
   * tag's current digest). A tag that is not cached cannot be pinned: prefetch it first.
   */
  async pin(body: unknown): Promise<{ pinned: PinEntry }> {
    const pins = this.pinFile();
    const target = this.parse(body, true);
    const pointer = await this.metadata.getTag(target.upstream, target.repository, target.tag!);
    await this.store.index.complete;
    if (!pointer || this.store.index.sizeOf(pointer.digest) === undefined)
      throw new RegistryError(
        "MANIFEST_UNKNOWN",
        `${target.upstream}/${target.repository}:${target.tag} is not cached: prefetch it first`,
      );
    const reference = `${target.upstream}/${target.repository}:${target.tag}`;
    await pins.set([{ reference, digest: pointer.digest }]);
    const pinned = (await pins.list()).find((p) => p.reference === reference)!;
    return { pinned };
  }

  /** `{"reference": "<upstream>/<repository>:<tag>"}` as `pins` lists it: the content may be evicted again. */
  async unpin(body: unknown): Promise<{ unpinned: string }> {
    const pins = this.pinFile();
    const reference = (body as { reference?: unknown } | null)?.reference;
    if (typeof reference !== "string" || !(await pins.list()).some((p) => p.reference === reference))
      throw new RegistryError("UNSUPPORTED", `not pinned: ${JSON.stringify(String(reference).slice(0, 300))}`, {
        status: 404,
      });
    await pins.restore(new Map([[reference, undefined]]));
    return { unpinned: reference };
  }

  private pinFile(): PinList {
    if (!this.pinList) throw new RegistryError("UNSUPPORTED", "this mirror keeps no pin list", { status: 404 });
    return this.pinList;
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

/**
 * Why a reference cannot be exported, as the admin API's error JSON: the registry error behind it (an unknown
 * manifest, an upstream down) keeps its code and status, with the exporter's message naming the reference;
 * anything else is something the reference names that cannot be carried (schema 1, no platform selected).
 */
function exportError(err: unknown): RegistryError {
  const message = errorMessage(err);
  for (let e: unknown = err; e instanceof Error; e = e.cause) {
    // An upstream that refused the mirror's credentials is the upstream's problem, not the admin token's.
    if (e instanceof RegistryError)
      return e.code === "UNAUTHORIZED" || e.code === "DENIED"
        ? new RegistryError("UPSTREAM_ERROR", message, { cause: err })
        : new RegistryError(e.code, message, { status: e.status, cause: err });
  }
  return new RegistryError("MANIFEST_INVALID", message, { cause: err });
}

function noWarmupSet(name: string): RegistryError {
  return new RegistryError("UNSUPPORTED", `no warm-up set ${JSON.stringify(name.slice(0, 64))} is configured`, {
    status: 404,
  });
}
