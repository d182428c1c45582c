/**
 * How V8 manages the mirror's heap: the flags that can be changed at run time, set by main.ts before anything else
 * is loaded (the ones that cannot, such as the young generation's size, are in scripts/node-flags). This module
 * imports nothing but node:v8, so main.ts can load it statically.
 *
 * Both rules come from the same shape of work: a blob stream allocates a 64 KiB buffer per socket read, keeps a
 * few of them alive at any moment, and (fill/receive-pacer.ts) asks for a young-generation collection every 8 MiB
 * received so that the rest are freed at once.
 */
import { setFlagsFromString } from "node:v8";

/**
 * V8 flags of the policy, each with what it fixed. Changeable at run time: V8 reads them at every decision.
 */
export const HEAP_POLICY_FLAGS: readonly string[] = [
  // V8 learns per allocation site whether objects tend to survive a young-generation GC and then allocates them
  // straight in the old generation. Streaming a blob teaches it that promises and stream objects survive (the
  // chunks in flight do), and the same sites then put every short-lived object of a manifest hit in the old
  // generation: after the bench's S3 (16 clients, cold 100 MiB) the warm manifest S4 ran 9,700-12,800 req/s
  // with GC threads busy and 350 MiB RSS, against 15,700-16,300 req/s and 170 MiB without the S3 before it.
  // With pretenuring off: 16,300-16,800 req/s after S3, 210 MiB; cold 1 GiB throughput unchanged.
  "--no-allocation-site-pretenuring",
  // When V8 starts marking the old generation. By default: as soon as the room left below the old generation's
  // limit is smaller than the young generation's target capacity, however little was allocated since the last
  // mark-compact. After a quiet spell V8's memory reducer sets that limit close to the live size (here 25 MB live,
  // a 35-37 MB limit), so the room is always "too small" and marking restarts right after every mark-compact.
  // While marking runs, any young-generation collection (the receive pacer's, every 8 MiB) first finishes the
  // marking: a mark-compact of 5-20 ms every ~16 MiB received. Measured on a warm 512 MiB read from S3 after 30 s
  // idle: 31-36 mark-compacts per read and 144-259 MB/s, 0.26-0.29x of a direct GET. With marking started by the
  // share of that room used since the last mark-compact (half: a task starts it; 80 %: it starts at once):
  // no mark-compact, 273-326 MB/s, 0.66x (load 3.5).
  "--incremental-marking-soft-trigger=50",
  "--incremental-marking-hard-trigger=80",
];

/** Applies HEAP_POLICY_FLAGS to this process. */
export function applyHeapPolicy(): void {
  for (const flag of HEAP_POLICY_FLAGS) setFlagsFromString(flag);
}
