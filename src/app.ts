/**
 * The composition root: the only module that sees every layer. It builds the stores, the fill coordinator, one
 * client per configured upstream, the handlers and the Koa app, passing each its collaborators. Nothing is a
 * module-level singleton, so a test can run several mirrors in one process.
 */
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Redis } from "ioredis";
import Koa from "koa";
import { pino, type Logger } from "pino";
import { Registry } from "prom-client";
import { BlobCache } from "./cache/blob-cache.ts";
import { BlobStore } from "./storage/blob-store.ts";
import { DataDirLock } from "./storage/data-dir-lock.ts";
import { FillCoordinator } from "./fill/fill-coordinator.ts";
import { Janitor } from "./cache/janitor.ts";
import { Prefetcher } from "./cache/prefetcher.ts";
import { ManifestCache } from "./cache/manifest-cache.ts";
import { ManifestStore } from "./storage/manifest-store.ts";
import { FailoverMetadataStore } from "./metadata/failover-metadata-store.ts";
import { EmbeddedMetadataStore } from "./metadata/embedded-metadata-store.ts";
import type { MetadataStore } from "./metadata/metadata-store.ts";
import { PinList } from "./storage/pin-list.ts";
import { manifestCachePinResolver } from "./cache/pin-resolver.ts";
import { failFastRedisOptions, RedisMetadataStore } from "./metadata/redis-metadata-store.ts";
import { longDurationWarnings } from "./config/load.ts";
import type { Config } from "./config/schema.ts";
import { SecretFile } from "./config/secret-file.ts";
import { configuredPins, UpstreamResolver } from "./config/upstream-resolver.ts";
import { adminRouter } from "./http/admin-router.ts";
import { ClientAuth } from "./http/client-auth.ts";
import { clientConcurrency } from "./http/client-concurrency.ts";
import { errorMiddleware, onAppError } from "./http/error-middleware.ts";
import { requestContext, type RequestState } from "./http/request-context.ts";
import { createRouter } from "./http/router.ts";
import { createRegistryServer } from "./http/server.ts";
import { AccessPolicy } from "./registry/access-policy.ts";
import { AdminHandler } from "./registry/admin-handler.ts";
import { BlobHandler } from "./registry/blob-handler.ts";
import { ManifestHandler } from "./registry/manifest-handler.ts";
import { TagsHandler } from "./registry/tags-handler.ts";
import { Metrics } from "./observability/metrics.ts";
import { Importer } from "./transfer/importer.ts";
import { UpstreamClient } from "./upstream/upstream-client.ts";

export interface Mirror {
  readonly app: Koa<RequestState>;
  readonly config: Config;
  readonly log: Logger;
  /** Starts listening on `config.listen`; resolves with the bound address (port 0 picks a free one). */
  listen(): Promise<AddressInfo>;
  /** Stops accepting requests, lets in-flight fills finish (bounded by `shutdownGrace`), closes upstream pools, unlocks the data directory. */
  close(): Promise<void>;
  /** Fills still downloading (for shutdown and tests). */
  readonly fillsInFlight: number;
  readonly blobStore: BlobStore;
  readonly metrics: Metrics;
  /** The separate metrics listener's address, when `metrics.listen` is set (after `listen()`). */
  readonly metricsAddress: AddressInfo | undefined;
}

export async function createMirror(config: Config, opts: { log?: Logger; processMetrics?: boolean } = {}): Promise<Mirror> {
  const log = opts.log ?? pino({ level: config.log.level });
  // "fill.timeout: 25d" is kept as written, but every timer waits at most 24.8 days: say so once, naming the key.
  for (const long of longDurationWarnings(config)) log.warn({ key: long.key, ms: long.ms }, long.message);
  const metrics = new Metrics(new Registry(), { processMetrics: opts.processMetrics });
  const layer = await createCacheLayer(config, { log, metrics });
  // A mirror that fails to assemble (a bad token or htpasswd file) must not keep its data directory locked.
  return assembleMirror(config, layer).catch(async (err: unknown) => {
    await layer.close();
    throw err;
  });
}

