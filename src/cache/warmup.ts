/**
 * Warm-up sets (`warmup:` in the config): lists of images pulled into the cache on a schedule, so that a site
 * holds them before it needs them (before a maintenance window, before the link is cut). Each image goes through
 * the admin prefetch (prefetcher.ts: the read-through caches, verified, blob downloads shared with clients); a
 * set runs its images one after another and never overlaps itself: the next run is scheduled `every` after the
 * last one ended, whether the schedule or the admin API started it.
 *
 * A set read from a file follows the file: it is polled (file-watch.ts; a Kubernetes ConfigMap is updated by a
 * symlink swap, which a poll sees) and re-read when it changes. A file that becomes unreadable or invalid leaves
 * the last good list in force, and says so in the log, `mirror_warmup_list_invalid` and the admin API, until it
 * is valid again.
 */
import type { Logger } from "pino";
import { watchFiles } from "../config/file-watch.ts";
import type { Config } from "../config/schema.ts";
import { timerDelay } from "../config/timer-delay.ts";
import type { UpstreamResolver } from "../config/upstream-resolver.ts";
import { readWarmupFile } from "../config/warmup-list.ts";
import type { Metrics } from "../observability/metrics.ts";
import type { UpstreamClient } from "../upstream/upstream-client.ts";
import type { JobStatus, PrefetchRequest } from "./prefetcher.ts";
import { errorMessage } from "../caught-errors.ts";

type WarmupSetConfig = Config["warmup"][number];

/** One image of a run. */
export interface WarmupImageResult {
  reference: string;
  result: "ok" | "failed";
  /** Why it failed (the prefetch job's errors). */
  reason?: string;
  /** The manifest digest the reference named during the run. */
  digest?: string;
  /** Bytes of the image's blobs now in the cache (fetched by this run, or held already). */
  bytes: number;
  blobs: number;
  /** Whether its content was pinned by this run (`pin: true`). */
  pinned: boolean;
}

export interface WarmupRun {
  /** Runs of this set since start, counted from 1. */
  run: number;
  trigger: "schedule" | "admin";
  startedAt: string;
  finishedAt?: string;
  ok: number;
  failed: number;
  bytes: number;
  /** Why the run's pins could not be recorded, if they could not. */
  pinError?: string;
  images: WarmupImageResult[];
}

export interface WarmupSetStatus {
  name: string;
  everyMs: number;
  pin: boolean;
  platforms: "all" | readonly string[];
  /** Where the list comes from: the config, or a file. */
  file: string | null;
  /** The references in force: the inline list, or the file's last good content. */
  references: string[];
  /** Why the file's current content is not used (the last good list is), or null. */
  listProblem: string | null;
  running: boolean;
  /** The run in progress, with the images done so far. */
  current: WarmupRun | null;
  lastRun: WarmupRun | null;
  nextRunAt: string | null;
}

/** What a warm-up run needs of the prefetcher: one image, awaited to its end. */
export interface WarmupPrefetcher {
  run(req: PrefetchRequest): Promise<JobStatus>;
}

/** What pinning needs of the pin list (`pins.json`, as `mirror import --pin` writes it). */
export interface WarmupPins {
  set(entries: ReadonlyArray<{ reference: string; digest: string }>): Promise<unknown>;
}

class WarmupSet {
  references: string[] = [];
  listProblem: string | undefined;
  running: Promise<void> | undefined;
  current: WarmupRun | undefined;
  lastRun: WarmupRun | undefined;
  runs = 0;
  timer: NodeJS.Timeout | undefined;
  nextRunAt: number | undefined;
  readonly config: WarmupSetConfig;
  constructor(config: WarmupSetConfig) {
    this.config = config;
    if (config.images !== undefined) this.references = config.images.map((i) => i.trim());
  }
}

