/**
 * Keeps the memory of received upstream bodies from piling up, by asking V8 for a young-generation collection
 * after every few MiB received.
 *
 * Why: every read from a socket allocates a fresh 64 KiB buffer (Node's stream reads; undici hands out views of
 * them). Once written to the temp file they are garbage, but a buffer is a tiny JavaScript object with a large
 * off-heap backing store, so the young generation fills slowly and V8 notices the garbage only through its
 * external-memory limit, which starts a full mark-compact about every 32–64 MiB. Measured on the bench machine
 * (a cold 1 GiB through undici, body discarded): 23 mark-compacts, 164 MiB peak RSS, 2.7 s of CPU, ~460 MB/s;
 * with a minor GC every 16 MiB: 1 mark-compact, 111 MiB, 1.35 s, ~1,000 MB/s. A minor GC costs well under a
 * millisecond here: nothing but the buffers still in flight survives it.
 *
 * The collection is requested through V8's `gc` extension, enabled at run time (`--expose-gc` set from here,
 * the function taken from a fresh context, so no global `gc` appears in the application). Where that is not
 * available the pacer does nothing and only the speed and memory gain is lost.
 *
 * One pacer per mirror, made by the composition root and handed to everything that receives upstream bodies
 * (fills, verified pass-throughs) and to the S3 store, whose warm reads receive every byte from the object
 * store (a 256 MiB read through one mirror, interleaved A/B under load: ~120 -> ~260 MB/s median), so that all
 * their received bytes count towards the same collections.
 *
 * A young-generation collection requested while V8 is marking the old generation first finishes that marking (a
 * full mark-compact), so how often marking runs matters here: heap-policy.ts sets when it starts, so that a tight
 * old-generation limit does not keep it running and turn every request below into a mark-compact.
 */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/** Bytes received between two minor collections (half the smallest interval that still avoided mark-compacts). */
export const MINOR_GC_EVERY_BYTES = 8 * 1024 * 1024;

type GcFunction = (options?: { type?: "minor" | "major"; execution?: "sync" | "async" }) => void;

function loadGc(): GcFunction | undefined {
  try {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as unknown;
    return typeof gc === "function" ? (gc as GcFunction) : undefined;
  } catch {
    return undefined;
  }
}

export class ReceivePacer {
  private readonly gc: GcFunction | undefined;
  private readonly every: number;
  private pending = 0;
  /** Minor collections requested so far (for tests and diagnostics). */
  collections = 0;

  constructor(opts: { everyBytes?: number; gc?: GcFunction | null } = {}) {
    this.every = opts.everyBytes ?? MINOR_GC_EVERY_BYTES;
    this.gc = opts.gc === null ? undefined : (opts.gc ?? loadGc());
  }

  /** Whether collections can be requested at all. */
  get active(): boolean {
    return this.gc !== undefined;
  }

  /** `bytes` more of an upstream body have been received and handed on. */
  received(bytes: number): void {
    if (this.gc === undefined) return;
    this.pending += bytes;
    if (this.pending < this.every) return;
    this.pending = 0;
    this.collections++;
    this.gc({ type: "minor" });
  }
}