/** The HTTP side over a cache layer: handlers, routers, the Koa app and the listeners. */
async function assembleMirror(config: Config, layer: CacheLayer): Promise<Mirror> {
  const { log, metrics, blobStore, manifestStore, metadata, describeState, janitor, fills, upstreams, manifestCache, blobCache } = layer;
  metrics.onScrape(() => {
    const state = describeState();
    metrics.metadataStoreUp.set({ store: state.store }, state.degraded ? 0 : 1);
    const cache = janitor.state;
    metrics.cacheBytes.set(cache.bytes);
    metrics.cacheObjects.set(cache.objects);
    if (cache.maxSize !== undefined) metrics.cacheBudgetBytes.set(cache.maxSize);
    metrics.cacheWritable.set(cache.writable ? 1 : 0);
    metrics.evictionBlocked.set(cache.evictionBlocked !== undefined ? 1 : 0);
    metrics.fillsInFlight.set(fills.inFlight);
    metrics.fillReaders.set(fills.readers);
    for (const u of upstreams) {
      metrics.upstreamUp.set({ upstream: u.name }, u.health.state === "up" ? 1 : 0);
      if (u.rateLimit?.limit !== undefined) metrics.rateLimitLimit.set({ upstream: u.name }, u.rateLimit.limit);
      if (u.rateLimit?.remaining !== undefined) metrics.rateLimitRemaining.set({ upstream: u.name }, u.rateLimit.remaining);
    }
  });

  const resolver = new UpstreamResolver(upstreams);

  const app = new Koa<RequestState>();
  app.use(requestContext(log, metrics));
  app.use(errorMiddleware());
  app.use(clientConcurrency(config.limits.maxRequestsPerClient));
  // Secrets from files may be written after start (a Kubernetes Secret populated late): one that holds no usable
  // secret disables its credential, is logged and listed by /readyz, and is re-read when it changes
  // (secret-file.ts). An inline secret the schema refused has already stopped the start-up.
  const adminTokenFile =
    config.admin.tokenFile !== undefined ? await SecretFile.open({ path: config.admin.tokenFile, key: "admin.tokenFile", what: "the admin token", log }) : undefined;
  let clientAuth: ClientAuth | undefined;
  try {
    clientAuth = config.access ? await ClientAuth.load(config.access, { log }) : undefined;
  } catch (err) {
    adminTokenFile?.close();
    throw err;
  }
  const secretFiles = [...(adminTokenFile ? [adminTokenFile] : []), ...(clientAuth?.tokenFiles ?? [])];
  const prefetcher = new Prefetcher({ manifests: manifestCache, blobs: blobCache, log });
  const adminDigest = config.admin.token !== undefined ? createHash("sha256").update(config.admin.token).digest() : undefined;
  if (adminDigest !== undefined || adminTokenFile !== undefined) {
    const handler = new AdminHandler({ upstreams, manifests: manifestCache, manifestStore, store: blobStore, metadata, janitor, prefetcher, importer: createImporter(layer, config) });
    app.use(adminRouter(handler, () => adminDigest ?? adminTokenFile?.digest));
  }
  app.use(
    createRouter({
      clientAuth,
      policy: new AccessPolicy(config),
      metrics: config.metrics.enabled && config.metrics.listen === undefined ? metrics : undefined,
      readiness: [
        // A disabled credential is reported, but the mirror serves everyone else: still ready.
        ...secretFiles.map((file) => () => (file.problem !== undefined ? { ready: true, reason: file.problem } : undefined)),
        () => (janitor.noSpace !== undefined ? { ready: true, reason: `disk full, misses are streamed without caching: ${janitor.noSpace}` } : undefined),
        () => (janitor.evictionBlocked !== undefined ? { ready: true, reason: `eviction stopped: ${janitor.evictionBlocked}` } : undefined),
        () => {
          const state = describeState();
          return state.degraded ? { ready: true, reason: `metadata store degraded (serving from the embedded store): ${state.reason}` } : undefined;
        },
      ],
      resolver,
      manifests: new ManifestHandler(manifestCache),
      blobs: new BlobHandler(blobCache, { maxReadersPerFill: config.limits.maxReadersPerFill }),
      tags: new TagsHandler({ maxBytes: config.limits.tagListMaxBytes, log }),
      storagePath: config.storage.path,
    }),
  );
  onAppError(app);

  let server: Server | undefined;
  let stopWatchingTls: () => void = () => undefined;
  let metricsServer: Server | undefined;
  return {
    app,
    config,
    log,
    blobStore,
    metrics,
    get metricsAddress() {
      return metricsServer?.address() as AddressInfo | undefined;
    },
    get fillsInFlight() {
      return fills.inFlight;
    },
    async listen() {
      const { host, port } = parseListen(config.listen);
      const created = await createRegistryServer(config, app.callback(), log);
      server = created.server;
      stopWatchingTls = created.stopWatching;
      await new Promise<void>((resolve, reject) => {
        server!.once("error", reject);
        server!.listen(port, host, () => resolve());
      });
      const address = server.address() as AddressInfo;
      if (config.metrics.enabled && config.metrics.listen !== undefined) {
        metricsServer = await listenMetrics(metrics, config.metrics.listen);
        log.info({ address: metricsServer.address() }, "metrics listening");
      }
      log.info({ address: address.address, port: address.port, upstreams: upstreams.map((u) => u.name) }, "mirror listening");
      return address;
    },
    async close() {
      const closed = server ? new Promise<void>((resolve) => server!.close(() => resolve())) : Promise.resolve();
      server?.closeIdleConnections();
      stopWatchingTls();
      janitor.stop();
      metricsServer?.close();
      metricsServer?.closeAllConnections();
      await fills.drain(config.shutdownGrace);
      server?.closeAllConnections();
      await closed;
      adminTokenFile?.close();
      await clientAuth?.close();
      await layer.close();
    },
  };
}

