// A loopback HTTP relay in front of an upstream registry, for fault injection: it passes everything
// through unchanged, except that blob GET bodies can be corrupted, cut off, slowed down, or shortened
// behind a matching Content-Length. Bodies stream through chunk by chunk; nothing is buffered whole.
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

export type Fault =
  /** Flip one byte in the middle of blob GET response bodies (same length, wrong digest). */
  | { kind: "corrupt" }
  /** Send that many body bytes of a blob GET, then destroy the socket. */
  | { kind: "truncate"; afterBytes: number }
  /** Slow blob GET bodies down to about this rate, so a test can observe a transfer in progress. */
  | { kind: "throttle"; bytesPerSecond: number }
  /** Serve the body one byte short with a Content-Length one byte short too: complete-looking but wrong. */
  | { kind: "wrongLength" };

export interface RelayedRequest {
  method: string;
  path: string;
  /** Upstream status; undefined until the upstream answered (or if it never did). */
  status?: number;
  /** The fault applied to this request's response, if any. */
  fault?: Fault["kind"];
}

export interface Relay {
  readonly name: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** 127.0.0.1:PORT */
  readonly host: string;
  readonly port: number;
  stop(): Promise<void>;
  /** Every request received, oldest first; tests may clear it with `relay.requests.length = 0`. */
  readonly requests: RelayedRequest[];
  /** Sets the fault for responses that start from now on; null passes everything through. */
  setFault(f: Fault | null): void;
}

/** Headers that describe one connection, not the message: never forwarded (RFC 9110 section 7.6.1). */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** Blob downloads, not uploads: /v2/<name>/blobs/<digest>. */
const BLOB_PATH = /^\/v2\/.+\/blobs\/(?!uploads\/)[^/]+$/;

export async function startRelay(targetUrl: string): Promise<Relay> {
  const target = new URL(targetUrl);
  if (target.protocol !== "http:") throw new Error(`relay: only http:// targets are supported, got ${targetUrl}`);
  // Own agent so stop() can close the upstream connections this relay opened, and only those.
  const agent = new Agent({ keepAlive: true });
  const requests: RelayedRequest[] = [];
  let fault: Fault | null = null;
  let relayHost = "";

  const server = createServer((req, res) => {
    const path = req.url ?? "/";
    const record: RelayedRequest = { method: req.method ?? "GET", path };
    requests.push(record);

    const upstreamReq = httpRequest(
      {
        protocol: "http:",
        hostname: target.hostname,
        port: target.port,
        method: req.method,
        path,
        headers: forwardHeaders(req.headers, relayHost),
        agent,
      },
      (upstreamRes) => {
        record.status = upstreamRes.statusCode;
        const applied = faultFor(fault, record.method, path, upstreamRes.statusCode ?? 0);
        if (applied !== null) record.fault = applied.kind;
        relayResponse(upstreamRes, res, applied, record.method).catch(() => {
          // A client that went away or an upstream that broke: the sockets are already destroyed.
          res.destroy();
          upstreamRes.destroy();
        });
      },
    );
    upstreamReq.on("error", (err) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`relay: upstream error: ${err.message}\n`);
    });
    // The client hanging up early must not leave the upstream transfer running.
    res.on("close", () => {
      if (!res.writableFinished) upstreamReq.destroy();
    });
    req.pipe(upstreamReq);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0 }, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = `127.0.0.1:${port}`;
  relayHost = host;

  let stopping: Promise<void> | undefined;
  return {
    name: `relay ${host} -> ${target.host}`,
    url: `http://${host}`,
    host,
    port,
    requests,
    setFault: (f) => {
      fault = f;
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Open (possibly throttled) transfers would otherwise keep close() waiting for minutes.
        server.closeAllConnections();
        agent.destroy();
      });
      return stopping;
    },
  };
}

/**
 * Request headers minus hop-by-hop ones. Host is kept as the client sent it (naming the relay): registries
 * build absolute URLs such as an upload's Location from Host, and those must lead back through the relay.
 */
function forwardHeaders(headers: IncomingHttpHeaders, relayHost: string): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.has(name) && value !== undefined) out[name] = value;
  }
  out.host ??= relayHost;
  return out;
}

function faultFor(fault: Fault | null, method: string, path: string, status: number): Fault | null {
  if (fault === null || method !== "GET" || status < 200 || status > 299) return null;
  return BLOB_PATH.test(path.split("?", 1)[0] ?? path) ? fault : null;
}

