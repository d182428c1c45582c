/**
 * Requests in progress per client (client-address.ts): one client may have at most `maxPerClient` requests
 * open at once (a request counts until its response has finished or its connection closed, so a client that
 * stops reading keeps its slot); the next is answered 429 TOOMANYREQUESTS with `Retry-After`. This keeps one
 * client from taking all of `limits.maxConnections`, and the file handles and buffers behind them.
 *
 * The probes are not counted: a node's kubelet probes from the same address its container runtime pulls from,
 * and a busy node must not fail the mirror's liveness. Memory is bounded by the open requests themselves: a
 * client is forgotten when its last request ends.
 */
import type Koa from "koa";
import { RegistryError } from "../oci/errors.ts";
import { clientKey } from "./client-address.ts";
import type { RequestState } from "./request-context.ts";

const PROBES: ReadonlySet<string> = new Set(["/healthz", "/readyz"]);

export function clientConcurrency(maxPerClient: number): Koa.Middleware<RequestState> {
  const open = new Map<string, number>();
  return async (ctx, next) => {
    if (PROBES.has(ctx.path)) {
      await next();
      return;
    }
    const client = clientKey(ctx.req.socket.remoteAddress);
    const count = open.get(client) ?? 0;
    if (count >= maxPerClient) {
      throw new RegistryError("TOOMANYREQUESTS", `more than ${maxPerClient} requests in progress from this address`, {
        headers: { "Retry-After": "1" },
      });
    }
    open.set(client, count + 1);
    ctx.res.once("close", () => {
      const left = (open.get(client) ?? 1) - 1;
      if (left === 0) open.delete(client);
      else open.set(client, left);
    });
    await next();
  };
}
