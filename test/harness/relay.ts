// A loopback HTTP relay in front of an upstream registry, for fault injection. It passes everything
// through unchanged, except what the fault set with setFault() changes:
//   - blob GET bodies corrupted, cut off, slowed down, shortened behind a matching Content-Length, or sent
//     without any Content-Length;
//   - blob GETs redirected (307) to a separate blob host, as registries backed by S3 or a CDN do;
//   - any request redirected (302) to a fixed URL, as a hostile or compromised upstream could;
//   - any request (chosen by a RegExp over "METHOD path"): answered with an error status instead of being
//     forwarded, its connection reset, left without an answer, or its body stalled part-way.
// Bodies stream through chunk by chunk; nothing is buffered whole.
import {
  Agent,
  createServer,
  request as httpRequest,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
} from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { BlobHost } from "./blob-host.ts";

export type Fault =
  /** Flip one byte in the middle of blob GET response bodies (same length, wrong digest). */
  | { kind: "corrupt" }
  /** Send that many body bytes of a blob GET, then destroy the socket. */
  | { kind: "truncate"; afterBytes: number }
  /**
   * Slow blob GET bodies down to about this rate, so a test can observe a transfer in progress. With `match`,
   * the bodies of every matching request instead (manifests, tag lists, error bodies): at a few bytes per
   * second, an answer that trickles in under any idle timeout.
   */
  | { kind: "throttle"; bytesPerSecond: number; match?: RegExp }
  /** Serve the body one byte short with a Content-Length one byte short too: complete-looking but wrong. */
  | { kind: "wrongLength" }
  /** Send blob GET bodies whole but without Content-Length (chunked), as some upstreams and CDNs do. */
  | { kind: "noLength" }
  /** Answer blob GETs with the upstream's headers but `Content-Length: 0` and no body: complete-looking, empty. */
  | { kind: "emptyBody" }
  /**
   * Answer blob GETs that the upstream would answer 2xx with `307 Location: <to>/blob/<digest>?sig=...`
   * instead of the body. The registry is asked first, with a HEAD carrying the request's headers, so auth,
   * 404 and Range are still decided by it (its refusals pass through, with an OCI error body made by the
   * relay); its log shows that HEAD, and the blob host's GET for the bytes. For blob GETs it takes
   * precedence over the body faults and stallBody (not over status, reset and stallHeaders, which act first).
   * `hostname` names the blob host differently in the Location (e.g. "localhost", a DNS name for the same
   * loopback server) instead of 127.0.0.1.
   */
  | { kind: "redirectBlobs"; to: BlobHost; hostname?: string }
  /** Answer `302 Location: <location>` instead of forwarding. Nothing goes upstream. */
  | { kind: "redirect"; location: string; match?: RegExp; times?: number }
  /** Accept the request and never answer it (until stop() or the client gives up). Nothing goes upstream. */
  | { kind: "stallHeaders"; match?: RegExp; times?: number }
  /**
   * Forward the request; send the upstream's status, headers and the first `afterBytes` of its body, then
   * nothing more, keeping the connection open. A response without a body (HEAD) just gets its headers.
   */
  | { kind: "stallBody"; afterBytes: number; match?: RegExp; times?: number }
  /** Answer `status` with an OCI error body (and `headers`, e.g. Retry-After) instead of forwarding. */
  | { kind: "status"; status: number; headers?: Record<string, string>; match?: RegExp; times?: number }
  /** Reset the connection (TCP RST) without answering. Nothing goes upstream. */
  | { kind: "reset"; match?: RegExp; times?: number };

export type FaultKind = Fault["kind"];

export interface RelayedRequest {
  method: string;
  path: string;
  /**
   * Status the client was sent: the upstream's, unless a fault answered instead (307 for redirectBlobs, 302
   * for redirect, the injected status). Undefined while nothing has been answered, and for stallHeaders and
   * reset.
   */
  status?: number;
  /** The fault applied to this request or its response, if any. */
  fault?: FaultKind;
  /** Whether the request carried an Authorization header (its value is not kept). */
  authorization: boolean;
  /** Its scheme, lower-cased ("bearer", "basic"), when it did. */
  authScheme?: string;
  /** Body bytes relayed to the client so far (upstream responses only; not answers the relay made itself). */
  bodyBytes?: number;
}

