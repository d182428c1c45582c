/**
 * The listening server: HTTP, or HTTPS when `tls` is configured, with the limits that keep hostile clients from
 * tying it up (header size, time to send headers, idle connections, open connections; requests in progress per
 * client are capped in client-concurrency.ts). The certificate and key are re-read when either file changes
 * (file-watch.ts), so rotation needs no restart; a broken pair is logged and the previous one stays in use.
 */
import { readFile } from "node:fs/promises";
import type { RequestListener, Server } from "node:http";
import type { Server as HttpsServer } from "node:https";
import type { Logger } from "pino";
import { watchFiles } from "../config/file-watch.ts";
import type { Config } from "../config/schema.ts";
import { timerDelay } from "../config/timer-delay.ts";
import { errorMessage } from "../caught-errors.ts";

// node:http is taken with process.getBuiltinModule, not an `import`: Node builds an ES module's view of a built-in
// by reading every export, and node:http's lazy WebSocket, CloseEvent and MessageEvent exports then load Node's
// bundled undici (~50 ms of CPU and ~13 MiB resident at start-up, for classes the mirror never uses). node:https
// and node:tls are loaded only with `tls` configured (test/integration/lazy-loading.test.ts).
const { createServer: createHttpServer } = process.getBuiltinModule("node:http");

export interface ListeningServer {
  server: Server;
  stopWatching: () => void;
}

export async function createRegistryServer(
  config: Config,
  handler: RequestListener,
  log: Logger,
): Promise<ListeningServer> {
  const limits = {
    maxHeaderSize: config.limits.maxHeaderBytes,
    headersTimeout: config.limits.headersTimeout,
    // No cap on a whole request: bundle imports stream large bodies. Slow senders are bounded by the headers
    // timeout and, once the body flows, by the idle timeout below.
    requestTimeout: 0,
    // Node enforces the headers timeout only when it checks its connections, every 30 s by default.
    connectionsCheckingInterval: Math.max(250, Math.min(5_000, Math.floor(config.limits.headersTimeout / 4))),
    keepAliveTimeout: 65_000,
  };
  let server: Server;
  let stopWatching: () => void = () => undefined;
  if (config.tls) {
    const { certFile, keyFile } = config.tls;
    const { createServer: createHttpsServer } = process.getBuiltinModule("node:https");
    const { createSecureContext } = process.getBuiltinModule("node:tls");
    const [cert, key] = await Promise.all([readFile(certFile), readFile(keyFile)]);
    const https: HttpsServer = createHttpsServer({ ...limits, cert, key }, handler);
    const reload = () => {
      Promise.all([readFile(certFile), readFile(keyFile)])
        .then(([c, k]) => {
          createSecureContext({ cert: c, key: k }); // throws on a mismatched or broken pair: keep the old one
          https.setSecureContext({ cert: c, key: k });
          log.info({ certFile }, "TLS certificate reloaded");
        })
        .catch((err: unknown) =>
          log.error({ err: errorMessage(err), certFile }, "TLS certificate reload failed; keeping the previous one"),
        );
    };
    stopWatching = watchFiles([certFile, keyFile], reload);
    server = https;
  } else {
    server = createHttpServer(limits, handler);
  }
  // Connections with nothing moving either way (a client that stopped reading, or never sends) are closed.
  server.timeout = timerDelay(config.limits.idleTimeout);
  // Each open connection may hold a file handle and a buffer (file-range-stream.ts): beyond this many, a new
  // connection is closed as it arrives, before any work (an HTTP status would need the very resources it guards).
  server.maxConnections = config.limits.maxConnections;
  return { server, stopWatching };
}

/** `host:port`, `[v6]:port` or `:port` (all interfaces) as the schema accepts them for `listen` and `metrics.listen`. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen);
  if (!m) throw new Error(`invalid listen address ${listen}`);
  return { host: m[1] ?? (m[2] || "0.0.0.0"), port: Number(m[3]) };
}
