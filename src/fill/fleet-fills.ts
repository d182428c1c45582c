/**
 * Where a replica of a fleet gets a blob it is about to download: from the upstream when it holds the digest's
 * lease (fill-lease.ts), otherwise from the replica that holds it (peer-client.ts), so that a blob wanted on
 * several replicas at once leaves its upstream once.
 *
 * The answer is a source for one fill of this replica (fill-coordinator.ts): whatever it is, the fill verifies
 * every byte against the digest before committing, and its readers get their last byte only then. In order:
 *  1. The lease is free: this replica takes it and downloads; the caller releases the lease when the fill ends.
 *     If a shared store already has the content (another replica committed it between this replica's look in
 *     the store and its claim), there is nothing to download: CommittedElsewhereError, and the caller reads the
 *     store.
 *  2. Another replica holds it for the same upstream: this replica streams that replica's download. The holder
 *     downloads for a repository of its own; when that is another one, the caller's `confirmRepository` (the
 *     upstream's HEAD) runs first, so a peer's bytes never answer for a repository its upstream did not confirm.
 *     The source says whose download it is (`shared`): on a store the replicas share, the holder's upload is
 *     the one, and this replica's write commits the holder's object once its own copy verified (the store's
 *     writer decides: s3-content-store.ts), waiting for it at most a lease's time to live while the lease
 *     still names the holder.
 *  3. That replica cannot serve it (it died, or its download ended without a copy to give): the lease is taken
 *     over (only if it still names that replica: fill-lease.ts) and this replica downloads; if someone else took
 *     it first, it follows them. Three rounds at most, then it downloads for itself.
 *  4. Redis cannot say (down, slow): this replica downloads for itself, as one without a fleet would. A lease held
 *     for another upstream proves nothing here either: its own download.
 */
import type { Logger } from "pino";
import type { Metrics } from "../observability/metrics.ts";
import { PeerUnavailableError, type PeerClient } from "../upstream/peer-client.ts";
import type { FillOrigin, UpstreamBlob } from "./fill-coordinator.ts";
import type { FillLease, FillLeases } from "./fill-lease.ts";

/** How many times a replica looks for the lease's holder before downloading for itself. */
const ROUNDS = 3;

/** The content was committed to the shared store by another replica: read it there. */
export class CommittedElsewhereError extends Error {
  constructor(digest: string) {
    super(`${digest} was committed by another replica`);
    this.name = "CommittedElsewhereError";
  }
}

/** What the caller provides for one blob. */
export interface FleetSourceOps {
  /** This replica's own download from the upstream. */
  upstream(): Promise<UpstreamBlob>;
  /** The upstream's word that the caller's repository holds the blob (throws BLOB_UNKNOWN when not). */
  confirmRepository(): Promise<unknown>;
  /** Whether the store holds the content now (a shared store: another replica committed it). */
  committed(): Promise<boolean>;
  /** The lease this replica took for its download: released by the caller when the fill ends. */
  leased(lease: FillLease): void;
}

export class FleetFills {
  private readonly leases: FillLeases;
  private readonly peers: PeerClient;
  private readonly log: Logger;
  private readonly metrics: Metrics | undefined;

  constructor(opts: { leases: FillLeases; peers: PeerClient; log: Logger; metrics?: Metrics }) {
    this.leases = opts.leases;
    this.peers = opts.peers;
    this.log = opts.log;
    this.metrics = opts.metrics;
  }

  /** The source of this replica's fill of `digest` (see the header for the order). */
  async open(digest: string, origin: FillOrigin, signal: AbortSignal, ops: FleetSourceOps): Promise<UpstreamBlob> {
    for (let round = 0; round < ROUNDS; round++) {
      const claim = await this.leases.claim(digest, origin);
      if (claim.held === "unknown") {
        this.log.warn({ digest, reason: claim.reason }, "fleet: no lease, downloading without one");
        return this.fromUpstream(ops, "no-lease");
      }
      if (claim.held === "here") return this.asHolder(digest, claim.lease, ops);
      const { holder, value } = claim;
      if (holder.upstream !== origin.upstream) return this.fromUpstream(ops, "other-upstream");
      // A lease naming this replica with no download of it here was left by an earlier process at this address.
      if (holder.url !== this.leases.advertiseUrl) {
        if (holder.repo !== origin.repo) await ops.confirmRepository();
        try {
          const blob = await this.peers.getFill(holder.url, digest, signal);
          this.metrics?.fleetFills.inc({ source: "peer" });
          // The holder commits these bytes to a shared store itself; this replica's write waits for that.
          const shared = { pending: () => this.leases.stillHeld(digest, value), waitMs: this.leases.ttl };
          return { ...blob, shared };
        } catch (err) {
          if (!(err instanceof PeerUnavailableError)) throw err;
          this.log.warn({ digest, peer: holder.url, err: err.message }, "fleet: the download's holder cannot serve it");
        }
      }
      if (await ops.committed()) throw new CommittedElsewhereError(digest);
      const lease = await this.leases.takeOver(digest, value, origin);
      if (lease) return this.asHolder(digest, lease, ops, "takeover");
    }
    return this.fromUpstream(ops, "rounds");
  }

  private async asHolder(
    digest: string,
    lease: FillLease,
    ops: FleetSourceOps,
    why: "lease" | "takeover" = "lease",
  ): Promise<UpstreamBlob> {
    ops.leased(lease);
    if (await ops.committed()) {
      await lease.release();
      throw new CommittedElsewhereError(digest);
    }
    return this.fromUpstream(ops, why);
  }

  private fromUpstream(ops: FleetSourceOps, why: FleetUpstreamReason): Promise<UpstreamBlob> {
    this.metrics?.fleetFills.inc({ source: why === "lease" ? "upstream" : `upstream-${why}` });
    return ops.upstream();
  }
}

/** Why a replica of a fleet downloads from the upstream: it holds the lease, or one of the fallbacks above. */
type FleetUpstreamReason = "lease" | "takeover" | "no-lease" | "other-upstream" | "rounds";
