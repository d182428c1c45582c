/**
 * The lower half of the composition root: everything below HTTP, over one data directory. The mirror builds
 * its HTTP side on it (app.ts); the CLI commands that work on a data directory (`mirror export|import|inventory
 * --data-dir`) use it alone. It sits beside app.ts, not inside a layer's folder, because it wires the layers
 * together (storage, fill, metadata, upstream clients, the caches, and the importer over them), which only the
 * composition root does.
 */
import type { S3Client } from "@aws-sdk/client-s3";
import type { Logger } from "pino";
import { BlobCache } from "./cache/blob-cache.ts";
import { Janitor } from "./cache/janitor.ts";
import { ManifestCache } from "./cache/manifest-cache.ts";
import { manifestCachePinResolver } from "./cache/pin-resolver.ts";
import { ReferrersCache } from "./cache/referrers-cache.ts";
import { CacheRules } from "./config/cache-rules.ts";
import type { Config } from "./config/schema.ts";
import { configuredPins } from "./config/upstream-resolver.ts";
import { FillCoordinator } from "./fill/fill-coordinator.ts";
import { ReceivePacer } from "./fill/receive-pacer.ts";
import type { MetadataStore } from "./metadata/metadata-store.ts";
import { openMetadataStore, type MetadataStoreState } from "./metadata/open-metadata-store.ts";
import type { Metrics } from "./observability/metrics.ts";
import { BlobStore } from "./storage/blob-store.ts";
import { DataDirLock } from "./storage/data-dir-lock.ts";
import { BACKGROUND_SCAN_MIN_OBJECTS } from "./storage/store-scan.ts";
import { BufferPool } from "./storage/file-range-stream.ts";
import { ManifestStore } from "./storage/manifest-store.ts";
import { PinList } from "./storage/pin-list.ts";
import { FleetContentRecords, whenRedisReady } from "./storage/fleet-content-records.ts";
import type { ContentStore } from "./storage/content-store.ts";
import type { Importer } from "./transfer/importer.ts";
import { UpstreamClient } from "./upstream/upstream-client.ts";
import { PeerClient } from "./upstream/peer-client.ts";
import { FillLeases } from "./fill/fill-lease.ts";
import { FleetFills } from "./fill/fleet-fills.ts";
import { SecretFile } from "./config/secret-file.ts";
import { createHash } from "node:crypto";
import type { Redis } from "ioredis";
import { errorMessage } from "./caught-errors.ts";

/** How long a presigned GET a client is redirected to stays valid (`storage.s3.redirect`): it starts at once. */
const S3_REDIRECT_SECONDS = 300;
/** How often the object store is probed (HeadBucket): how soon an outage is seen without traffic, and its end. */
const OBJECT_STORE_PROBE_MS = 5_000;

/** The cache layer without the HTTP server: what the mirror and the CLI commands that work on a cache share. */
export interface CacheLayer {
  readonly log: Logger;
  readonly metrics: Metrics;
  /** Blobs and manifests: on the filesystem under `storage.path`, or in the `storage.s3` bucket. */
  readonly blobStore: ContentStore;
  readonly manifestStore: ManifestStore;
  readonly metadata: MetadataStore;
  readonly janitor: Janitor;
  readonly fills: FillCoordinator;
  readonly upstreams: readonly UpstreamClient[];
  readonly manifestCache: ManifestCache;
  /** Referrers lists (OCI 1.1), cached like tags beside them. */
  readonly referrersCache: ReferrersCache;
  readonly blobCache: BlobCache;
  /** Pins recorded by imports (`<storage.path>/pins.json`), honoured by the janitor. */
  readonly pins: PinList;
  /** Adds what idle expiry must keep besides pins (warm-up sets): manifest digests, with everything they reach. */
  keepFromIdleExpiry(source: () => Iterable<string>): void;
  readonly describeState: () => MetadataStoreState;
  /** With `cluster`: the replicas' shared secret (the sha256 of it, while usable) for the peer endpoint. */
  readonly cluster: ClusterMembership | undefined;
  /** With `storage.s3`: whether the object store can be reached (object-store-health.ts). */
  readonly objectStore: { readonly up: boolean; readonly reason: string | undefined } | undefined;
  /** Stops the janitor and lets running fills finish, bounded by `shutdownGrace`. Done once, however often asked. */
  drain(): Promise<void>;
  /**
   * After drain(): closes the upstream pools (cutting off what still runs past the grace), then the metadata
   * store, then releases the data directory's lock. Each part is stopped once, however often this is called.
   */
  close(): Promise<void>;
}

