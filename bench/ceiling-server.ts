/**
 * The servers `bench/ceiling.ts` measures: what Node and the mirror's HTTP stack can do on this machine before
 * any of the mirror's own code runs. Each answers the two requests of bench S4 and S5, from memory or from the
 * files the bench writes, on 127.0.0.1:<port>:
 *   GET /v2/<repo>/manifests/<tag>         the manifest bytes given in MANIFEST_FILE, with the mirror's headers
 *   GET /v2/<repo>/blobs/sha256:<hex>      <BLOB_DIR>/<xx>/<hex>/data (distribution's layout, which the bench's
 *                                          nginx serves too): opened, read in 512 KiB pieces into reused
 *                                          buffers, each written to the socket, closed (the mirror's warm blob path)
 *
 * usage: node bench/ceiling-server.ts <node-http | koa | koa-logged> <port> [processes]
 *   node-http   node:http alone
 *   koa         Koa: one middleware (a request id header, a listener for the response's close), then the answer
 *   koa-logged  the same, plus what the mirror does for every request besides answering it: a pino child logger
 *               with the request id, one access line at info to standard output, a counter and a histogram
 *   processes   node:cluster workers sharing the listening socket (the kernel spreads connections); default 1
 */
import cluster from "node:cluster";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { join } from "node:path";
import Koa from "koa";
import { pino } from "pino";
import { Counter, Histogram, Registry } from "prom-client";

const [kind = "", portText = "", processesText = "1"] = process.argv.slice(2);
const port = Number(portText);
const processes = Number(processesText);
if (!["node-http", "koa", "koa-logged"].includes(kind) || !Number.isInteger(port) || !(processes >= 1))
  throw new Error("usage: node bench/ceiling-server.ts <node-http | koa | koa-logged> <port> [processes]");

const manifest = readFileSync(process.env["MANIFEST_FILE"]!);
const blobDir = process.env["BLOB_DIR"]!;
const DIGEST_HEADER = `sha256:${"0".repeat(64)}`; // not checked by anyone: only its length matters here
const READ_CHUNK = 512 * 1024;
const idle: Buffer[] = [];

/** Sends the file named by the path's digest as the mirror sends a warm blob; false if the path is no blob's. */
async function sendBlob(path: string, res: ServerResponse): Promise<boolean> {
  const hex = /\/blobs\/sha256:([0-9a-f]{64})$/.exec(path)?.[1];
  if (hex === undefined) return false;
  const handle = await open(join(blobDir, hex.slice(0, 2), hex, "data"));
  try {
    const { size } = await handle.stat();
    res.writeHead(200, { "Content-Type": "application/octet-stream", "Content-Length": size });
    const writes: Promise<void>[] = [];
    for (let position = 0; position < size;) {
      const buffer = idle.pop() ?? Buffer.allocUnsafeSlow(READ_CHUNK);
      const { bytesRead } = await handle.read(buffer, 0, Math.min(READ_CHUNK, size - position), position);
      position += bytesRead;
      writes.push(
        new Promise((resolve) =>
          res.write(buffer.subarray(0, bytesRead), () => {
            idle.push(buffer);
            resolve();
          }),
        ),
      );
      if (writes.length >= 2) await writes.shift();
    }
    await Promise.all(writes);
    res.end();
  } finally {
    await handle.close();
  }
  return true;
}

const manifestHeaders = {
  "Docker-Distribution-API-Version": "registry/2.0",
  "Content-Type": "application/vnd.oci.image.manifest.v1+json",
  "Docker-Content-Digest": DIGEST_HEADER,
  ETag: `"${DIGEST_HEADER}"`,
  "X-Mirror-Cache": "hit",
};

function nodeHttp(): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    sendBlob(req.url ?? "", res).then(
      (sent) => {
        if (sent) return;
        res.writeHead(200, { ...manifestHeaders, "X-Request-Id": randomUUID(), "Content-Length": manifest.length });
        res.end(manifest);
      },
      () => res.destroy(),
    );
  };
}

function koa(logged: boolean): (req: IncomingMessage, res: ServerResponse) => void {
  const app = new Koa();
  const log = pino({ level: "info" });
  const registry = new Registry();
  const requests = new Counter({
    name: "requests_total",
    help: "requests",
    labelNames: ["upstream", "kind", "result", "status_class"],
    registers: [registry],
  });
  const duration = new Histogram({
    name: "request_duration_seconds",
    help: "duration",
    labelNames: ["kind", "result"],
    registers: [registry],
  });
  app.use(async (ctx, next) => {
    const started = process.hrtime.bigint();
    const requestId = randomUUID();
    const requestLog = logged ? log.child({ reqId: requestId }) : undefined;
    ctx.set("X-Request-Id", requestId);
    ctx.res.once("close", () => {
      if (requestLog === undefined) return;
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      requests.inc({ upstream: "bench", kind: "manifest", result: "hit", status_class: "2xx" });
      duration.observe({ kind: "manifest", result: "hit" }, seconds);
      const line = { method: ctx.method, path: ctx.path, status: ctx.status, ms: seconds * 1e3, cache: "hit" };
      requestLog.info({ ...line, client: ctx.req.socket.remoteAddress }, "request");
    });
    await next();
  });
  app.use(async (ctx) => {
    ctx.respond = !(await sendBlob(ctx.path, ctx.res));
    if (!ctx.respond) return;
    ctx.set(manifestHeaders);
    ctx.body = manifest;
  });
  const callback = app.callback();
  return (req, res) => void callback(req, res);
}

if (processes > 1 && cluster.isPrimary) {
  cluster.schedulingPolicy = cluster.SCHED_NONE; // each worker accepts on the shared socket, as nginx's do
  for (let i = 0; i < processes; i++) cluster.fork();
  process.on("SIGTERM", () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill();
    process.exit(0);
  });
} else {
  const handler = kind === "node-http" ? nodeHttp() : koa(kind === "koa-logged");
  createServer(handler).listen(port, "127.0.0.1");
}
