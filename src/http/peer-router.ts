/**
 * The fleet's internal endpoint, `GET /internal/v1/fills/<digest>` (registry/peer-fill-handler.ts), for the other
 * replicas only: a request must carry a current signature made with the shared cluster secret
 * (upstream/peer-client.ts says how it is made); anything else is 401, whatever the client authentication
 * allows, and nothing under `/internal/` exists on a mirror without `cluster`. Only sha256 digests are accepted,
 * checked on the path as the client sent it.
 */
import { Readable } from "node:stream";
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import type { PeerFillHandler } from "../registry/peer-fill-handler.ts";
import { PEER_SIGNATURE_HEADER, verifyPeerSignature } from "../upstream/peer-client.ts";
import type { RequestState } from "./request-context.ts";

const FILL_PATH = /^\/internal\/v1\/fills\/(sha256:[0-9a-f]{64})$/;

/** `key` is the sha256 of the cluster secret, or undefined while the secret file holds none usable (then: 401). */
export function peerRouter(handler: PeerFillHandler, key: () => Buffer | undefined): Koa.Middleware<RequestState> {
  return async (ctx, next) => {
    if (!ctx.path.startsWith("/internal/")) {
      await next();
      return;
    }
    const match = FILL_PATH.exec(ctx.path);
    if (match === null || ctx.method !== "GET")
      throw new RegistryError("UNSUPPORTED", `no such endpoint: ${ctx.path.slice(0, 200)}`, { status: 404 });
    const digest = match[1]!;
    if (!verifyPeerSignature(key(), digest, ctx.get(PEER_SIGNATURE_HEADER) || undefined))
      throw new RegistryError("UNAUTHORIZED", "this endpoint is for the mirror's own replicas");
    const response = await handler.handle(digest);
    ctx.status = response.status;
    ctx.set(response.headers);
    if (response.body instanceof Readable) response.body.once("error", () => ctx.res.destroy());
    ctx.body = response.body;
  };
}
