/**
 * The composition root: the only module that sees every layer. It builds the stores, the fill coordinator, one
 * client per configured upstream, the handlers and the Koa app, passing each its collaborators. Nothing is a
 * module-level singleton, so a test can run several mirrors in one process.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import Koa from "koa";
import { pino, type Logger } from "pino";
import { BlobCache } from "./cache/blob-cache.ts";
import { BlobStore } from "./cache/blob-store.ts";
import { FillCoordinator } from "./cache/fill-coordinator.ts";
import { ManifestCache } from "./cache/manifest-cache.ts";
import { ManifestStore } from "./cache/manifest-store.ts";
import { MemoryMetadataStore } from "./cache/memory-metadata-store.ts";
import type { Config } from "./config/schema.ts";
import { errorMiddleware, onAppError } from "./http/error-middleware.ts";
import { requestContext, type RequestState } from "./http/request-context.ts";
import { createRouter } from "./http/router.ts";
import { BlobHandler } from "./registry/blob-handler.ts";
import { ManifestHandler } from "./registry/manifest-handler.ts";
import { TagsHandler } from "./registry/tags-handler.ts";
import { UpstreamResolver } from "./registry/upstream-resolver.ts";
import { UpstreamClient } from "./upstream/upstream-client.ts";

export interface Mirror {
  readonly app: Koa<RequestState>;
  readonly config: Config;
  readonly log: Logger;
  /** Starts listening on `config.listen`; resolves with the bound address (port 0 picks a free one). */
  listen(): Promise<AddressInfo>;
  /** Stops accepting requests, lets in-flight fills finish (bounded by `shutdownGrace`), closes upstream pools. */
  close(): Promise<void>;
  /** Fills still downloading (for shutdown and tests). */
  readonly fillsInFlight: number;
  readonly blobStore: BlobStore;
}

export async function createMirror(config: Config, opts: { log?: Logger } = {}): Promise<Mirror> {
  const log = opts.log ?? pino({ level: config.log.level });
  const blobStore = new BlobStore(config.storage.path);
  const { removedTempFiles } = await blobStore.init();
  if (removedTempFiles > 0) log.info({ removedTempFiles }, "removed unverified temp files left by a previous run");
  const manifestStore = new ManifestStore(blobStore);
  await manifestStore.init();
  const metadata = new MemoryMetadataStore();
  const fills = new FillCoordinator(blobStore, { timeoutMs: config.fill.timeout, log });
  const upstreams = Object.values(config.upstreams).map((u) => new UpstreamClient(u));

  const resolver = new UpstreamResolver(upstreams);
  const manifestCache = new ManifestCache({ manifests: manifestStore, metadata, maxBytes: config.limits.manifestMaxBytes });
  const blobCache = new BlobCache({ store: blobStore, fills, metadata });

  const app = new Koa<RequestState>();
  app.use(requestContext(log));
  app.use(errorMiddleware());
  app.use(
    createRouter({
      resolver,
      manifests: new ManifestHandler(manifestCache),
      blobs: new BlobHandler(blobCache),
      tags: new TagsHandler({ maxBytes: config.limits.tagListMaxBytes }),
      storagePath: config.storage.path,
    }),
  );
  onAppError(app);

  let server: Server | undefined;
  return {
    app,
    config,
    log,
    blobStore,
    get fillsInFlight() {
      return fills.inFlight;
    },
    async listen() {
      const { host, port } = parseListen(config.listen);
      server = createServer({ keepAliveTimeout: 65_000, headersTimeout: 30_000, requestTimeout: 60_000 }, app.callback());
      await new Promise<void>((resolve, reject) => {
        server!.once("error", reject);
        server!.listen(port, host, () => resolve());
      });
      const address = server.address() as AddressInfo;
      log.info({ address: address.address, port: address.port, upstreams: upstreams.map((u) => u.name) }, "mirror listening");
      return address;
    },
    async close() {
      const closed = server ? new Promise<void>((resolve) => server!.close(() => resolve())) : Promise.resolve();
      server?.closeIdleConnections();
      await fills.drain(config.shutdownGrace);
      server?.closeAllConnections();
      await closed;
      await Promise.all(upstreams.map((u) => u.close()));
      await metadata.close();
    },
  };
}

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new Error(`invalid listen address ${listen}`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port: Number(m[3]) };
}
