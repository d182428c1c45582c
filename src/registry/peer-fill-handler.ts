/**
 * `GET /internal/v1/fills/<digest>` for the other replicas of a fleet (http/peer-router.ts checks who asks): the
 * download of `digest` running here, streamed from its first byte as a client following it would get it (its last
 * byte only once verified), or the committed content. Never starts a download and never asks an upstream: a replica
 * asks only because this one's lease said it was downloading, so anything else is 404 and the asker takes over.
 */
import { RegistryError } from "../oci/errors.ts";
import type { FillCoordinator } from "../fill/fill-coordinator.ts";
import type { ContentStore } from "../storage/content-store.ts";
import type { RegistryResponse } from "./response.ts";

export class PeerFillHandler {
  private readonly fills: FillCoordinator;
  private readonly store: ContentStore;

  constructor(opts: { fills: FillCoordinator; store: ContentStore }) {
    this.fills = opts.fills;
    this.store = opts.store;
  }

  async handle(digest: string): Promise<RegistryResponse> {
    const running = this.fills.current(digest);
    if (running !== undefined) {
      const ready = await running.ready.then(
        () => true,
        () => false,
      );
      // Decided at this instant, before any further await: a reader is only valid on a download still going. A
      // fill that failed, was committed or kept nothing is answered from the store below, or not at all.
      if (ready && running.state !== "failed" && running.readableAs() === "download") {
        const size = running.size;
        const body = running.createReader(0, size === undefined ? undefined : size - 1);
        return respond(digest, size, body);
      }
    }
    const stored = await this.store.open(digest);
    if (stored !== undefined) return respond(digest, stored.size, stored.read());
    throw new RegistryError("BLOB_UNKNOWN", `no download of ${digest} here`);
  }
}

function respond(digest: string, size: number | undefined, body: RegistryResponse["body"]): RegistryResponse {
  const headers: Record<string, string> = {
    "Content-Type": "application/octet-stream",
    "Docker-Content-Digest": digest,
  };
  if (size !== undefined) headers["Content-Length"] = String(size);
  return { status: 200, headers, body };
}