/** Copies status, headers and body from the upstream response to the client, applying `fault` to the body. */
async function relayResponse(upstream: IncomingMessage, res: ServerResponse, fault: Fault | null, method: string): Promise<void> {
  const headers: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(upstream.headers)) {
    if (!HOP_BY_HOP.has(name) && value !== undefined) headers[name] = value;
  }
  const status = upstream.statusCode ?? 502;
  const declared = headers["content-length"] === undefined ? undefined : Number(headers["content-length"]);
  // HEAD answers and 204/304 declare a length but carry no body.
  const hasBody = method !== "HEAD" && status !== 204 && status !== 304;

  if (fault?.kind === "wrongLength" && declared !== undefined && declared > 0) {
    headers["content-length"] = String(declared - 1);
  }
  res.writeHead(status, upstream.statusMessage, headers);

  // Byte budget for the body: truncate stops at afterBytes, wrongLength one byte before the end.
  const limit =
    fault?.kind === "truncate" ? fault.afterBytes : fault?.kind === "wrongLength" && declared !== undefined ? Math.max(0, declared - 1) : Infinity;
  // Without a declared length "the middle" is unknown; flip the first byte then.
  const flipAt = fault?.kind === "corrupt" ? Math.floor((declared ?? 0) / 2) : -1;
  const throttle = fault?.kind === "throttle" ? Math.max(1, fault.bytesPerSecond) : undefined;
  // wrongLength on a body of unknown length: always hold the latest byte back, and drop it at the end.
  const holdBackLast = fault?.kind === "wrongLength" && declared === undefined;

  let sent = 0;
  let received = 0;
  let held = Buffer.alloc(0);
  let reachedLimit = false;
  for await (const data of upstream as AsyncIterable<Buffer>) {
    received += data.length;
    let chunk = data;
    if (holdBackLast) {
      const joined = Buffer.concat([held, data]);
      chunk = joined.subarray(0, joined.length - 1);
      held = joined.subarray(joined.length - 1);
    }
    if (sent + chunk.length > limit) chunk = chunk.subarray(0, limit - sent);
    if (flipAt >= sent && flipAt < sent + chunk.length) {
      chunk = Buffer.from(chunk); // never mutate a buffer we did not allocate
      chunk[flipAt - sent] = (chunk[flipAt - sent] ?? 0) ^ 0xff;
    }
    if (throttle !== undefined) await writeThrottled(res, chunk, throttle);
    else await write(res, chunk);
    sent += chunk.length;
    if (sent >= limit) {
      reachedLimit = true;
      break;
    }
  }

  if (fault?.kind === "truncate") {
    // Let what was written reach the client, then cut the connection mid-body.
    await new Promise<void>((resolve) => res.write(Buffer.alloc(0), () => resolve()));
    res.socket?.destroy();
    upstream.destroy();
    return;
  }
  if (hasBody && !reachedLimit && declared !== undefined && received < declared) {
    // The upstream itself broke off: pass that on as a broken response, never as a complete one.
    res.destroy();
    return;
  }
  // wrongLength stops one byte early; the unread rest would otherwise hold the upstream connection.
  if (!upstream.complete) upstream.destroy();
  res.end();
}

/** Writes, honouring back-pressure; rejects if the client has gone. */
async function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  if (res.destroyed) throw new Error("client closed the connection");
  if (chunk.length === 0) return;
  if (!res.write(chunk)) {
    await new Promise<void>((resolve, reject) => {
      const onDrain = (): void => {
        res.off("close", onClose);
        resolve();
      };
      const onClose = (): void => {
        res.off("drain", onDrain);
        reject(new Error("client closed the connection"));
      };
      res.once("drain", onDrain);
      res.once("close", onClose);
    });
  }
}

/** Writes in slices of a tenth of a second's worth of bytes, pausing so the average rate is `bytesPerSecond`. */
async function writeThrottled(res: ServerResponse, chunk: Buffer, bytesPerSecond: number): Promise<void> {
  const slice = Math.max(1, Math.floor(bytesPerSecond / 10));
  for (let offset = 0; offset < chunk.length; offset += slice) {
    const part = chunk.subarray(offset, offset + slice);
    await write(res, part);
    await sleep((part.length / bytesPerSecond) * 1000);
  }
}