/**
 * Builds the stores, the janitor, the fill coordinator, one client per upstream and the read-through caches
 * over `config.storage.path`, after taking that directory's lock (DataDirLockedError if another process holds
 * it): the mirror at start, and `mirror export|import|inventory` working on a data directory (`purpose`, which
 * the lock names; only the mirror itself, without one, expires idle content, and serves while it scans a large
 * store after a crash, storage/store-scan.ts: a command reads the whole index at once).
 */
export async function createCacheLayer(
  config: Config,
  opts: { log: Logger; metrics: Metrics; purpose?: string },
): Promise<CacheLayer> {
  const { log, metrics } = opts;
  // First of all: BlobStore.init() deletes temp files, which are another process's downloads if it runs here.
  const lock = await DataDirLock.acquire(config.storage.path, opts.purpose ?? `mirror (listening on ${config.listen})`);
  let s3Client: S3Client | undefined;
  /** Signs redirect mode's URLs for the endpoint clients reach (`storage.s3.redirectEndpoint`); makes no requests. */
  let presignClient: S3Client | undefined;
  try {
    const rules = new CacheRules(config);
    const touchIntervalMs = touchIntervalFor(config, rules);
    const s3 = config.storage.s3;
    // With an s3 block the content lives in the bucket; storage.path keeps the temp files (and the journal).
    // The S3 client is loaded only with an s3 block: imported, the AWS SDK costs ~30 MiB resident that a mirror
    // on its own disk never uses (test/integration/lazy-loading.test.ts).
    const objectStore = s3 ? await import("./storage/s3-content-store.ts") : undefined;
    s3Client = s3 && objectStore ? await objectStore.createS3Client(s3) : undefined;
    presignClient =
      s3?.redirectEndpoint && objectStore
        ? await objectStore.createS3Client({ ...s3, endpoint: s3.redirectEndpoint })
        : undefined;
    const objectStoreHealth =
      s3 && s3Client && objectStore
        ? new objectStore.ObjectStoreHealth({
            client: s3Client,
            bucket: s3.bucket,
            onFailure: () => metrics.objectStoreFailures.inc(),
            onChange: (up, reason) =>
              up
                ? log.info({ bucket: s3.bucket }, "object store is back: caching resumes")
                : log.error(
                    { bucket: s3.bucket, err: reason },
                    "object store unavailable: streaming misses and hits from upstreams without caching",
                  ),
          })
        : undefined;
    if (objectStoreHealth) metrics.showObjectStore(objectStoreHealth);
    // One pacer for every body received from an upstream (fills and verified pass-throughs alike) or, on S3, from
    // the object store.
    const pacer = new ReceivePacer();
    const blobStore: ContentStore & { readonly root: string; readonly tempDir: string } =
      s3 && s3Client && objectStore
        ? new objectStore.S3ContentStore({
            client: s3Client,
            bucket: s3.bucket,
            prefix: s3.prefix,
            root: config.storage.path,
            touchIntervalMs,
            readTimeoutMs: s3.readTimeout,
            ...(s3.redirect ? { redirectSeconds: S3_REDIRECT_SECONDS } : {}),
            ...(presignClient ? { presignClient } : {}),
            health: objectStoreHealth,
            pacer,
            // Replicas share the prefix: one starting must not abort another's upload in progress (none outlives
            // its fill's timeout); younger leftovers go by the bucket's lifecycle rule.
            ...(config.cluster ? { leftoverUploadAfterMs: config.fill.timeout + 60_000 } : {}),
          })
        : new BlobStore(config.storage.path, {
            touchIntervalMs,
            ...(opts.purpose === undefined ? { backgroundScanFrom: BACKGROUND_SCAN_MIN_OBJECTS } : {}),
          });
    const { background, ...scan } = await blobStore.init();
    if (background) {
      log.info(
        { snapshot: scan.snapshot },
        "cache index: scanning the cache in the background (no index saved by a clean stop); serving meanwhile",
      );
      background.then(
        (done) => log.info({ ...done, removedTempFiles: scan.removedTempFiles }, "cache index rebuilt"),
        (err: unknown) =>
          log.error(
            { err: errorMessage(err) },
            "cache index incomplete: the scan failed; the budget and idle expiry count only what was served since",
          ),
      );
    } else log.info({ ...scan, ...(s3 ? { bucket: s3.bucket, prefix: s3.prefix } : {}) }, "cache index rebuilt");
    if (scan.removedTempFiles > 0)
      log.info(
        { removedTempFiles: scan.removedTempFiles },
        "removed unverified temp files (and object store uploads) left by a previous run",
      );
    const manifestStore =
      objectStore && blobStore instanceof objectStore.S3ContentStore
        ? new ManifestStore(blobStore, { mediaTypes: new objectStore.S3MediaTypes(blobStore) })
        : new ManifestStore(blobStore);
    await manifestStore.init();
    const { metadata, describeState, closeMetadata, redis } = await openMetadataStore(config, log);
    const pins = new PinList(config.storage.path);
    // A bucket shared through Redis: storage.maxSize is the fleet's (last access and sizes in Redis, one replica
    // evicting at a time: janitor.ts). The records learn this replica's commits and pulls through its index.
    const fleetRecords =
      s3 && redis && config.redis
        ? new FleetContentRecords({
            redis,
            keyPrefix: config.redis.keyPrefix,
            replica: config.cluster?.advertiseUrl,
            log,
          })
        : undefined;
    if (fleetRecords) {
      blobStore.index.observe(fleetRecords);
      fleetRecords.start();
      try {
        await whenRedisReady(redis!, 2_000);
        await fleetRecords.seed(blobStore.index.mostRecentlyUsed());
      } catch (err) {
        // Recorded again from a listing once Redis answers with no records (janitor.ts, fleetUpkeep).
        log.warn({ err: errorMessage(err) }, "fleet budget: the bucket's objects not recorded in Redis at start");
      }
    }
    const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u, { metrics }));
    const manifestCache = new ManifestCache({
      manifests: manifestStore,
      metadata,
      maxBytes: config.limits.manifestMaxBytes,
      metrics,
      onNoSpace: (err) => janitor.noteNoSpace(err),
      rules,
      noteIdleLimit: (digest, ms) => janitor.noteIdleLimit(digest, ms),
    });
    const referrersCache = new ReferrersCache({
      manifestCache,
      manifests: manifestStore,
      metadata,
      maxBytes: config.limits.manifestMaxBytes,
      metrics,
      onNoSpace: (err) => janitor.noteNoSpace(err),
      rules,
    });
    // What idle expiry keeps besides pins, added once the sources exist (warm-up sets: app.ts).
    const keptFromIdleExpiry: Array<() => Iterable<string>> = [];
    const janitor: Janitor = new Janitor({
      store: blobStore,
      // In S3 mode the disk holds temp files only: eviction from the bucket frees no disk.
      contentOnDisk: s3 === undefined,
      manifests: manifestStore,
      metadata,
      budget: { maxSize: config.storage.maxSize, high: config.storage.highWatermark, low: config.storage.lowWatermark },
      pins: configuredPins(config),
      pinList: pins,
      // A pinned tag whose pointer is gone is fetched again from its upstream at the next periodic check.
      resolvePin: manifestCachePinResolver(manifestCache, upstreams),
      manifestMaxBytes: config.limits.manifestMaxBytes,
      log,
      metrics,
      // Only the mirror itself expires idle content: `mirror inventory|export|import --data-dir` on a stopped
      // mirror's directory must not delete what nobody pulled while it was stopped.
      maxIdle: config.storage.maxIdle,
      idleExpiry: opts.purpose === undefined,
      // Tag pointers in a shared Redis are every replica's: one replica's idle expiry does not forget them (the
      // others may hold the manifest; a pointer without its manifest costs a fetch by digest, and Redis expires
      // unused pointers itself).
      upstreamNames: config.redis === undefined ? upstreams.map((u) => u.name) : [],
      idleExempt: async () => keptFromIdleExpiry.flatMap((source) => [...source()]),
      fleet: fleetRecords,
    });
    const fills = new FillCoordinator(
      {
        store: blobStore,
        buffers: new BufferPool(),
        pacer,
        // While the object store is down nothing is cached: every miss passes through, verified.
        admission: {
          admit: (size) => (objectStoreHealth?.up === false ? Promise.resolve(undefined) : janitor.admit(size)),
          noSpace: (err) => janitor.noteNoSpace(err),
        },
        timeoutMs: config.fill.timeout,
        maxReaders: config.limits.maxReadersPerFill,
        log,
        metrics,
      },
      {
        limits: {
          maxFills: (upstream) => config.upstreams[upstream]?.maxConcurrentFills ?? 16,
          maxQueued: config.limits.maxQueuedFills,
        },
      },
    );
    blobStore.onCommit(() => janitor.committed());
    janitor.start(config.storage.checkInterval);
    objectStoreHealth?.start(OBJECT_STORE_PROBE_MS);
    // Not waiting on upstreams: a down one would hold up the start for its whole deadline. A pinned tag whose
    // pointer is gone is asked at the first periodic check (eviction waits for it if nothing is recorded).
    // While the index is built in the background the janitor waits for it: the first check is not awaited then.
    const firstCheck = janitor.check({ askResolver: false });
    if (background)
      firstCheck.catch((err: unknown) =>
        log.warn({ err: errorMessage(err) }, "first cache check failed: it is tried again at the next check"),
      );
    else await firstCheck;
    for (const u of upstreams) {
      if (u.config.tls.insecure)
        log.warn({ upstream: u.name }, "TLS certificate verification is disabled for this upstream");
      if (u.config.offline)
        log.info({ upstream: u.name }, "upstream is offline by configuration: serving cached content only");
    }
    // Only the mirror itself is a replica of the fleet: `mirror export|import|inventory` on a data directory serves
    // no peer and follows none, so it neither reads the cluster secret nor takes fill leases.
    const cluster = opts.purpose === undefined ? await openCluster(config, { redis, log, metrics }) : undefined;
    const blobCache = new BlobCache({
      store: blobStore,
      fills,
      metadata,
      pacer,
      metrics,
      rules,
      noteIdleLimit: (digest, ms) => janitor.noteIdleLimit(digest, ms),
      fleet: cluster?.fleet,
    });
    // Saved last, after the downloads ended (their commits) and the janitor stopped (its deletes): the next start
    // reads it instead of scanning what did not change since. Without it, that start scans everything.
    const saveIndex = async () => {
      if (!blobStore.saveIndex) return;
      const started = performance.now();
      try {
        const saved = await blobStore.saveIndex();
        log.info({ ...saved, ms: Math.round(performance.now() - started) }, "cache index saved for the next start");
      } catch (err) {
        log.warn({ err: errorMessage(err) }, "cache index not saved: the next start scans the cache");
      }
    };
    let draining: Promise<void> | undefined;
    const drain = () => {
      draining ??= (async () => {
        janitor.stop();
        objectStoreHealth?.stop();
        await fills.drain(config.shutdownGrace);
        await janitor.flush();
        await saveIndex();
        await fleetRecords?.stop();
      })();
      return draining;
    };
    let closing: Promise<void> | undefined;
    return {
      log,
      metrics,
      blobStore,
      manifestStore,
      metadata,
      janitor,
      fills,
      upstreams,
      manifestCache,
      referrersCache,
      blobCache,
      pins,
      describeState,
      cluster,
      objectStore: objectStoreHealth,
      keepFromIdleExpiry: (source) => void keptFromIdleExpiry.push(source),
      drain,
      close() {
        closing ??= (async () => {
          await drain();
          await Promise.all(upstreams.map((u) => u.close()));
          await cluster?.close();
          await closeMetadata();
          s3Client?.destroy();
          presignClient?.destroy();
          await lock.release();
        })();
        return closing;
      },
    };
  } catch (err) {
    s3Client?.destroy();
    presignClient?.destroy();
    await lock.release();
    throw err;
  }
}