/** The cache layer without the HTTP server: what the mirror and the CLI commands that work on a cache share. */
export interface CacheLayer {
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly blobStore: BlobStore;
  readonly manifestStore: ManifestStore;
  readonly metadata: MetadataStore;
  readonly janitor: Janitor;
  readonly fills: FillCoordinator;
  readonly upstreams: readonly UpstreamClient[];
  readonly manifestCache: ManifestCache;
  readonly blobCache: BlobCache;
  /** Pins recorded by imports (`<storage.path>/pins.json`), honoured by the janitor. */
  readonly pins: PinList;
  readonly describeState: () => { store: string; degraded: boolean; reason: string };
  /** Stops the janitor, lets running fills finish (bounded by `shutdownGrace`), closes upstream pools and the metadata store, releases the lock. */
  close(): Promise<void>;
}

/**
 * Builds the stores, the janitor, the fill coordinator, one client per upstream and the read-through caches
 * over `config.storage.path`, after taking that directory's lock (DataDirLockedError if another process holds
 * it): the mirror at start, and `mirror export|import|inventory` working on a data directory.
 */
export async function createCacheLayer(config: Config, opts: { log: Logger; metrics: Metrics; purpose?: string }): Promise<CacheLayer> {
  const { log, metrics } = opts;
  // First of all: BlobStore.init() deletes temp files, which are another process's downloads if it runs here.
  const lock = await DataDirLock.acquire(config.storage.path, opts.purpose ?? `mirror (listening on ${config.listen})`);
  try {
    const blobStore = new BlobStore(config.storage.path);
    const scan = await blobStore.init();
    log.info({ ...scan }, "cache index rebuilt");
    if (scan.removedTempFiles > 0) log.info({ removedTempFiles: scan.removedTempFiles }, "removed unverified temp files left by a previous run");
    const manifestStore = new ManifestStore(blobStore);
    await manifestStore.init();
    const { metadata, describeState, closeMetadata } = await openMetadataStore(config, log);
    const pins = new PinList(config.storage.path);
    const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u, { metrics }));
    const manifestCache = new ManifestCache({ manifests: manifestStore, metadata, maxBytes: config.limits.manifestMaxBytes, metrics, onNoSpace: (err) => janitor.noteNoSpace(err) });
    const janitor: Janitor = new Janitor({
      store: blobStore,
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
    });
    const fills = new FillCoordinator(blobStore, {
      timeoutMs: config.fill.timeout,
      log,
      metrics,
      policy: { admit: (size) => janitor.admit(size), noSpace: (err) => janitor.noteNoSpace(err) },
      limits: { maxFills: (upstream) => config.upstreams[upstream]?.maxConcurrentFills ?? 16, maxQueued: config.limits.maxQueuedFills },
    });
    blobStore.onCommit(() => janitor.committed());
    janitor.start(config.storage.checkInterval);
    // Not waiting on upstreams: a down one would hold up the start for its whole deadline. A pinned tag whose
    // pointer is gone is asked at the first periodic check (eviction waits for it if nothing is recorded).
    await janitor.check({ askResolver: false });
    for (const u of upstreams) {
      if (u.config.tls.insecure) log.warn({ upstream: u.name }, "TLS certificate verification is disabled for this upstream");
      if (u.config.offline) log.info({ upstream: u.name }, "upstream is offline by configuration: serving cached content only");
    }
    const blobCache = new BlobCache({ store: blobStore, fills, metadata, metrics });
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
      blobCache,
      pins,
      describeState,
      close() {
        closing ??= (async () => {
          janitor.stop();
          await fills.drain(config.shutdownGrace);
          await Promise.all(upstreams.map((u) => u.close()));
          await closeMetadata();
          await lock.release();
        })();
        return closing;
      },
    };
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/** The bundle importer over a cache layer: the admin endpoint and `mirror import --data-dir` use the same one. */
export function createImporter(layer: CacheLayer, config: Config): Importer {
  return new Importer({
    store: layer.blobStore,
    manifests: layer.manifestStore,
    metadata: layer.metadata,
    // A room check, not a held reservation: the importer writes one blob at a time and does not say when it is
    // done with one (fills, which run many at once, hold theirs until commit).
    admit: async (size) => {
      const reservation = await layer.janitor.admit(size);
      reservation?.release();
      return reservation !== undefined;
    },
    pins: layer.pins,
    upstreams: layer.upstreams,
    manifestMaxBytes: config.limits.manifestMaxBytes,
    log: layer.log,
  });
}

