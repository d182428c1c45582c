/**
 * How long a request for content the mirror holds waits on its upstream (`upstreams.<name>.revalidateTimeout`).
 * A mirror exists to make pulls independent of the upstream: when the cache can answer, an upstream that accepts
 * connections and never replies (or a probe let through by the health state) must not hold the client for the
 * upstream's own timeouts. The upstream request is not cancelled: it goes on under those timeouts and updates the
 * cache when it answers, so the next request benefits from it.
 */
import { timerDelay } from "../config/timer-delay.ts";
import { RegistryError } from "../oci/errors.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";

/** An upstream exchange that requests share, and when it started (performance.now(), for `settleWithin`). */
export interface SharedExchange<T> {
  result: Promise<T>;
  since: number;
}

/**
 * One upstream exchange per key in this process: a request for a key already being asked joins that exchange
 * (and its deadline, which runs from when the exchange started); the key is free again once it settles.
 */
export class SharedExchanges<T> {
  private readonly running = new Map<string, SharedExchange<T>>();

  join(key: string, work: () => Promise<T>): SharedExchange<T> {
    const running = this.running.get(key);
    if (running) return running;
    const shared = { result: work().finally(() => this.running.delete(key)), since: performance.now() };
    this.running.set(key, shared);
    return shared;
  }
}

/** `work` did not settle in time; it goes on in the background. */
export const LATE = Symbol("late");

/**
 * Waits for `work` at most `ms` (from `since`, when the work started earlier and others already waited on it).
 * Resolves to its value, or to LATE when the time is up; a rejection before then is the caller's. After LATE the
 * work's outcome is nobody's: its rejection is handled here, never left unhandled.
 */
export async function settleWithin<T>(work: Promise<T>, ms: number, since?: number): Promise<T | typeof LATE> {
  const left = since === undefined ? ms : ms - (performance.now() - since);
  if (left <= 0) {
    work.catch(() => undefined);
    return LATE;
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<typeof LATE>((resolve) => {
    timer = setTimeout(() => resolve(LATE), timerDelay(left));
  });
  try {
    const outcome = await Promise.race([work, late]);
    if (outcome === LATE) work.catch(() => undefined);
    return outcome;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The answer when the upstream did not confirm what the cache holds in time and the cache may not answer alone:
 * UNAVAILABLE (503), so the client retries or moves on rather than waiting for the upstream's own timeouts.
 */
export function confirmationLate(upstream: UpstreamClient, what: string): RegistryError {
  return new RegistryError(
    "UNAVAILABLE",
    `upstream ${upstream.name} did not confirm ${what} within ${upstream.config.revalidateTimeout / 1000} s (revalidateTimeout)`,
    { detail: { upstream: upstream.name, timeout: "revalidateTimeout" } },
  );
}
