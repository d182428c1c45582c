/**
 * Another replica of the fleet as a source of a blob: the download it is running (or has just committed),
 * streamed from its internal endpoint `GET /internal/v1/fills/<digest>` (http/peer-router.ts).
 *
 * Requests are signed, not authenticated with the secret itself: `X-Mirror-Peer: <unix seconds>.<hex>`, an
 * HMAC-SHA256 over the method, the digest and the time, keyed with the sha256 of the shared cluster secret. A
 * replica that reads a lease naming some URL therefore never sends the secret anywhere, and a captured header
 * opens one digest for a minute. Peers are reached only at URLs that replicas wrote into their leases (their own
 * `cluster.advertiseUrl`); nothing a client sends names one.
 *
 * What a peer sends is a source like an upstream: the fill that reads it verifies every byte against the digest
 * before anything is committed, and a reader following it gets its last byte only then.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import type { Readable } from "node:stream";
import { Agent } from "./undici.ts";
import { discardBody } from "./response-body.ts";
import { headerValue } from "./upstream-errors.ts";
import { errorMessage } from "../caught-errors.ts";

/** The header carrying a peer request's signature. */
export const PEER_SIGNATURE_HEADER = "x-mirror-peer";
/** How far a signature's time may be from the receiver's clock, either way. */
const SIGNATURE_WINDOW_S = 60;

/** The signature of a request for `digest` at `unixSeconds`, keyed with the sha256 of the cluster secret. */
export function peerSignature(key: Buffer, digest: string, unixSeconds: number): string {
  const mac = createHmac("sha256", key).update(`GET\n${digest}\n${unixSeconds}`).digest("hex");
  return `${unixSeconds}.${mac}`;
}

/** Whether `header` is a current signature of a request for `digest` with this key. */
export function verifyPeerSignature(
  key: Buffer | undefined,
  digest: string,
  header: string | undefined,
  nowMs = Date.now(),
): boolean {
  if (key === undefined || header === undefined) return false;
  const match = /^(\d{1,12})\.([0-9a-f]{64})$/.exec(header);
  if (!match) return false;
  const at = Number(match[1]);
  if (Math.abs(nowMs / 1000 - at) > SIGNATURE_WINDOW_S) return false;
  const expected = Buffer.from(peerSignature(key, digest, at).split(".")[1]!, "hex");
  return timingSafeEqual(expected, Buffer.from(match[2]!, "hex"));
}

/** The peer could not serve the blob: unreachable, no download of it, or an error answer. Nothing was received. */
export class PeerUnavailableError extends Error {
  constructor(peer: string, why: string) {
    super(`peer ${peer}: ${why}`);
    this.name = "PeerUnavailableError";
  }
}

export class PeerClient {
  private readonly agent: Agent;
  private readonly key: () => Buffer | undefined;

  /** `key`: the sha256 of the cluster secret now, or undefined while it has none usable (secret-file.ts). */
  constructor(opts: { key: () => Buffer | undefined; connectTimeoutMs: number; bodyIdleMs: number }) {
    this.key = opts.key;
    this.agent = new Agent({
      connect: { timeout: opts.connectTimeoutMs },
      headersTimeout: opts.connectTimeoutMs,
      bodyTimeout: opts.bodyIdleMs,
    });
  }

  /**
   * The peer's bytes of `digest`, from the first: a running download (the body ends once the peer verified it)
   * or committed content. PeerUnavailableError when the peer has neither or cannot be reached.
   */
  async getFill(
    peerUrl: string,
    digest: string,
    signal: AbortSignal,
  ): Promise<{ size: number | undefined; body: Readable }> {
    const key = this.key();
    if (key === undefined) throw new PeerUnavailableError(peerUrl, "this replica has no usable cluster secret");
    let url: URL;
    try {
      url = new URL(`/internal/v1/fills/${digest}`, peerUrl);
    } catch {
      throw new PeerUnavailableError(peerUrl, "not a URL");
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new PeerUnavailableError(peerUrl, "not http(s)");
    let res;
    try {
      res = await this.agent.request({
        origin: url.origin,
        path: url.pathname,
        method: "GET",
        headers: { [PEER_SIGNATURE_HEADER]: peerSignature(key, digest, Math.floor(Date.now() / 1000)) },
        signal,
      });
    } catch (err) {
      throw new PeerUnavailableError(peerUrl, errorMessage(err));
    }
    if (res.statusCode !== 200) {
      discardBody(res.body);
      throw new PeerUnavailableError(peerUrl, `answered ${res.statusCode}`);
    }
    const length = headerValue(res.headers, "content-length");
    return { size: length !== undefined ? Number(length) : undefined, body: res.body };
  }

  async close(): Promise<void> {
    await this.agent.close();
  }
}