export interface Relay {
  readonly name: string;
  /** http://127.0.0.1:PORT (https:// with `tls`) */
  readonly url: string;
  /** 127.0.0.1:PORT */
  readonly host: string;
  readonly port: number;
  stop(): Promise<void>;
  /** Every request received, oldest first; tests may clear it with `relay.requests.length = 0`. */
  readonly requests: RelayedRequest[];
  /**
   * Sets the fault(s) for requests that arrive from now on (body faults: for responses that start from now
   * on); null passes everything through. With a list,
   * each request gets the first fault that applies to it (and has uses left, for those with `times`).
   * `match` is tested against "METHOD path" (path with its query, e.g. "GET /v2/x/manifests/v1?ns=docker.io");
   * without it a fault applies to every request. Use counts start afresh with every setFault call.
   */
  setFault(f: Fault | Fault[] | null): void;
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

/** Faults decided before anything goes upstream. */
const REQUEST_FAULTS: ReadonlySet<FaultKind> = new Set(["stallHeaders", "status", "reset", "redirect"]);

/**
 * `tls`: listen with HTTPS using this certificate and key (for an upstream reached over TLS, the way every public
 * registry is); the target is still plain HTTP.
 */
export async function startRelay(
  targetUrl: string,
  opts: { tls?: { cert: string | Buffer; key: string | Buffer } } = {},
): Promise<Relay> {
  const target = new URL(targetUrl);
  if (target.protocol !== "http:") throw new Error(`relay: only http:// targets are supported, got ${targetUrl}`);
  // Own agent so stop() can close the upstream connections this relay opened, and only those.
  const agent = new Agent({ keepAlive: true });
  const requests: RelayedRequest[] = [];
  let faults: Fault[] = [];
  // Uses of each fault with `times`, per setFault call (a new call starts a new map).
  let used = new Map<Fault, number>();
  let relayHost = "";

  /** The first fault of `phase` that applies to this request, counting one use of it. */
  const pick = (phase: "request" | "response", method: string, path: string, status = 0): Fault | null => {
    for (const f of faults) {
      if (REQUEST_FAULTS.has(f.kind) !== (phase === "request")) continue;
      if (!applies(f, method, path, status)) continue;
      const times = "times" in f ? f.times : undefined;
      const count = used.get(f) ?? 0;
      if (times !== undefined && count >= times) continue;
      used.set(f, count + 1);
      return f;
    }
    return null;
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const path = req.url ?? "/";
    const method = req.method ?? "GET";
    const authorization = req.headers.authorization;
    const record: RelayedRequest = { method, path, authorization: authorization !== undefined };
    if (authorization !== undefined) record.authScheme = (authorization.split(" ", 1)[0] ?? "").toLowerCase();
    requests.push(record);

    const early = pick("request", method, path);
    if (early !== null) {
      record.fault = early.kind;
      if (early.kind === "stallHeaders") return; // the socket stays open until the client or stop() closes it
      if (early.kind === "reset") {
        req.socket.resetAndDestroy();
        return;
      }
      if (early.kind === "status") {
        req.resume();
        record.status = early.status;
        sendError(res, method, early.status, early.headers ?? {});
        return;
      }
      if (early.kind === "redirect") {
        req.resume();
        record.status = 302;
        res.writeHead(302, {
          location: early.location,
          "content-length": "0",
          "docker-distribution-api-version": "registry/2.0",
        });
        res.end();
        return;
      }
    }

    // A blob GET to be redirected is asked upstream as a HEAD: the registry still decides auth, existence
    // and Range, and its log shows no transfer that nobody reads (the blob host's GET is the transfer).
    const redirect = method === "GET" && isBlobPath(path) ? faults.find((f) => f.kind === "redirectBlobs") : undefined;

    const upstreamReq = httpRequest(
      {
        protocol: "http:",
        hostname: target.hostname,
        port: target.port,
        method: redirect === undefined ? method : "HEAD",
        path,
        headers: forwardHeaders(req.headers, relayHost),
        agent,
      },
      (upstreamRes) => {
        const status = upstreamRes.statusCode ?? 0;
        record.status = status;
        if (redirect !== undefined) {
          upstreamRes.resume();
          if (status < 200 || status > 299) {
            // The registry's refusal (401 with its challenge, 404, 416), as a GET would have had it; a HEAD
            // answer has no body, so the OCI error body is made here.
            sendError(
              res,
              method,
              status,
              passedHeaders(upstreamRes.headers),
              `the registry answered ${status}`,
              BLOB_ERROR_CODES[status],
            );
            return;
          }
          record.fault = "redirectBlobs";
          record.status = 307;
          const { repo, digest } = blobRef(path);
          const location = new URL(redirect.to.signedUrl(repo, digest));
          if (redirect.hostname !== undefined) location.hostname = redirect.hostname;
          res.writeHead(307, {
            location: location.href,
            "content-length": "0",
            "docker-distribution-api-version": "registry/2.0",
          });
          res.end();
          return;
        }
        const applied = pick("response", method, path, status);
        if (applied !== null) record.fault = applied.kind;
        relayResponse(upstreamRes, res, applied, method, record).catch(() => {
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
  };
  const server =
    opts.tls !== undefined
      ? createHttpsServer({ cert: opts.tls.cert, key: opts.tls.key }, handle)
      : createServer(handle);

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
    url: `${opts.tls !== undefined ? "https" : "http"}://${host}`,
    host,
    port,
    requests,
    setFault: (f) => {
      faults = f === null ? [] : Array.isArray(f) ? [...f] : [f];
      used = new Map();
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Open (possibly throttled or stalled) transfers would otherwise keep close() waiting for minutes.
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

/** Whether `f` applies to this request (request-phase faults) or to its upstream response (the others). */
function applies(f: Fault, method: string, path: string, status: number): boolean {
  switch (f.kind) {
    case "stallHeaders":
    case "status":
    case "reset":
    case "redirect":
    case "stallBody":
      return f.match === undefined || `${method} ${path}`.search(f.match) !== -1;
    case "redirectBlobs":
      return false; // decided before the request goes upstream: see `redirect` in startRelay
    case "throttle":
      if (f.match !== undefined) return `${method} ${path}`.search(f.match) !== -1;
      return method === "GET" && status >= 200 && status <= 299 && isBlobPath(path);
    case "corrupt":
    case "truncate":
    case "wrongLength":
    case "noLength":
    case "emptyBody":
      // Blob downloads that succeed upstream; errors and HEADs pass through untouched.
      return method === "GET" && status >= 200 && status <= 299 && isBlobPath(path);
  }
}

function isBlobPath(path: string): boolean {
  return BLOB_PATH.test(path.split("?", 1)[0] ?? path);
}

/** Repository and digest of a blob path ("/v2/library/x/blobs/sha256:...?ns=docker.io"). */
function blobRef(path: string): { repo: string; digest: string } {
  const m = /^\/v2\/(.+)\/blobs\/([^/?]+)/.exec(path);
  return { repo: m?.[1] ?? "", digest: decodeURIComponent(m?.[2] ?? "") };
}

/** OCI error codes for the statuses tests inject; anything else is UNKNOWN. */
const ERROR_CODES: Record<number, string> = {
  400: "UNSUPPORTED",
  401: "UNAUTHORIZED",
  403: "DENIED",
  404: "NAME_UNKNOWN",
  429: "TOOMANYREQUESTS",
  503: "UNAVAILABLE",
};

/** For a blob: what distribution says for these. */
const BLOB_ERROR_CODES: Record<number, string> = { ...ERROR_CODES, 404: "BLOB_UNKNOWN", 416: "BLOB_UNKNOWN" };

/** An error answer made by the relay, shaped like a registry's: JSON error body, API version header, no body for HEAD. */
function sendError(
  res: ServerResponse,
  method: string,
  status: number,
  headers: IncomingHttpHeaders,
  message = `injected by the test relay: ${status}`,
  code = ERROR_CODES[status] ?? "UNKNOWN",
): void {
  const body = Buffer.from(JSON.stringify({ errors: [{ code, message, detail: null }] }));
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "docker-distribution-api-version": "registry/2.0",
    ...headers,
    "content-length": String(body.length),
  });
  res.end(method === "HEAD" ? undefined : body);
}

/** Upstream response headers worth passing on with a relay-made error (the challenge above all). */
function passedHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const out: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (!HOP_BY_HOP.has(name) && name !== "content-length" && name !== "content-type" && value !== undefined)
      out[name] = value;
  }
  return out;
}

/** Copies status, headers and body from the upstream response to the client, applying `fault` to the body. */
async function relayResponse(
  upstream: IncomingMessage,
  res: ServerResponse,
  fault: Fault | null,
  method: string,
  record: RelayedRequest,
): Promise<void> {
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
  if (fault?.kind === "noLength") delete headers["content-length"];
  if (fault?.kind === "emptyBody") {
    res.writeHead(status, upstream.statusMessage, { ...headers, "content-length": "0" });
    res.end();
    upstream.destroy();
    return;
  }
  res.writeHead(status, upstream.statusMessage, headers);

  if (fault?.kind === "stallBody" && (!hasBody || fault.afterBytes <= 0)) {
    // Headers only, now (Node would otherwise hold them back until the first body byte), then silence.
    res.flushHeaders();
    upstream.destroy();
    return;
  }

  // Byte budget for the body: truncate and stallBody stop at afterBytes, wrongLength one byte before the end.
  const limit =
    fault?.kind === "truncate" || fault?.kind === "stallBody"
      ? fault.afterBytes
      : fault?.kind === "wrongLength" && declared !== undefined
        ? Math.max(0, declared - 1)
        : Infinity;
  // Without a declared length "the middle" is unknown; flip the first byte then.
  const flipAt = fault?.kind === "corrupt" ? Math.floor((declared ?? 0) / 2) : -1;
  const throttle = fault?.kind === "throttle" ? Math.max(1, fault.bytesPerSecond) : undefined;
  // wrongLength on a body of unknown length: always hold the latest byte back, and drop it at the end.
  const holdBackLast = fault?.kind === "wrongLength" && declared === undefined;

  let sent = 0;
  record.bodyBytes = 0;
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
    record.bodyBytes = sent;
    if (sent >= limit) {
      reachedLimit = true;
      break;
    }
  }

  if (fault?.kind === "stallBody") {
    // What was written goes out; then nothing more, and the connection stays open (until stop()).
    upstream.destroy();
    return;
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
