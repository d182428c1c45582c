/**
 * Whether an upstream is worth asking. After `failureThreshold` consecutive failures (transport errors, 5xx) it
 * is treated as down for a back-off period that doubles with each failed probe (up to `maxBackoff`), as Nexus's
 * auto-block does. While down, requests fail at once with UNAVAILABLE, so the caches answer from what they hold
 * instead of keeping clients waiting on a dead host; when the period is over, one request is let through as a
 * probe, and its success brings the upstream back.
 */
export type HealthState = "up" | "down";

export class UpstreamHealth {
  private readonly threshold: number;
  private readonly initialBackoffMs: number;
  private readonly maxBackoffMs: number;
  private readonly now: () => number;
  private failures = 0;
  private backoffMs: number;
  private downUntil = 0;
  private probing = false;
  state: HealthState = "up";
  /** The last failure counted, for operators (the console): when, and what it was. */
  lastError: { at: number; message: string } | undefined;

  constructor(opts: { failureThreshold: number; initialBackoffMs: number; maxBackoffMs: number; now?: () => number }) {
    this.threshold = opts.failureThreshold;
    this.initialBackoffMs = opts.initialBackoffMs;
    this.maxBackoffMs = opts.maxBackoffMs;
    this.backoffMs = opts.initialBackoffMs;
    this.now = opts.now ?? Date.now;
  }

  /** May a request go to the upstream now? While down, true once per back-off period (the probe). */
  allow(): boolean {
    if (this.state === "up") return true;
    if (this.probing || this.now() < this.downUntil) return false;
    this.probing = true;
    return true;
  }

  /** Milliseconds until the next probe may go (0 when up). */
  retryInMs(): number {
    return this.state === "up" ? 0 : Math.max(0, this.downUntil - this.now());
  }

  success(): void {
    this.failures = 0;
    this.probing = false;
    this.state = "up";
    this.backoffMs = this.initialBackoffMs;
  }

  failure(message = "failed"): void {
    this.lastError = { at: this.now(), message };
    this.failures++;
    if (this.state === "down") {
      // A failed probe: stay down, for longer.
      this.probing = false;
      this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
      this.downUntil = this.now() + this.backoffMs;
    } else if (this.failures >= this.threshold) {
      this.state = "down";
      this.downUntil = this.now() + this.backoffMs;
    }
  }
}