export class WarmupSets {
  private readonly sets = new Map<string, WarmupSet>();
  private readonly prefetcher: WarmupPrefetcher;
  private readonly resolver: UpstreamResolver<UpstreamClient>;
  private readonly pins: WarmupPins;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  private readonly now: () => number;
  private stopWatching: () => void = () => undefined;
  /** File re-reads, one at a time, so a slow read never lands after a newer one. */
  private rereading: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(opts: {
    sets: readonly WarmupSetConfig[];
    prefetcher: WarmupPrefetcher;
    resolver: UpstreamResolver<UpstreamClient>;
    pins: WarmupPins;
    metrics: Metrics;
    log: Logger;
    now?: () => number;
  }) {
    for (const set of opts.sets) this.sets.set(set.name, new WarmupSet(set));
    this.prefetcher = opts.prefetcher;
    this.resolver = opts.resolver;
    this.pins = opts.pins;
    this.metrics = opts.metrics;
    this.log = opts.log.child({ component: "warmup" });
    this.now = opts.now ?? Date.now;
  }

  /** Reads the files, starts watching them, and schedules each set's first run (`firstRunAfter`). */
  async start(): Promise<void> {
    const withFiles = [...this.sets.values()].filter((s) => s.config.file !== undefined);
    await Promise.all(withFiles.map((set) => this.reread(set)));
    if (withFiles.length > 0)
      this.stopWatching = watchFiles(
        withFiles.map((s) => s.config.file!),
        () => {
          this.rereading = this.rereading.then(() => Promise.all(withFiles.map((set) => this.reread(set))));
        },
      );
    for (const set of this.sets.values()) {
      this.metrics.warmupListInvalid.set({ set: set.config.name }, set.listProblem !== undefined ? 1 : 0);
      this.schedule(set, set.config.firstRunAfter);
    }
  }

  /** Stops the schedule and the file watching; a run in progress stops after its current image. */
  close(): void {
    this.closed = true;
    this.stopWatching();
    for (const set of this.sets.values()) clearTimeout(set.timer);
  }

  /**
   * The manifests every set holds in the cache: those its last run (and the run in progress) fetched or found.
   * Idle expiry keeps them and everything they reach; a set's image that stops being in its list is subject to
   * idle expiry again after its next run.
   */
  keptDigests(): string[] {
    const kept: string[] = [];
    for (const set of this.sets.values())
      for (const run of [set.lastRun, set.current])
        for (const image of run?.images ?? []) if (image.result === "ok" && image.digest) kept.push(image.digest);
    return kept;
  }

  /** Every set's state and the results of its last run. */
  list(): WarmupSetStatus[] {
    return [...this.sets.values()].map((s) => this.status(s));
  }

  /** One set's state; undefined when no set has that name. */
  get(name: string): WarmupSetStatus | undefined {
    const set = this.sets.get(name);
    return set && this.status(set);
  }

  /**
   * Starts a run of the set now, unless one is running (runs of a set never overlap): `started` says which, and
   * `run` is the number of the run going on, whose results `lastRun` shows once it ends. Undefined: no such set.
   */
  runNow(name: string): { started: boolean; run: number } | undefined {
    const set = this.sets.get(name);
    if (set === undefined) return undefined;
    if (set.running !== undefined) return { started: false, run: set.runs };
    this.begin(set, "admin");
    return { started: true, run: set.runs };
  }

  private schedule(set: WarmupSet, delayMs: number): void {
    clearTimeout(set.timer);
    if (this.closed) return;
    set.nextRunAt = this.now() + delayMs;
    set.timer = setTimeout(() => {
      if (set.running === undefined) this.begin(set, "schedule");
    }, timerDelay(delayMs));
    set.timer.unref();
  }

  private begin(set: WarmupSet, trigger: WarmupRun["trigger"]): void {
    clearTimeout(set.timer);
    set.nextRunAt = undefined;
    set.runs++;
    const run: WarmupRun = {
      run: set.runs,
      trigger,
      startedAt: new Date(this.now()).toISOString(),
      ok: 0,
      failed: 0,
      bytes: 0,
      images: [],
    };
    set.current = run;
    set.running = this.runSet(set, run)
      .catch((err: unknown) => this.log.error({ set: set.config.name, err }, "warm-up run failed"))
      .finally(() => {
        set.running = undefined;
        set.current = undefined;
        set.lastRun = run;
        this.schedule(set, set.config.every);
      });
  }

