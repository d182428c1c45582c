/**
 * What a protocol handler answers: status, headers and an optional body. The HTTP layer writes it; handlers
 * never touch Koa, so they are testable without a server and the one-way data flow stays visible.
 */
import type { Readable } from "node:stream";
import type { CacheResult } from "../observability/metrics.ts";

export interface RegistryResponse {
  status: number;
  headers: Record<string, string>;
  body?: Buffer | Readable;
  /** How the content was obtained (hit, miss, coalesced, revalidated, stale), for logs and metrics. */
  cache?: CacheResult;
}
