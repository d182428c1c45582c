/**
 * The composition root: with cache-layer.ts, the only code that sees every layer. cache-layer.ts builds
 * everything below HTTP (stores, fill coordinator, one client per configured upstream, the caches); this module
 * builds the HTTP side over it (handlers, routers, the Koa app, the listeners) and owns the order of shutdown.
 * Each part gets its collaborators passed in; nothing is a module-level singleton, so a test can run several
 * mirrors in one process.
 */
import { createHash } from "node:crypto";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { pino, type Logger } from "pino";
import { Registry } from "./observability/prom-client.ts";
import { createCacheLayer, createImporter, type CacheLayer } from "./cache-layer.ts";
import { Prefetcher } from "./cache/prefetcher.ts";
import { WarmupSets } from "./cache/warmup.ts";
import { longDurationWarnings } from "./config/load.ts";
import type { Config } from "./config/schema.ts";
import { SecretFile } from "./config/secret-file.ts";
import { UpstreamResolver } from "./config/upstream-resolver.ts";
import type { ClientAuth } from "./http/client-auth.ts";
import { clientConcurrency } from "./http/client-concurrency.ts";
import { errorMiddleware, onAppError } from "./http/error-middleware.ts";
import { requestContext, type RequestState } from "./http/request-context.ts";
import { streamRespond } from "./http/stream-respond.ts";
import { ResponseDrain } from "./http/response-drain.ts";
import { createRouter } from "./http/router.ts";
import { createRegistryServer, parseListen } from "./http/server.ts";
import { listenMetrics } from "./observability/metrics-listener.ts";
import { Metrics } from "./observability/metrics.ts";
import { TrafficTotals } from "./observability/traffic-totals.ts";
import { AccessPolicy } from "./registry/access-policy.ts";
import { BlobHandler } from "./registry/blob-handler.ts";
import { ManifestHandler } from "./registry/manifest-handler.ts";
import { TagsHandler } from "./registry/tags-handler.ts";
import { UpstreamFallbacks } from "./registry/upstream-fallback.ts";
import { CatalogHandler } from "./registry/catalog-handler.ts";
import { ReferrersHandler } from "./registry/referrers-handler.ts";
import type { ContentStore } from "./storage/content-store.ts";
import { TrafficFile } from "./storage/traffic-file.ts";
import { checkUpstreams } from "./upstream/upstream-check.ts";
import { TrustedProxies } from "./http/client-address.ts";
import type { ConsoleHistory } from "./console/console-history.ts";

/** How often the traffic totals are saved besides at shutdown: what a crash can lose of them. */
const TRAFFIC_SAVE_MS = 60_000;

export interface Mirror {
  readonly app: Koa<RequestState>;
  readonly config: Config;
  readonly log: Logger;
  /** Starts listening on `config.listen`; resolves with the bound address (port 0 picks a free one). */
  listen(): Promise<AddressInfo>;
  /**
   * Shuts down, each part once and in this order: readiness fails and both listeners stop accepting (idle
   * connections are closed); client responses in progress and running fills get `shutdownGrace` to finish;
   * clients still connected then are cut off; the upstream pools close (abandoning the fills still running:
   * nothing unverified is committed), then the metadata store, and the data directory is unlocked. Logs one
   * line when it starts (`signal`: what asked for it) and one when it is done, saying what was cut. Calling it
   * again waits for the same shutdown.
   */
  close(opts?: { signal?: string }): Promise<void>;
  /**
   * The start-up check of every upstream (upstream/upstream-check.ts), begun by `listen()`: settles when each has
   * answered, failed or been aborted by `close()`. It never rejects; nothing waits for it but tests.
   */
  readonly upstreamsChecked: Promise<void>;
  /** Fills still downloading (for shutdown and tests). */
  readonly fillsInFlight: number;
  /** Client responses in progress. */
  readonly responsesInFlight: number;
  readonly blobStore: ContentStore;
  readonly metrics: Metrics;
  /** The separate metrics listener's address, when `metrics.listen` is set (after `listen()`). */
  readonly metricsAddress: AddressInfo | undefined;
}

