// A stand-in for the blob storage (S3, a CDN) that real registries redirect blob downloads to: the relay's
// `redirectBlobs` fault answers blob GETs with `307 Location: <blob host>/blob/<digest>?sig=...`, and this
// second loopback server serves the bytes. It is a different origin (another port) from the registry, so a
// client that forwards the registry's Authorization along the redirect shows up in `requests`.
//
// Like presigned storage URLs, it serves only URLs it signed (signedUrl) and answers anything else 403;
// and like S3, it sends no Docker-Content-Digest: a client must check the digest itself.
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { ReadableStream as WebReadableStream } from "node:stream/web";
import { RegistryAuthenticator, type Credentials, type Registry } from "./registry.ts";

export interface BlobHostRequest {
  method: string;
  /** Path and query as requested ("/blob/sha256:...?sig=..."). */
  path: string;
  /** The Authorization header as received: a correct client sends none here. */
  authorization: string | undefined;
  range: string | undefined;
  /** What this host answered (undefined if the client went away first). */
  status?: number;
}

export interface BlobHostOptions {
  /**
   * Credentials for fetching from an upstream given by URL that requires auth. A Registry object needs
   * none: its harnessAuthorization() is used.
   */
  auth?: Credentials;
  /**
   * Answer requests that carry an Authorization header 400, as S3 does for a presigned URL plus a header
   * ("only one auth mechanism allowed"), instead of only recording them. Default false.
   */
  rejectAuthorization?: boolean;
}

export interface BlobHost {
  readonly name: string;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  /** 127.0.0.1:PORT */
  readonly host: string;
  readonly port: number;
  /** Every request received, oldest first; tests may clear it with `blobHost.requests.length = 0`. */
  readonly requests: BlobHostRequest[];
  /** A URL on this host that serves `digest` of `repo` (what the relay puts in its 307 Location). */
  signedUrl(repo: string, digest: string): string;
  stop(): Promise<void>;
}

/** Headers passed from the registry's blob response: what storage would send. Not Docker-Content-Digest. */
const PASSED_HEADERS = ["content-length", "content-range", "accept-ranges", "etag", "last-modified"];

/**
 * Starts a blob host that fetches the bytes it serves from `upstream` (a registry, or a relay in front of
 * one for faults on the redirected transfer too), passing Range on so partial requests get 206.
 * Its fetches are ordinary blob GETs in the upstream registry's log.
 */
export async function startBlobHost(upstream: string | Registry, opts: BlobHostOptions = {}): Promise<BlobHost> {
  const base = (typeof upstream === "string" ? upstream : upstream.url).replace(/\/+$/, "");
  if (new URL(base).hostname !== "127.0.0.1") throw new Error(`blob host: upstream must be on 127.0.0.1, got ${base}`);
  const client = new RegistryAuthenticator(opts.auth);
  const signed = new Map<string, { repo: string; digest: string }>();
  const requests: BlobHostRequest[] = [];
  let url = "";

  const serve = async (req: IncomingMessage, res: ServerResponse, record: BlobHostRequest): Promise<void> => {
    const reqUrl = new URL(req.url ?? "/", "http://blob-host");
    const digest = decodeURIComponent(reqUrl.pathname.replace(/^\/blob\//, ""));
    const entry = signed.get(reqUrl.searchParams.get("sig") ?? "");
    if (!reqUrl.pathname.startsWith("/blob/") || entry === undefined || entry.digest !== digest) {
      record.status = 403;
      sendText(res, 403, "SignatureDoesNotMatch: this URL was not signed by this blob host\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      record.status = 405;
      sendText(res, 405, "MethodNotAllowed\n");
      return;
    }
    if (opts.rejectAuthorization === true && record.authorization !== undefined) {
      record.status = 400;
      sendText(res, 400, "InvalidArgument: only one auth mechanism allowed; presigned URL plus Authorization header\n");
      return;
    }

    const headers: Record<string, string> = {};
    if (record.range !== undefined) headers["range"] = record.range;
    const upstreamUrl = `${base}/v2/${entry.repo}/blobs/${entry.digest}`;
    const harnessAuth = typeof upstream === "string" ? undefined : upstream.harnessAuthorization(entry.repo);
    if (harnessAuth !== undefined) headers["authorization"] = harnessAuth;
    const abort = new AbortController();
    res.once("close", () => abort.abort());
    const answer = await client.fetch(upstreamUrl, { method: req.method, headers, signal: abort.signal });

    const out: Record<string, string> = { "content-type": "application/octet-stream" };
    for (const name of PASSED_HEADERS) {
      const value = answer.headers.get(name);
      if (value !== null) out[name] = value;
    }
    record.status = answer.status;
    res.writeHead(answer.status, out);
    if (answer.body === null || req.method === "HEAD") {
      await answer.body?.cancel();
      res.end();
      return;
    }
    await pipeline(Readable.fromWeb(answer.body as WebReadableStream<Uint8Array>), res);
  };

  const server = createServer((req, res) => {
    req.resume();
    const record: BlobHostRequest = {
      method: req.method ?? "GET",
      path: req.url ?? "/",
      authorization: req.headers.authorization,
      range: req.headers.range,
    };
    requests.push(record);
    serve(req, res, record).catch((err: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      record.status = 502;
      sendText(res, 502, `blob host: upstream error: ${err instanceof Error ? err.message : String(err)}\n`);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0 }, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = `127.0.0.1:${port}`;
  url = `http://${host}`;

  let stopping: Promise<void> | undefined;
  return {
    name: `blob host ${host} <- ${new URL(base).host}`,
    url,
    host,
    port,
    requests,
    signedUrl(repo, digest) {
      const sig = randomBytes(16).toString("hex");
      signed.set(sig, { repo, digest });
      return `${url}/blob/${digest}?sig=${sig}`;
    },
    stop() {
      stopping ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return stopping;
    },
  };
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain", "content-length": String(Buffer.byteLength(text)) });
  res.end(text);
}
