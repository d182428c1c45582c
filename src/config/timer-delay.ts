/**
 * A configured duration as a Node.js timer delay. Node keeps a delay of at most 2^31-1 ms (about 24.8 days) and
 * fires a longer one after 1 ms; so do the timeouts built on its timers (sockets, ioredis). A duration longer
 * than that, someone's "practically never", waits the longest delay instead: every setTimeout, setInterval and
 * library timeout option that takes a configured duration goes through `timerDelay`. The config keeps the value
 * as written; `longDurationWarnings` (load.ts) names each such key in a warning at start-up.
 */

/** The longest delay a Node.js timer keeps: 2^31-1 ms, about 24.8 days. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` as a delay a timer honours: unchanged up to MAX_TIMER_MS, MAX_TIMER_MS beyond. */
export function timerDelay(ms: number): number {
  return Math.min(ms, MAX_TIMER_MS);
}