/** The bundle importer over a cache layer: the admin endpoint and `mirror import --data-dir` use the same one. */
export async function createImporter(layer: CacheLayer, config: Config): Promise<Importer> {
  // Imported when asked for (the admin API with an admin token, `mirror import`), not by every start.
  const { Importer } = await import("./transfer/importer.ts");
  return new Importer({
    store: layer.blobStore,
    manifests: layer.manifestStore,
    metadata: layer.metadata,
    // Held by each blob's writer until it commits or is closed, as fills hold theirs.
    admit: (size) => layer.janitor.admit(size),
    pins: layer.pins,
    referrers: layer.referrersCache,
    upstreams: layer.upstreams,
    manifestMaxBytes: config.limits.manifestMaxBytes,
    log: layer.log,
  });
}

/** This replica's part in a fleet (`cluster`): where its downloads come from, and the secret its peers sign with. */
export interface ClusterMembership {
  readonly fleet: FleetFills;
  /** The sha256 of the cluster secret, or undefined while `cluster.secretFile` holds none usable. */
  readonly peerKey: () => Buffer | undefined;
  /** Why the secret is unusable (then this replica neither serves nor follows peers), for /readyz. */
  readonly problem: () => string | undefined;
  close(): Promise<void>;
}

/** The fleet's parts when `cluster` is configured (the config loader made sure `redis` is too); else undefined. */
async function openCluster(
  config: Config,
  opts: { redis: Redis | undefined; log: Logger; metrics: Metrics },
): Promise<ClusterMembership | undefined> {
  const { cluster, redis: redisConfig } = config;
  if (cluster === undefined || opts.redis === undefined || redisConfig === undefined) return undefined;
  const inline = cluster.secret !== undefined ? createHash("sha256").update(cluster.secret).digest() : undefined;
  const file =
    cluster.secretFile !== undefined
      ? await SecretFile.open({
          path: cluster.secretFile,
          key: "cluster.secretFile",
          what: "the cluster secret",
          log: opts.log,
        })
      : undefined;
  const peerKey = () => inline ?? file?.digest;
  const peers = new PeerClient({ key: peerKey, connectTimeoutMs: 5_000, bodyIdleMs: 60_000 });
  const leases = new FillLeases({
    redis: opts.redis,
    keyPrefix: redisConfig.keyPrefix,
    ttlMs: cluster.leaseTtl,
    advertiseUrl: cluster.advertiseUrl,
    log: opts.log,
  });
  return {
    fleet: new FleetFills({ leases, peers, log: opts.log, metrics: opts.metrics }),
    peerKey,
    problem: () => file?.problem,
    async close() {
      file?.close();
      await peers.close();
    },
  };
}

/**
 * How often a pull is recorded as the object's access time (the file's mtime, cache-index.ts): every 10 minutes
 * at most, and at least ten times per idle limit, so that after a restart an object's idle time is off by at
 * most a tenth of its limit (while running, the index knows each last use exactly).
 */
function touchIntervalFor(config: Config, rules: CacheRules): number {
  const limits = [config.storage.maxIdle, ...rules.maxIdles].filter((l): l is number => l !== undefined && l > 0);
  return Math.max(100, Math.min(10 * 60_000, ...limits.map((l) => Math.floor(l / 10))));
}