export async function createMirror(
  config: Config,
  opts: { log?: Logger; processMetrics?: boolean } = {},
): Promise<Mirror> {
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

/**
 * The traffic totals, continuing from what `<storage.path>/traffic.json` held; once the mirror listens, saved
 * every TRAFFIC_SAVE_MS and at shutdown. A damaged file is reported and counting starts anew: lost totals cost
 * less than a mirror that does not start.
 */
async function openTrafficTotals(
  config: Config,
  metrics: Metrics,
  log: Logger,
): Promise<{ traffic: TrafficTotals; startSaving: () => void }> {
  const file = new TrafficFile(config.storage.path);
  const found = await file.read();
  if ("damaged" in found)
    log.warn({ path: file.path, reason: found.damaged }, "traffic totals unreadable: counting starts anew");
  const traffic = new TrafficTotals(metrics, { earlier: "traffic" in found ? found.traffic : undefined });
  const startSaving = () =>
    traffic.saveEvery(
      TRAFFIC_SAVE_MS,
      (t) => file.write(t),
      (err) => log.warn({ path: file.path, err }, "traffic totals not saved"),
    );
  return { traffic, startSaving };
}

/** The HTTP side over a cache layer: handlers, routers, the Koa app and the listeners. */
async function assembleMirror(config: Config, layer: CacheLayer): Promise<Mirror> {
  const {
    log,
    metrics,
    blobStore,
    manifestStore,
    metadata,
    describeState,
    janitor,
    fills,
    upstreams,
    manifestCache,
    referrersCache,
    blobCache,
    cluster,
  } = layer;
  metrics.showOnScrape({ metadataStore: describeState, cache: janitor, fills, upstreams });

  const resolver = new UpstreamResolver(upstreams);

  const app = new Koa<RequestState>();
  const responses = new ResponseDrain();
  // Outermost: sends stream bodies once every other middleware is done (stream-respond.ts says why not Koa).
  app.use(streamRespond<RequestState>());
  app.use(responses.middleware<RequestState>());
  app.use(requestContext(log, metrics, new TrustedProxies(config.trustedProxies)));
  const { traffic, startSaving } = await openTrafficTotals(config, metrics, log);
  app.use(errorMiddleware());
  // The other replicas stream downloads running here: signed requests only, whatever client access allows, and
  // not counted per client (a replica following many downloads is one address).
  // What only some configurations use is imported when they do (here and below: the peer router with `cluster`,
  // client authentication with `access`, the admin API, transfers and the console with an admin token), so that
  // a mirror that does not use it neither loads it nor pays for it at start-up (bcryptjs alone is ~15 ms of CPU);
  // each is still built here, at start-up, so its configuration errors stop the start as before.
  if (cluster) {
    const [{ peerRouter }, { PeerFillHandler }] = await Promise.all([
      import("./http/peer-router.ts"),
      import("./registry/peer-fill-handler.ts"),
    ]);
    app.use(peerRouter(new PeerFillHandler({ fills, store: blobStore }), cluster.peerKey));
  }
  app.use(clientConcurrency(config.limits.maxRequestsPerClient));
  // Secrets from files may be written after start (a Kubernetes Secret populated late): one that holds no usable
  // secret disables its credential, is logged and listed by /readyz, and is re-read when it changes
  // (secret-file.ts). An inline secret the schema refused has already stopped the start-up.
  const adminTokenFile =
    config.admin.tokenFile !== undefined
      ? await SecretFile.open({ path: config.admin.tokenFile, key: "admin.tokenFile", what: "the admin token", log })
      : undefined;
  let clientAuth: ClientAuth | undefined;
  try {
    if (config.access) {
      const { ClientAuth } = await import("./http/client-auth.ts");
      clientAuth = await ClientAuth.load(config.access, { log });
    }
  } catch (err) {
    adminTokenFile?.close();
    throw err;
  }
  let consoleHistory: ConsoleHistory | undefined;
  const historyError = (err: unknown) => log.warn({ err }, "console history not saved");
  const secretFiles = [...(adminTokenFile ? [adminTokenFile] : []), ...(clientAuth?.tokenFiles ?? [])];
  const prefetcher = new Prefetcher({ manifests: manifestCache, blobs: blobCache, log });
  const warmup = new WarmupSets({ sets: config.warmup, prefetcher, resolver, pins: layer.pins, metrics, log });
  // What a warm-up set holds is kept however long nobody pulls it, as pinned content is.
  layer.keepFromIdleExpiry(() => warmup.keptDigests());
  const adminDigest =
    config.admin.token !== undefined ? createHash("sha256").update(config.admin.token).digest() : undefined;
  if (adminDigest !== undefined || adminTokenFile !== undefined) {
    const [{ AdminHandler }, { adminRouter }, { Exporter }, importer] = await Promise.all([
      import("./registry/admin-handler.ts"),
      import("./http/admin-router.ts"),
      import("./transfer/exporter.ts"),
      createImporter(layer, config),
    ]);
    const handler = new AdminHandler({
      upstreams,
      manifests: manifestCache,
      manifestStore,
      store: blobStore,
      metadata,
      janitor,
      prefetcher,
      importer,
      exporter: new Exporter({ manifests: manifestCache, blobs: blobCache, referrers: referrersCache, upstreams }),
      traffic,
      pins: layer.pins,
      warmup,
    });
    app.use(adminRouter(handler, () => adminDigest ?? adminTokenFile?.digest));
    if (config.console.enabled) {
      const [{ ConsoleHistory }, { consoleRouter }] = await Promise.all([
        import("./console/console-history.ts"),
        import("./console/console-router.ts"),
      ]);
      consoleHistory = new ConsoleHistory(config.storage.path);
      const damaged = await consoleHistory.load();
      if (damaged !== undefined)
        log.warn({ path: consoleHistory.path, reason: damaged }, "console history unreadable: it starts anew");
      app.use(
        consoleRouter({
          admin: adminRouter(handler, () => adminDigest ?? adminTokenFile?.digest),
          tokenDigest: () => adminDigest ?? adminTokenFile?.digest,
          status: {
            upstreams,
            cache: janitor,
            fills,
            watermarks: { high: config.storage.highWatermark, low: config.storage.lowWatermark },
          },
          history: consoleHistory,
        }),
      );
    }
  } else if (config.console.enabled) {
    await clientAuth?.close();
    throw new Error("console.enabled needs the admin token (admin.token or admin.tokenFile): it signs in with it");
  }
  const policy = new AccessPolicy(config);
  const fallbacks = new UpstreamFallbacks({
    upstreams,
    permits: (upstream, repo) => policy.upstreamPermits(upstream, repo),
    metrics,
  });
  app.use(
    createRouter({
      clientAuth,
      policy,
      metrics: config.metrics.enabled && config.metrics.listen === undefined ? metrics : undefined,
      readiness: [
        () => (responses.shuttingDown ? { ready: false, reason: "shutting down" } : undefined),
        // A disabled credential is reported, but the mirror serves everyone else: still ready.
        ...secretFiles.map(
          (file) => () => (file.problem !== undefined ? { ready: true, reason: file.problem } : undefined),
        ),
        () => {
          const problem = cluster?.problem();
          return problem !== undefined ? { ready: true, reason: `downloads are not shared: ${problem}` } : undefined;
        },
        () =>
          janitor.noSpace !== undefined
            ? { ready: true, reason: `disk full, misses are streamed without caching: ${janitor.noSpace}` }
            : undefined,
        () =>
          layer.objectStore?.up === false
            ? {
                ready: true,
                reason: `object store unavailable: ${layer.objectStore.reason} (misses and hits streamed from upstreams)`,
              }
            : undefined,
        () =>
          janitor.evictionBlocked !== undefined
            ? { ready: true, reason: `eviction stopped: ${janitor.evictionBlocked}` }
            : undefined,
        () => {
          const state = describeState();
          return state.degraded
            ? { ready: true, reason: `metadata store degraded (serving from the embedded store): ${state.reason}` }
            : undefined;
        },
      ],
      resolver,
      manifests: new ManifestHandler(manifestCache, fallbacks),
      blobs: new BlobHandler(blobCache, fallbacks),
      tags: new TagsHandler({ maxBytes: config.limits.tagListMaxBytes, metadata, log }),
      catalog: new CatalogHandler({ upstreams, resolver, metadata, policy, log }),
      referrers: new ReferrersHandler(referrersCache),
      storagePath: config.storage.path,
    }),
  );
  onAppError(app);

  let server: Server | undefined;
  let stopWatchingTls: () => void = () => undefined;
  let metricsServer: Server | undefined;
  let closing: Promise<void> | undefined;
  const stopChecks = new AbortController();
  let upstreamsChecked = Promise.resolve();
  return {
    app,
    config,
    log,
    blobStore,
    metrics,
    get metricsAddress() {
      return metricsServer?.address() as AddressInfo | undefined;
    },
    get upstreamsChecked() {
      return upstreamsChecked;
    },
    get fillsInFlight() {
      return fills.inFlight;
    },
    get responsesInFlight() {
      return responses.inFlight;
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
      startSaving();
      consoleHistory?.every(config.console.historyInterval, () => traffic.stored(), historyError);
      await warmup.start();
      if (config.metrics.enabled && config.metrics.listen !== undefined) {
        metricsServer = await listenMetrics(metrics, parseListen(config.metrics.listen));
        log.info({ address: metricsServer.address() }, "metrics listening");
      }
      log.info(
        { address: address.address, port: address.port, upstreams: upstreams.map((u) => u.name) },
        "mirror listening",
      );
      upstreamsChecked = checkUpstreams(upstreams, log, stopChecks.signal);
      return address;
    },
    close(opts = {}) {
      closing ??= (async () => {
        const started = process.hrtime.bigint();
        // 1. Readiness fails; both listeners stop accepting, idle keep-alive connections go now. A request on a
        //    connection still busy is answered, with `Connection: close` (response-drain.ts says why).
        responses.begin();
        const closed = server ? new Promise<void>((resolve) => server!.close(() => resolve())) : Promise.resolve();
        server?.closeIdleConnections();
        stopWatchingTls();
        stopChecks.abort();
        warmup.close();
        metricsServer?.close();
        metricsServer?.closeAllConnections();
        log.info(
          {
            signal: opts.signal,
            responses: responses.inFlight,
            fills: fills.inFlight,
            graceMs: config.shutdownGrace,
          },
          "shutting down",
        );
        // 2. Drain, both within shutdownGrace: client responses in progress (cached blobs, blobs following a
        //    fill, manifests); and running fills, whether or not a client still reads them, so that the next
        //    start has them. The janitor stops.
        await Promise.all([layer.drain(), responses.settled(config.shutdownGrace)]);
        const responsesCut = responses.inFlight;
        const fillsCut = fills.inFlight;
        // 3. Clients still connected are cut off, and the HTTP side's own parts close.
        server?.closeAllConnections();
        await closed;
        // Every request has been counted now (access lines land when a response closes).
        await consoleHistory?.stop(() => traffic.stored(), historyError);
        await traffic.stop();
        adminTokenFile?.close();
        await clientAuth?.close();
        // 4. Below HTTP: the upstream pools (fills still running are abandoned, their temp files discarded), the
        //    metadata store, the data directory's lock.
        await layer.close();
        const report = { ms: Math.round(Number(process.hrtime.bigint() - started) / 1e6), responsesCut, fillsCut };
        if (responsesCut === 0 && fillsCut === 0) log.info({ ...report, drained: true }, "shut down: drained");
        else
          log.warn(
            { ...report, drained: false },
            `shut down: grace over, cut ${responsesCut} client response(s) and ${fillsCut} download(s)`,
          );
      })();
      return closing;
    },
  };
}