/**
 * The embedded store (tag pointers and links journaled under `<storage>/metadata`, so a restarted node still
 * serves its cache offline), or, with `redis.url`, Redis in front of that embedded store as a fallback that
 * answers whenever Redis is down or slow.
 */
async function openMetadataStore(
  config: Config,
  log: Logger,
): Promise<{ metadata: MetadataStore; describeState: () => { store: string; degraded: boolean; reason: string }; closeMetadata: () => Promise<void> }> {
  const embedded = await EmbeddedMetadataStore.open({
    dir: join(config.storage.path, "metadata"),
    onError: (err) => log.error({ err: err.message }, "metadata journal write failed; the in-memory state is intact"),
  });
  const report = await embedded.loadReport();
  if (report) log.info({ ...report }, "metadata journal loaded");
  if (config.redis === undefined) {
    return { metadata: embedded, describeState: () => ({ store: "embedded", degraded: false, reason: "" }), closeMetadata: () => embedded.close() };
  }
  // The client and the failover store are made in one tick: the store's listeners must exist before ioredis
  // reports its first connection error.
  const client = new Redis(config.redis.url, failFastRedisOptions({ commandTimeoutMs: config.redis.commandTimeout }));
  const metadata = new FailoverMetadataStore({
    primary: new RedisMetadataStore(client, { keyPrefix: config.redis.keyPrefix }),
    fallback: embedded,
    timeoutMs: config.redis.commandTimeout,
  });
  metadata.onStateChange(({ state, reason }) => {
    if (state === "degraded") log.warn({ reason }, "Redis unavailable: answering from the embedded metadata store");
    else log.info("Redis metadata store is back");
  });
  return {
    metadata,
    describeState: () => ({ store: "redis", degraded: metadata.state === "degraded", reason: metadata.reason }),
    closeMetadata: async () => {
      await metadata.close();
      await embedded.close();
      client.disconnect();
    },
  };
}

/** A bare HTTP server answering GET /metrics only, so metrics need not be exposed on the registry port. */
async function listenMetrics(metrics: Metrics, listen: string): Promise<Server> {
  const { host, port } = parseListen(listen);
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url?.split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    metrics.render().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`${(err as Error).message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new Error(`invalid listen address ${listen}`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port: Number(m[3]) };
}
