/**
 * The separate metrics listener (`metrics.listen`): a bare HTTP server answering GET /metrics only, so metrics
 * need not be exposed on the registry port.
 */
import type { Server } from "node:http";
import type { Metrics } from "./metrics.ts";
import { errorMessage } from "../caught-errors.ts";

// Not an `import` of node:http: that would load Node's bundled undici (src/http/server.ts says why).
const { createServer } = process.getBuiltinModule("node:http");

/** Resolves once the server listens on `host:port` (port 0 picks a free one). */
export async function listenMetrics(metrics: Metrics, at: { host: string; port: number }): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.method !== "GET" || req.url?.split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    metrics.render().then(
      (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
      (err: unknown) => res.writeHead(500, { "content-type": "text/plain" }).end(`${errorMessage(err)}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => resolve());
  });
  return server;
}