  private async runSet(set: WarmupSet, run: WarmupRun): Promise<void> {
    const name = set.config.name;
    const platforms = set.config.platforms === "all" ? [] : set.config.platforms;
    const toPin: Array<{ reference: string; digest: string; result: WarmupImageResult }> = [];
    this.log.info({ set: name, images: set.references.length, trigger: run.trigger }, "warm-up run started");
    for (const text of [...set.references]) {
      if (this.closed) break;
      const result = await this.warmImage(text, platforms);
      run.images.push(result);
      if (result.result === "ok") run.ok++;
      else {
        run.failed++;
        this.log.warn({ set: name, reference: result.reference, reason: result.reason }, "warm-up image failed");
      }
      run.bytes += result.bytes;
      if (set.config.pin && result.result === "ok" && result.digest !== undefined)
        toPin.push({ reference: result.reference, digest: result.digest, result });
    }
    if (toPin.length > 0 && !this.closed) {
      try {
        await this.pins.set(toPin.map(({ reference, digest }) => ({ reference, digest })));
        for (const p of toPin) p.result.pinned = true;
      } catch (err) {
        run.pinError = errorMessage(err);
        this.log.error({ set: name, err }, "warm-up pins not recorded");
      }
    }
    run.finishedAt = new Date(this.now()).toISOString();
    this.metrics.warmupImages.set({ set: name, result: "ok" }, run.ok);
    this.metrics.warmupImages.set({ set: name, result: "failed" }, run.failed);
    this.metrics.warmupLastRun.set({ set: name }, Math.floor(this.now() / 1000));
    this.log.info({ set: name, ok: run.ok, failed: run.failed, bytes: run.bytes }, "warm-up run finished");
  }

  private async warmImage(text: string, platforms: readonly string[]): Promise<WarmupImageResult> {
    let ref;
    try {
      ref = this.resolver.reference(text);
    } catch (err) {
      // Checked when the list was read; only a configuration change between could make this happen.
      return { reference: text, result: "failed", reason: errorMessage(err), bytes: 0, blobs: 0, pinned: false };
    }
    const job = await this.prefetcher.run({
      upstream: ref.upstream,
      repository: ref.repository,
      reference: ref.reference,
      platforms,
    });
    const ok = job.state === "done";
    return {
      reference: ref.canonical,
      result: ok ? "ok" : "failed",
      ...(ok ? {} : { reason: job.errors.slice(0, 5).join("; ") || "failed" }),
      ...(job.digest !== undefined ? { digest: job.digest } : {}),
      bytes: job.bytes.done,
      blobs: job.blobs.done,
      pinned: false,
    };
  }

  /** Re-reads a set's file: a valid list replaces the one in force; an invalid one is reported and kept out. */
  private async reread(set: WarmupSet): Promise<void> {
    const path = set.config.file!;
    const list = await readWarmupFile(path, this.resolver);
    const name = set.config.name;
    if (list.problems.length > 0) {
      const problem = list.problems.join("; ");
      if (problem !== set.listProblem)
        this.log.error(
          { set: name, file: path, problems: list.problems, kept: set.references.length },
          "warm-up file invalid: the last good list stays in force",
        );
      set.listProblem = problem;
    } else {
      const changed = list.references.join("\n") !== set.references.join("\n");
      if (set.listProblem !== undefined || changed)
        this.log.info({ set: name, file: path, images: list.references.length }, "warm-up file read");
      set.listProblem = undefined;
      set.references = list.references;
    }
    this.metrics.warmupListInvalid.set({ set: name }, set.listProblem !== undefined ? 1 : 0);
  }

  private status(set: WarmupSet): WarmupSetStatus {
    return {
      name: set.config.name,
      everyMs: set.config.every,
      pin: set.config.pin,
      platforms: set.config.platforms,
      file: set.config.file ?? null,
      references: [...set.references],
      listProblem: set.listProblem ?? null,
      running: set.running !== undefined,
      current: set.current ?? null,
      lastRun: set.lastRun ?? null,
      nextRunAt: set.nextRunAt !== undefined ? new Date(set.nextRunAt).toISOString() : null,
    };
  }
}
