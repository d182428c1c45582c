/**
 * Failed credential checks per client (client-address.ts), counted in fixed windows: a client that has failed
 * `max` times in its current window is answered 429 TOOMANYREQUESTS, with `Retry-After` the rest of the window,
 * for every request that carries credentials, and those credentials are not checked. So guessing passwords or
 * tokens costs the mirror at most `max` checks per client per window, and a correct guess made while refused is
 * refused too (otherwise the refusal would still answer "right" or "wrong").
 *
 * Memory is bounded: at most `maxClients` clients are remembered, the least recently failing forgotten first.
 */
import { LRUCache } from "lru-cache";
import { RegistryError } from "../oci/errors.ts";

const MAX_CLIENTS = 10_000;

interface Window {
  failures: number;
  /** When this window ends (ms, on the limiter's clock). */
  endsAt: number;
}

export class AuthFailureLimit {
  private readonly max: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly clients: LRUCache<string, Window>;

  constructor(opts: { max: number; windowMs: number; maxClients?: number; now?: () => number }) {
    this.max = opts.max;
    this.windowMs = opts.windowMs;
    this.now = opts.now ?? Date.now;
    this.clients = new LRUCache({ max: opts.maxClients ?? MAX_CLIENTS });
  }

  /** Throws TOOMANYREQUESTS while `client` has used up its failures for the current window. */
  check(client: string): void {
    const window = this.current(client);
    if (window === undefined || window.failures < this.max) return;
    const seconds = Math.max(1, Math.ceil((window.endsAt - this.now()) / 1000));
    throw new RegistryError("TOOMANYREQUESTS", `too many failed logins from this address; retry in ${seconds} s`, {
      headers: { "Retry-After": String(seconds) },
    });
  }

  /** Counts a failed check by `client`. */
  failed(client: string): void {
    const window = this.current(client) ?? { failures: 0, endsAt: this.now() + this.windowMs };
    window.failures++;
    this.clients.set(client, window);
  }

  /** Clients remembered now (for tests and metrics). */
  get size(): number {
    return this.clients.size;
  }

  private current(client: string): Window | undefined {
    const window = this.clients.peek(client);
    if (window === undefined || window.endsAt > this.now()) return window;
    this.clients.delete(client);
    return undefined;
  }
}
